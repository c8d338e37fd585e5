"""The code structure an edit needs, read with tree-sitter: definitions, statements, slots to fill.

Offers:
- `Parsed.of(text, language, registry=None)`: a text with its tree and offset tables.
- `DefinitionAt`: a definition (function, method, class, struct, impl, ...) with a body: its kind,
  name, node range, whole-line range including decorators / `export`, and body range.
- `definitions_at(parsed, start, end)`: the definitions whose lines contain a range, outermost first.
- `statement_at(parsed, offset, simple=False)`: the innermost statement (a child of a block,
  module, ...) there; with `simple`, only one without a body of its own.
- `whole_statements(parsed, start, end)`: whether a range is exactly a run of sibling statements.
- `line_span(parsed, start, end)`: a range widened to whole lines (with the last line's break).
- `DocSlot` / `doc_slot(parsed, definition)`: where a docstring or doc comment goes and its style;
  None when the definition already has one (or the body shares the header's line).
- `HintSlot` / `hint_slot(parsed, definition)`: for Python and TypeScript, the first parameter or
  return type without an annotation and the end of the signature; None when fully annotated.

Offsets are character offsets (code points) into the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tree_sitter import Node, QueryCursor, Tree

from ..context.languages import LanguageRegistry, normalize_language
from .offsets import TextOffsets, encode
from .syntax import default_registry

_KINDS = frozenset({"function", "method", "class", "struct", "interface", "enum", "trait", "impl"})
CLASS_KINDS = frozenset({"class", "struct", "interface", "enum", "trait", "impl"})
_WRAPPERS = frozenset({"decorated_definition", "export_statement"})
_CONTAINERS = frozenset(
    {"module", "block", "program", "statement_block", "class_body", "source_file", "statement_list",
     "declaration_list", "constructor_body", "translation_unit", "compound_statement",
     "field_declaration_list"}
)  # fmt: skip
_SELF = frozenset({"self", "cls"})
_PY_UNTYPED = frozenset({"identifier", "default_parameter", "list_splat_pattern", "dictionary_splat_pattern"})
_TS = frozenset({"typescript", "tsx"})
_DOC_STYLE = {
    "python": "docstring",
    "go": "line",
    "rust": "line",
    "javascript": "block",
    "typescript": "block",
    "tsx": "block",
    "java": "block",
    "c": "block",
    "cpp": "block",
}


@dataclass
class Parsed:
    text: str
    language: str
    tree: Tree
    source: bytes
    offsets: TextOffsets

    @classmethod
    def of(cls, text: str, language: str, registry: LanguageRegistry | None = None) -> Parsed:
        name = normalize_language(language)
        if name is None:
            raise ValueError(f"no tree-sitter grammar for language {language!r}")
        source = encode(text)
        tree = (registry or default_registry()).parse(name, source)
        return cls(text, name, tree, source, TextOffsets(text))

    def chars(self, node: Node) -> tuple[int, int]:
        return self.offsets.char(node.start_byte), self.offsets.char(node.end_byte)

    def node_text(self, node: Node) -> str:
        return self.source[node.start_byte : node.end_byte].decode("utf-8", "replace")


@dataclass(frozen=True)
class DefinitionAt:
    kind: str
    name: str | None
    node: tuple[int, int]  # the definition node
    start: int  # whole lines, decorators and `export` included
    end: int
    body: tuple[int, int] | None
    _node: Node = field(repr=False, compare=False)

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.end


def line_span(parsed: Parsed, start: int, end: int) -> tuple[int, int]:
    """[start, end) widened to whole lines; the last line keeps its line break."""
    o = parsed.offsets
    first = o.line_of(start)
    last = o.line_of(max(start, end - 1)) if end > start else first
    return o.line_start(first), o.line_start(last + 1)


def _outer(node: Node) -> Node:
    while node.parent is not None and node.parent.type in _WRAPPERS:
        node = node.parent
    return node


def _body(node: Node, depth: int = 3) -> Node | None:
    body = node.child_by_field_name("body")
    if body is not None or depth == 0:
        return body
    for child in node.named_children:
        found = _body(child, depth - 1)
        if found is not None:
            return found
    return None


def definitions_at(
    parsed: Parsed, start: int, end: int | None = None, registry: LanguageRegistry | None = None
) -> list[DefinitionAt]:
    """Definitions with a body whose lines (decorators included) contain [start, end), outermost first."""
    end = start if end is None else end
    line_start, line_end = line_span(parsed, start, end)
    b0, b1 = parsed.offsets.byte(line_start), parsed.offsets.byte(line_end)
    query = (registry or default_registry()).query(parsed.language, "definitions")
    cursor = QueryCursor(query)
    cursor.set_byte_range(b0, max(b1, b0 + 1))
    found: dict[tuple[int, int], DefinitionAt] = {}
    for _, captures in cursor.matches(parsed.tree.root_node):
        tag = next((c for c in captures if c.startswith("definition.")), None)
        if tag is None or tag.split(".", 1)[1] not in _KINDS:
            continue
        node = captures[tag][0]
        body = _body(node)
        if body is None:
            continue
        start_c, end_c = line_span(parsed, *parsed.chars(_outer(node)))
        if not (start_c <= start and end <= end_c):
            continue
        name_nodes = captures.get("name") or captures.get("declarator")
        name = parsed.node_text(name_nodes[0]).split("(")[0].strip() if name_nodes else None
        found[(node.start_byte, node.end_byte)] = DefinitionAt(
            tag.split(".", 1)[1], name, parsed.chars(node), start_c, end_c, parsed.chars(body), node
        )
    ordered = sorted(found.values(), key=lambda d: (d.start, -d.end, d.node[0]))
    result: list[DefinitionAt] = []
    for d in ordered:  # a function inside a class-like definition is a method
        if d.kind == "function" and any(r.kind in CLASS_KINDS for r in result):
            d = DefinitionAt("method", d.name, d.node, d.start, d.end, d.body, d._node)
        result.append(d)
    return result


def statement_at(parsed: Parsed, offset: int, simple: bool = False) -> tuple[int, int] | None:
    """The innermost statement containing `offset` (a child of a block-like node), or None; with
    `simple`, None when that statement has a body of its own (a definition, a loop, ...)."""
    b = parsed.offsets.byte(offset)
    node: Node | None = parsed.tree.root_node.descendant_for_byte_range(b, b)
    while node is not None and node.parent is not None:
        if node.parent.type in _CONTAINERS and node.is_named:
            if simple and _body(node, 1) is not None:
                return None
            return parsed.chars(node)
        node = node.parent
    return None


def whole_statements(parsed: Parsed, start: int, end: int) -> bool:
    """Whether [start, end), less surrounding whitespace, is a run of sibling statements."""
    text = parsed.text
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start >= end:
        return False
    b0, b1 = parsed.offsets.byte(start), parsed.offsets.byte(end)
    first = _widest(parsed.tree.root_node.descendant_for_byte_range(b0, b0), b0, b1, at_start=True)
    last = _widest(parsed.tree.root_node.descendant_for_byte_range(b1 - 1, b1), b0, b1, at_start=False)
    if first is None or last is None or first.parent is None or last.parent is None:
        return False
    return first.parent.id == last.parent.id


def _widest(node: Node | None, b0: int, b1: int, at_start: bool) -> Node | None:
    """The largest statement (child of a block-like node) among the ancestors of `node` that starts
    at b0 (or ends at b1) and stays inside [b0, b1)."""
    best = None
    while node is not None and node.parent is not None:
        if node.start_byte < b0 or node.end_byte > b1:
            break
        edge_ok = node.start_byte == b0 if at_start else node.end_byte == b1
        if edge_ok and node.parent.type in _CONTAINERS:
            best = node
        node = node.parent
    return best


# --- docstrings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocSlot:
    style: str  # "docstring" (Python), "block" (/** */), "line" (// or ///)
    at: int  # insertion offset: a line start
    indent: str  # indentation of the inserted lines
    name: str | None


def _indent_at(text: str, line_start: int) -> str:
    end = line_start
    while end < len(text) and text[end] in " \t":
        end += 1
    return text[line_start:end]


def _is_docstring(statement: Node) -> bool:
    return (
        statement.type == "expression_statement"
        and statement.named_child_count > 0
        and statement.named_children[0].type in ("string", "concatenated_string")
    )


def doc_slot(parsed: Parsed, definition: DefinitionAt) -> DocSlot | None:
    """Where a doc goes for `definition`; None when it has one or its body shares the header line."""
    style = _DOC_STYLE.get(parsed.language)
    node = definition._node
    if style == "docstring":
        body = node.child_by_field_name("body")
        colon = next((c for c in node.children if c.type == ":"), None)
        if body is None or colon is None or body.named_child_count == 0:
            return None
        first = body.named_children[0]
        if _is_docstring(first):
            return None
        if first.start_point[0] == colon.end_point[0]:
            return None  # `def f(): return 1`
        o = parsed.offsets
        at = o.line_start(o.line_of(o.char(colon.end_byte)) + 1)
        indent = _indent_at(parsed.text, o.line_start(o.line_of(o.char(first.start_byte))))
        return DocSlot(style, at, indent, definition.name)
    if style is None:
        return None
    outer = _outer(node)
    prev = outer.prev_sibling
    if prev is not None and "comment" in prev.type:
        gap = parsed.source[prev.end_byte : outer.start_byte]
        if not gap.strip() and gap.count(b"\n") <= 1:
            return None
    at = definition.start
    return DocSlot(style, at, _indent_at(parsed.text, at), definition.name)


# --- type hints -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HintSlot:
    """`after`: the offset after the first unannotated parameter's name, or after the parameter
    list when only the return type is missing; `returns`: whether that is the return type;
    `signature_end`: where the body begins (Python: the header's `:`; TypeScript: the body)."""

    after: int
    returns: bool
    signature_end: int
    one_line: bool


def hint_slot(parsed: Parsed, definition: DefinitionAt) -> HintSlot | None:
    """The first missing annotation of a Python or TypeScript function, or None."""
    node = definition._node
    if node.type in ("lexical_declaration", "variable_declaration"):
        node = next((n for n in _descendants(node, 3) if n.child_by_field_name("parameters")), node)
    params = node.child_by_field_name("parameters")
    body = node.child_by_field_name("body")
    if params is None or body is None or parsed.language not in ("python", *_TS):
        return None
    if parsed.language == "python":
        colon = next((c for c in node.children if c.type == ":"), None)
        end_byte = colon.start_byte if colon is not None else body.start_byte
    else:
        end_byte = body.start_byte
    signature_end = parsed.offsets.char(end_byte)
    one_line = parsed.offsets.line_of(parsed.offsets.char(node.start_byte)) == parsed.offsets.line_of(
        signature_end
    )
    skip_first = definition.kind == "method" and parsed.language == "python"
    for i, p in enumerate(params.named_children):
        if parsed.language == "python":
            if p.type not in _PY_UNTYPED or (i == 0 and skip_first and parsed.node_text(p) in _SELF):
                continue
            name = p.child_by_field_name("name") or (p if p.type == "identifier" else p.named_children[-1])
        else:
            if p.type not in ("required_parameter", "optional_parameter") or p.child_by_field_name("type"):
                continue
            name = p.child_by_field_name("pattern") or p
            if p.type == "optional_parameter":  # `c?`: the hint goes after the `?`
                name = next((c for c in p.children if c.type == "?"), name)
            if parsed.node_text(name) == "this":
                continue
        return HintSlot(parsed.offsets.char(name.end_byte), False, signature_end, one_line)
    if node.child_by_field_name("return_type") is None and definition.kind != "class":
        if (
            parsed.language != "python"
            and node.type == "method_definition"
            and definition.name == "constructor"
        ):
            return None
        return HintSlot(parsed.offsets.char(params.end_byte), True, signature_end, one_line)
    return None


def _descendants(node: Node, depth: int):
    for child in node.named_children:
        yield child
        if depth > 1:
            yield from _descendants(child, depth - 1)
