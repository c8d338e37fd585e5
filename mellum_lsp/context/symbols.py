"""Definitions and imports of one source file, read with tree-sitter, and a file's outline.

Offers:
- `Definition`, `Import`: what the index stores per file.
- `extract_symbols(registry, language, source)`: definitions (name, kind, line range, signature,
  container) and imports (module spec as written, imported names, kind).
- `render_outline(text, definitions, language)`: the file's definitions as a skeleton (signatures,
  nesting kept, bodies elided) for files too large to include whole.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from tree_sitter import Node, QueryCursor

from .languages import LanguageRegistry

CONTAINER_KINDS = frozenset({"class", "struct", "interface", "trait", "impl", "enum"})
TYPE_KINDS = frozenset({"class", "struct", "interface", "trait", "enum", "type"})
# A node captured by several patterns keeps the most specific kind (Go: struct beats type).
_KIND_PRIORITY = {"type": 0, "function": 1}
# Parents that belong to a definition: decorators, templates, `export`.
_WRAPPERS = frozenset({"decorated_definition", "template_declaration", "export_statement"})
# Definitions and imports deeper than this in the syntax tree (inside function bodies, mostly) are
# not looked for: a third of the query time on typical files.
_MAX_QUERY_DEPTH = 8
_MAX_SIGNATURE_LINES = 6
_SMALL_TYPE_LINES = 15
_IMPORT_CAPTURES = frozenset({"import", "source", "mod", "use", "include"})
_NAME = re.compile(r"[A-Za-z_~][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Definition:
    """A named definition; lines are 0-based and inclusive."""

    name: str
    kind: str  # function, method, class, struct, interface, enum, trait, impl, type, module, namespace, macro
    start_line: int
    end_line: int
    signature: str
    container: str | None = None


@dataclass(frozen=True, slots=True)
class Import:
    """An import as written: `module` is the spec (`a.b`, `..x`, `./x`, `crate::a::b`, `x.h`)."""

    module: str
    names: tuple[str, ...] = ()
    line: int = 0
    kind: str = "import"  # import, from, mod, use, static, include, system


def extract_symbols(
    registry: LanguageRegistry, language: str, source: bytes
) -> tuple[tuple[Definition, ...], tuple[Import, ...]]:
    """Parse `source` once and return its definitions (in source order) and imports (deduplicated)."""
    root = registry.parse(language, source).root_node
    def_matches, import_matches = [], []
    cursor = QueryCursor(registry.query(language, "symbols"))
    cursor.set_max_start_depth(_MAX_QUERY_DEPTH)
    for _, captures in cursor.matches(root):
        (import_matches if _IMPORT_CAPTURES.intersection(captures) else def_matches).append(captures)
    return _definitions(language, source, def_matches), _imports(language, source, import_matches)


# --- definitions ------------------------------------------------------------------------------


def _text(source: bytes, node: Node) -> str:
    return source[node.start_byte : node.end_byte].decode("utf-8", errors="replace")


def _clean_name(raw: str) -> str | None:
    base = raw.split("<", 1)[0].split("::")[-1].strip()
    match = _NAME.search(base)
    if match is None:
        return None
    return base[match.start() :].split()[0] if base.startswith("operator") else match.group(0)


def _declarator_name(source: bytes, node: Node | None) -> tuple[str | None, str | None]:
    """(function name, qualifying scope) inside a C/C++ declarator; (None, None) for non-functions."""
    for _ in range(8):
        if node is None:
            return None, None
        if node.type == "function_declarator":
            inner = node.child_by_field_name("declarator")
            if inner is None:
                return None, None
            scope = inner.child_by_field_name("scope") if inner.type == "qualified_identifier" else None
            return _clean_name(_text(source, inner)), _clean_name(_text(source, scope)) if scope else None
        nxt = node.child_by_field_name("declarator")
        if nxt is None and node.named_child_count:
            nxt = node.named_children[0]
        node = nxt
    return None, None


def _receiver(source: bytes, node: Node) -> str | None:
    """The receiver type of a Go method: `func (p *Point) Move()` -> Point."""
    receiver = node.child_by_field_name("receiver")
    names = _NAME.findall(_text(source, receiver)) if receiver is not None else []
    return names[-1] if names else None


def _outer(node: Node) -> Node:
    parent = node.parent
    while parent is not None and (
        parent.type in _WRAPPERS or (parent.type == "type_declaration" and parent.named_child_count == 1)
    ):
        node, parent = parent, parent.parent
    return node


def _find_body(node: Node, depth: int = 3) -> Node | None:
    body = node.child_by_field_name("body")
    if body is not None or depth == 0:
        return body
    for child in node.named_children:
        found = _find_body(child, depth - 1)
        if found is not None:
            return found
    return None


def _signature(source: bytes, node: Node, outer: Node, kind: str) -> str:
    body = _find_body(node)
    text = source[outer.start_byte : body.start_byte if body is not None else node.end_byte]
    sig = text.decode("utf-8", errors="replace")
    if body is None and kind in TYPE_KINDS and "{" in sig:
        sig = sig.split("{", 1)[0]
    lines = sig.rstrip().rstrip("{").rstrip().split("\n")
    return "\n".join(lines[:_MAX_SIGNATURE_LINES])


def _definitions(
    language: str, source: bytes, matches: list[dict[str, list[Node]]]
) -> tuple[Definition, ...]:
    found: dict[tuple[int, int, str], tuple[int, str, Node, str | None]] = {}
    for captures in matches:
        tag = next((c for c in captures if c.startswith("definition.")), None)
        if tag is None:
            continue
        kind = tag.split(".", 1)[1]
        node = captures[tag][0]
        scope = None
        if "declarator" in captures:
            name, scope = _declarator_name(source, captures["declarator"][0])
            if scope is not None:
                kind = "method"
        else:
            name = _clean_name(_text(source, captures["name"][0])) if "name" in captures else None
        if not name:
            continue
        key = (node.start_byte, node.end_byte, name)
        priority = _KIND_PRIORITY.get(kind, 2)
        if key not in found or found[key][0] < priority:
            found[key] = (priority, kind, node, scope)

    items = sorted(found.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2]))
    result: list[Definition] = []
    stack: list[tuple[int, str, str]] = []  # (end_byte, name, kind) of enclosing definitions
    for (start_byte, end_byte, name), (_, kind, node, scope) in items:
        while stack and stack[-1][0] <= start_byte:
            stack.pop()
        container = stack[-1] if stack else None
        if kind == "function" and container is not None and container[2] in CONTAINER_KINDS:
            kind = "method"
        if scope is None and node.type == "method_declaration" and language == "go":
            scope = _receiver(source, node)
        outer = _outer(node)
        end_row = node.end_point[0] - (1 if node.end_point[1] == 0 and node.end_point[0] > 0 else 0)
        result.append(
            Definition(
                name=sys.intern(name),
                kind=sys.intern(kind),
                start_line=outer.start_point[0],
                end_line=max(end_row, outer.start_point[0]),
                signature=_signature(source, node, outer, kind),
                container=scope or (container[1] if container else None),
            )
        )
        stack.append((end_byte, name, kind))
    return tuple(result)


# --- imports ----------------------------------------------------------------------------------


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] in "\"'`<" and text[-1] in "\"'`>":
        return text[1:-1]
    return text


def _python_import(source: bytes, node: Node) -> list[Import]:
    line = node.start_point[0]
    if node.type == "import_statement":
        out = []
        for child in node.named_children:
            target = child.child_by_field_name("name") if child.type == "aliased_import" else child
            if target is not None and target.type == "dotted_name":
                out.append(Import(_text(source, target), (), line, "import"))
        return out
    module = node.child_by_field_name("module_name")
    if module is None:
        return []
    names = []
    for child in node.children_by_field_name("name"):
        target = child.child_by_field_name("name") if child.type == "aliased_import" else child
        if target is not None:
            names.append(_text(source, target))
    if any(c.type == "wildcard_import" for c in node.named_children):
        names.append("*")
    return [Import(_text(source, module).replace(" ", ""), tuple(names), line, "from")]


def _flatten_use(text: str) -> list[str]:
    """`a::{b, c::{d as e, self}}` -> ['a::b', 'a::c::d', 'a::c']."""
    text = re.sub(r"\s*(::|[{},])\s*", r"\1", text.strip())
    out: list[str] = []

    def walk(prefix: str, tree: str) -> None:
        brace = tree.find("{")
        if brace < 0:
            leaf = re.sub(r"\s+as\s+\w+$", "", tree.strip())
            out.append(prefix.rstrip(":") if leaf == "self" else prefix + leaf)
            return
        head, inner = tree[:brace], tree[brace + 1 : tree.rfind("}")]
        depth, start = 0, 0
        for i, ch in enumerate(inner + ","):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                part, start = inner[start:i], i + 1
                if part:
                    walk(prefix + head, part)

    walk("", text)
    return [p for p in out if p and p != "*"][:64]


def _imports(language: str, source: bytes, matches: list[dict[str, list[Node]]]) -> tuple[Import, ...]:
    out: list[Import] = []
    for captures in matches:
        if "import" in captures:
            node = captures["import"][0]
            if language == "python":
                out.extend(_python_import(source, node))
            else:  # java
                text = _text(source, node).strip().removeprefix("import").strip().rstrip(";").strip()
                kind = "import"
                if text.startswith("static "):
                    kind, text = "static", text[len("static ") :].strip()
                out.append(Import(re.sub(r"\s+", "", text), (), node.start_point[0], kind))
        elif "source" in captures:
            node = captures["source"][0]
            out.append(Import(_unquote(_text(source, node)), (), node.start_point[0], "import"))
        elif "mod" in captures:
            node = captures["mod"][0]
            out.append(Import(_text(source, node), (), node.start_point[0], "mod"))
        elif "use" in captures:
            node = captures["use"][0]
            for path in _flatten_use(_text(source, node)):
                out.append(Import(path, (), node.start_point[0], "use"))
        elif "include" in captures:
            node = captures["include"][0]
            kind = "system" if node.type == "system_lib_string" else "include"
            out.append(Import(_unquote(_text(source, node)), (), node.start_point[0], kind))
    seen: set[tuple[str, tuple[str, ...], str]] = set()
    unique = []
    for imp in sorted(out, key=lambda i: i.line):
        key = (imp.module, imp.names, imp.kind)
        if key not in seen:
            seen.add(key)
            unique.append(imp)
    return tuple(unique)


# --- outline ----------------------------------------------------------------------------------


def render_outline(text: str, definitions: tuple[Definition, ...], language: str) -> str:
    """Signatures of all definitions with their nesting; bodies become `...` / `{ ... }`.

    One-line definitions and small types (structs, classes, interfaces, enums, aliases up to 15
    lines) appear whole, as their fields are what a completion needs.
    """
    lines = text.split("\n")
    python = language == "python"
    defs = sorted(definitions, key=lambda d: (d.start_line, -d.end_line))
    out: list[str] = []

    def emit(i: int) -> int:
        d = defs[i]
        j = i + 1
        while j < len(defs) and defs[j].start_line >= d.start_line and defs[j].end_line <= d.end_line:
            j += 1
        whole = lines[d.start_line : d.end_line + 1]
        indent = re.match(r"[ \t]*", whole[0] if whole else "").group(0)
        sig = indent + d.signature.lstrip()
        has_body = "\n".join(whole).strip() != sig.strip()
        small_type = d.kind in TYPE_KINDS and len(whole) <= _SMALL_TYPE_LINES
        if len(whole) <= 1 or not has_body or small_type:
            out.extend(whole)
        elif j == i + 1:
            out.append(sig + (" ..." if python else " { ... }"))
        else:
            out.append(sig if python else sig + " {")
            k = i + 1
            while k < j:
                k = emit(k)
            if not python:
                out.append(indent + "}")
        return j

    i = 0
    while i < len(defs):
        i = emit(i)
    return "\n".join(out)
