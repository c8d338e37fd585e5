"""Languages the context builder understands, and their tree-sitter grammars and queries.

Offers:
- `language_for_path(path, text=None)`: the language name for a file, from its extension.
- `LanguageRegistry`: lazily loads each grammar wheel on first use and caches, per instance, the
  `Language`, the compiled definition/import queries and a parser per thread.
- `LANGUAGES`: the `LanguageSpec` table (extensions, grammar entry point, queries).

Language names: python, javascript, typescript, tsx, go, rust, java, c, cpp. Grammars come from the
per-language wheels (tree-sitter-python, ...); nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass

from tree_sitter import Language, Parser, Query, Tree

# Query captures: `@definition.<kind>` marks a definition node and `@name` its name; for C/C++
# `@declarator` marks a declarator whose function name is found in Python (it can be nested in
# pointer/reference declarators). Imports are captured as `@import` (whole statement), `@source`
# (a module string), `@mod` (Rust `mod x;`), `@use` (Rust use tree) or `@include` (C/C++ path).

_PYTHON_DEFS = """
(function_definition name: (identifier) @name) @definition.function
(class_definition name: (identifier) @name) @definition.class
(type_alias_statement (type (identifier) @name)) @definition.type
"""
_PYTHON_IMPORTS = """
(import_statement) @import
(import_from_statement) @import
"""

_JS_DEFS = """
(function_declaration name: (identifier) @name) @definition.function
(generator_function_declaration name: (identifier) @name) @definition.function
(class_declaration name: (_) @name) @definition.class
(method_definition name: (_) @name) @definition.method
(lexical_declaration
  (variable_declarator name: (identifier) @name
    value: [(arrow_function) (function_expression) (generator_function)])) @definition.function
(variable_declaration
  (variable_declarator name: (identifier) @name
    value: [(arrow_function) (function_expression) (generator_function)])) @definition.function
(lexical_declaration (variable_declarator name: (identifier) @name value: (class))) @definition.class
"""
_TS_DEFS = (
    _JS_DEFS
    + """
(abstract_class_declaration name: (_) @name) @definition.class
(interface_declaration name: (_) @name) @definition.interface
(type_alias_declaration name: (_) @name) @definition.type
(enum_declaration name: (_) @name) @definition.enum
(function_signature name: (_) @name) @definition.function
(method_signature name: (_) @name) @definition.method
(abstract_method_signature name: (_) @name) @definition.method
(internal_module name: (_) @name) @definition.module
(module name: (_) @name) @definition.module
"""
)
_JS_IMPORTS = """
(import_statement source: (string) @source)
(export_statement source: (string) @source)
(call_expression function: (identifier) @fn arguments: (arguments . (string) @source) (#eq? @fn "require"))
(call_expression function: (import) arguments: (arguments . (string) @source))
"""

_GO_DEFS = """
(function_declaration name: (identifier) @name) @definition.function
(method_declaration name: (field_identifier) @name) @definition.method
(type_spec name: (type_identifier) @name type: (struct_type)) @definition.struct
(type_spec name: (type_identifier) @name type: (interface_type)) @definition.interface
(type_spec name: (type_identifier) @name) @definition.type
(type_alias name: (type_identifier) @name) @definition.type
"""
_GO_IMPORTS = """
(import_spec path: (_) @source)
"""

_RUST_DEFS = """
(function_item name: (identifier) @name) @definition.function
(function_signature_item name: (identifier) @name) @definition.function
(struct_item name: (type_identifier) @name) @definition.struct
(union_item name: (type_identifier) @name) @definition.struct
(enum_item name: (type_identifier) @name) @definition.enum
(trait_item name: (type_identifier) @name) @definition.trait
(impl_item type: (_) @name) @definition.impl
(type_item name: (type_identifier) @name) @definition.type
(mod_item name: (identifier) @name body: (declaration_list)) @definition.module
(macro_definition name: (identifier) @name) @definition.macro
"""
_RUST_IMPORTS = """
(mod_item name: (identifier) @mod !body)
(use_declaration argument: (_) @use)
"""

_JAVA_DEFS = """
(class_declaration name: (identifier) @name) @definition.class
(interface_declaration name: (identifier) @name) @definition.interface
(annotation_type_declaration name: (identifier) @name) @definition.interface
(enum_declaration name: (identifier) @name) @definition.enum
(record_declaration name: (identifier) @name) @definition.class
(method_declaration name: (identifier) @name) @definition.method
(constructor_declaration name: (identifier) @name) @definition.method
"""
_JAVA_IMPORTS = """
(import_declaration) @import
"""

_C_DEFS = """
(function_definition declarator: (_) @declarator) @definition.function
(declaration declarator: (_) @declarator) @definition.function
(struct_specifier name: (_) @name body: (_)) @definition.struct
(union_specifier name: (_) @name body: (_)) @definition.struct
(enum_specifier name: (_) @name body: (_)) @definition.enum
(type_definition declarator: (type_identifier) @name) @definition.type
(preproc_def name: (identifier) @name) @definition.macro
(preproc_function_def name: (identifier) @name) @definition.macro
"""
_CPP_DEFS = (
    _C_DEFS
    + """
(field_declaration declarator: (_) @declarator) @definition.method
(class_specifier name: (_) @name body: (_)) @definition.class
(namespace_definition name: (_) @name) @definition.namespace
(alias_declaration name: (type_identifier) @name) @definition.type
"""
)
_C_IMPORTS = """
(preproc_include path: (_) @include)
"""


@dataclass(frozen=True)
class LanguageSpec:
    """One language: where its grammar lives and how to find its definitions and imports."""

    name: str
    module: str  # the grammar wheel's module
    entry: str  # the function in it that returns the language pointer
    extensions: tuple[str, ...]
    definitions: str
    imports: str


LANGUAGES: dict[str, LanguageSpec] = {
    spec.name: spec
    for spec in (
        LanguageSpec(
            "python", "tree_sitter_python", "language", (".py", ".pyi"), _PYTHON_DEFS, _PYTHON_IMPORTS
        ),
        LanguageSpec(
            "javascript",
            "tree_sitter_javascript",
            "language",
            (".js", ".mjs", ".cjs", ".jsx"),
            _JS_DEFS,
            _JS_IMPORTS,
        ),
        LanguageSpec(
            "typescript",
            "tree_sitter_typescript",
            "language_typescript",
            (".ts", ".mts", ".cts"),
            _TS_DEFS,
            _JS_IMPORTS,
        ),
        LanguageSpec("tsx", "tree_sitter_typescript", "language_tsx", (".tsx",), _TS_DEFS, _JS_IMPORTS),
        LanguageSpec("go", "tree_sitter_go", "language", (".go",), _GO_DEFS, _GO_IMPORTS),
        LanguageSpec("rust", "tree_sitter_rust", "language", (".rs",), _RUST_DEFS, _RUST_IMPORTS),
        LanguageSpec("java", "tree_sitter_java", "language", (".java",), _JAVA_DEFS, _JAVA_IMPORTS),
        LanguageSpec("c", "tree_sitter_c", "language", (".c", ".h"), _C_DEFS, _C_IMPORTS),
        LanguageSpec(
            "cpp",
            "tree_sitter_cpp",
            "language",
            (".cc", ".cpp", ".cxx", ".c++", ".hh", ".hpp", ".hxx", ".h++", ".ipp", ".tpp"),
            _CPP_DEFS,
            _C_IMPORTS,
        ),
    )
}

EXTENSIONS: dict[str, str] = {ext: spec.name for spec in LANGUAGES.values() for ext in spec.extensions}

# LSP languageIds (and a few common spellings) that differ from our names.
LANGUAGE_ALIASES: dict[str, str] = {
    "py": "python",
    "js": "javascript",
    "javascriptreact": "javascript",
    "jsx": "javascript",
    "ts": "typescript",
    "typescriptreact": "tsx",
    "golang": "go",
    "rs": "rust",
    "c++": "cpp",
    "cxx": "cpp",
    "objective-c": "c",
    "cuda-cpp": "cpp",
}

_CPP_HEADER_MARKERS = ("class ", "namespace ", "template <", "template<", "public:", "private:", "std::")


def normalize_language(language: str | None) -> str | None:
    """Our language name for an LSP languageId or one of our names; None when unknown."""
    if not language:
        return None
    name = language.lower()
    name = LANGUAGE_ALIASES.get(name, name)
    return name if name in LANGUAGES else None


def language_for_path(path: str, text: str | None = None) -> str | None:
    """The language of a file from its extension; a `.h` header that reads like C++ counts as C++."""
    ext = os.path.splitext(path)[1].lower()
    name = EXTENSIONS.get(ext)
    if name == "c" and ext == ".h" and text is not None and any(m in text for m in _CPP_HEADER_MARKERS):
        return "cpp"
    return name


class LanguageRegistry:
    """Grammars, queries and parsers, loaded on first use and cached for this instance.

    Thread-safe: loading is locked; parsers are kept per thread (a tree-sitter Parser must not be
    shared between threads), while `Language` and `Query` objects are immutable and shared.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._languages: dict[str, Language] = {}
        self._queries: dict[tuple[str, str], Query] = {}
        self._local = threading.local()

    def language(self, name: str) -> Language:
        with self._lock:
            lang = self._languages.get(name)
            if lang is None:
                spec = _spec(name)
                module = importlib.import_module(spec.module)
                lang = Language(getattr(module, spec.entry)())
                self._languages[name] = lang
            return lang

    def query(self, name: str, which: str = "symbols") -> Query:
        """A compiled query of a language: `definitions`, `imports`, or `symbols` (both, one pass)."""
        if which not in ("definitions", "imports", "symbols"):
            raise ValueError(f"query kind must be 'definitions', 'imports' or 'symbols', got {which!r}")
        key = (name, which)
        with self._lock:
            query = self._queries.get(key)
        if query is None:
            spec = _spec(name)
            source = spec.definitions + spec.imports if which == "symbols" else getattr(spec, which)
            query = Query(self.language(name), source)
            with self._lock:
                query = self._queries.setdefault(key, query)
        return query

    def parser(self, name: str) -> Parser:
        parsers = getattr(self._local, "parsers", None)
        if parsers is None:
            parsers = self._local.parsers = {}
        parser = parsers.get(name)
        if parser is None:
            parser = parsers[name] = Parser(self.language(name))
        return parser

    def parse(self, name: str, source: bytes) -> Tree:
        return self.parser(name).parse(source)


def _spec(name: str) -> LanguageSpec:
    spec = LANGUAGES.get(name)
    if spec is None:
        raise KeyError(f"unknown language {name!r}; expected one of {sorted(LANGUAGES)}")
    return spec
