"""The code-action catalogue: which Mellum actions to offer for a request, and the scope of each.

Pure: text, language, a selection and diagnostics in; `Action`s out. Offers:
- `Diagnostic(start, end, message, severity=1, source=None, code=None)`: a diagnostic of the request
  (character offsets; LSP severities: 1 error, 2 warning, 3 information, 4 hint).
- `Scope(start, end, kind, name)`: where an action's edit may land. Kinds: "selection", "function",
  "method", "class" (and other class-like kinds: "struct", "impl", ...), "statement", "lines".
- `Action(title, kind, operation, scope, target, diagnostic, is_preferred, instruction)`.
  Operations: fix, docstring, type_hints, simplify, extract_function, instruction, explain.
- `list_actions(text, language, selection, diagnostics=(), *, only=None)`: in order, one quickfix
  "Fix with Mellum: <message>" per diagnostic (the one nearest the selection, then the most severe,
  is preferred and comes first), then `refactor.rewrite` "Add docstring to `f` with Mellum" (when
  the enclosing definition has none), "Add type hints to `f` with Mellum" (Python, TypeScript; when
  an annotation is missing), "Simplify … with Mellum", `refactor.extract` "Extract function with
  Mellum" (a non-empty selection of whole statements only), "Edit with instruction…", and
  "Explain with Mellum" (kind "", a command). `only` filters by kind prefix as LSP does.
- `edit_scope(text, language, selection)`: the scope of an edit on a selection (for `mellum/edit`):
  the selection when non-empty, else the enclosing definition, statement, or line.
- `fix_scope(text, language, start, end)`: the scope a fix of a diagnostic there may change: the
  innermost definition, else the statement with the deeper-indented lines after it (the body of a
  header the parser could not read), else the lines around.

Languages without a grammar still get fix / instruction / explain actions on line-based scopes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..context.languages import LanguageRegistry, normalize_language
from .offsets import TextOffsets
from .structure import DefinitionAt, Parsed, definitions_at, doc_slot, hint_slot, line_span, statement_at
from .structure import whole_statements as _whole_statements

QUICKFIX = "quickfix"
REWRITE = "refactor.rewrite"
EXTRACT = "refactor.extract"
EXPLAIN = ""  # no edit: a command that opens a chat; the empty kind matches no `only` filter

MAX_SCOPE_LINES = 150  # a fix in a longer definition is scoped to the statement or lines around it
_FIX_CONTEXT_LINES = 10
_MAX_TITLE = 70
_FUNCTION_KINDS = frozenset({"function", "method"})
_HINT_LANGUAGES = frozenset({"python", "typescript", "tsx"})


@dataclass(frozen=True)
class Diagnostic:
    start: int
    end: int
    message: str
    severity: int = 1
    source: str | None = None
    code: str | int | None = None


@dataclass(frozen=True)
class Scope:
    start: int
    end: int
    kind: str
    name: str | None = None

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.end


@dataclass(frozen=True)
class Action:
    title: str
    kind: str  # LSP CodeActionKind
    operation: str
    scope: Scope  # where the edit may land
    target: tuple[int, int]  # what the action is about: the diagnostic, selection or definition
    diagnostic: Diagnostic | None = None
    is_preferred: bool = False
    instruction: str | None = None


def _kind_matches(kind: str, only: Sequence[str] | None) -> bool:
    if only is None:
        return True
    return any(kind == o or (o and kind.startswith(o + ".")) for o in only)


def _clamp(text: str, start: int, end: int) -> tuple[int, int]:
    start, end = sorted((max(0, min(start, len(text))), max(0, min(end, len(text)))))
    return start, end


def _parsed(text: str, language: str | None, registry: LanguageRegistry | None) -> Parsed | None:
    return Parsed.of(text, language, registry) if normalize_language(language) else None


def _definition_scope(d: DefinitionAt) -> Scope:
    return Scope(d.start, d.end, d.kind, d.name)


def _lines_scope(text: str, start: int, end: int, context: int = 0) -> Scope:
    o = TextOffsets(text)
    first = max(0, o.line_of(start) - context)
    last = min(o.line_count - 1, o.line_of(max(start, end - 1) if end > start else start) + context)
    return Scope(o.line_start(first), o.line_start(last + 1), "lines")


def _small(parsed: Parsed, start: int, end: int) -> bool:
    o = parsed.offsets
    return o.line_of(max(start, end - 1)) - o.line_of(start) < MAX_SCOPE_LINES


def _fix_scope(
    parsed: Parsed | None, text: str, start: int, end: int, registry: LanguageRegistry | None
) -> Scope:
    if parsed is not None:
        for d in reversed(definitions_at(parsed, start, end, registry)):
            if _small(parsed, d.start, d.end):
                return _definition_scope(d)
        stmt = statement_at(parsed, start)
        if stmt is not None and stmt[1] >= end and _small(parsed, *stmt):
            s, e = line_span(parsed, *stmt)
            return Scope(s, _block_end(text, s, e), "statement")
    return _lines_scope(text, start, end, _FIX_CONTEXT_LINES)


def _indent_width(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _block_end(text: str, start: int, end: int) -> int:
    """`end` moved past the lines after [start, end) that are indented deeper than its first line
    (a broken header's body, which the parser did not attach to it) and a closing bracket line."""
    o = TextOffsets(text)
    first = text[start : o.line_start(o.line_of(start) + 1)]
    base = _indent_width(first)
    at = last_code = end
    while at < len(text):
        nxt = o.line_start(o.line_of(at) + 1)
        line = text[at:nxt]
        if line.strip():
            if _indent_width(line) <= base:
                if line.strip()[0] in ")]}":
                    last_code = nxt
                break
            last_code = nxt
        at = nxt
    return last_code


def fix_scope(
    text: str, language: str | None, start: int, end: int, registry: LanguageRegistry | None = None
) -> Scope:
    """The region a fix of the diagnostic at [start, end) may change: the innermost enclosing
    definition shorter than `MAX_SCOPE_LINES`, else the statement and the deeper-indented lines
    after it, else the lines around it."""
    start, end = _clamp(text, start, end)
    return _fix_scope(_parsed(text, language, registry), text, start, end, registry)


def _edit_scope(
    parsed: Parsed | None, text: str, start: int, end: int, registry: LanguageRegistry | None
) -> Scope:
    if end > start:
        return Scope(start, end, "selection")
    if parsed is not None:
        defs = definitions_at(parsed, start, end, registry)
        if defs:
            return _definition_scope(defs[-1])
        stmt = statement_at(parsed, start)
        if stmt is not None:
            s, e = line_span(parsed, *stmt)
            return Scope(s, e, "statement")
    return _lines_scope(text, start, end)


def edit_scope(
    text: str, language: str | None, selection: tuple[int, int], registry: LanguageRegistry | None = None
) -> Scope:
    """The scope of an edit on `selection`: the selection, else the enclosing definition,
    statement or line."""
    start, end = _clamp(text, *selection)
    return _edit_scope(_parsed(text, language, registry), text, start, end, registry)


def _title(message: str) -> str:
    line = " ".join(message.strip().split("\n", 1)[0].split())
    return line if len(line) <= _MAX_TITLE else line[: _MAX_TITLE - 1] + "…"


def _distance(d: Diagnostic, start: int, end: int) -> int:
    if d.end < start:
        return start - d.end
    if d.start > end:
        return d.start - end
    return 0


def list_actions(
    text: str,
    language: str | None,
    selection: tuple[int, int],
    diagnostics: Sequence[Diagnostic] = (),
    *,
    only: Sequence[str] | None = None,
    registry: LanguageRegistry | None = None,
) -> list[Action]:
    """The actions to offer for a request, quickfixes first (see the module docstring)."""
    start, end = _clamp(text, *selection)
    parsed = _parsed(text, language, registry)
    actions: list[Action] = []

    if _kind_matches(QUICKFIX, only) and diagnostics:
        best = min(diagnostics, key=lambda d: (_distance(d, start, end), d.severity, d.start))
        for d in diagnostics:
            d_start, d_end = _clamp(text, d.start, d.end)
            scope = _fix_scope(parsed, text, d_start, d_end, registry)
            actions.append(
                Action(
                    f"Fix with Mellum: {_title(d.message)}",
                    QUICKFIX,
                    "fix",
                    scope,
                    (d_start, d_end),
                    diagnostic=d,
                    is_preferred=d is best,
                )
            )
        actions.sort(key=lambda a: not a.is_preferred)

    defs = definitions_at(parsed, start, end, registry) if parsed is not None else []
    innermost = defs[-1] if defs else None
    function = next((d for d in reversed(defs) if d.kind in _FUNCTION_KINDS), None)
    selected = end > start and bool(text[start:end].strip())
    scope = _edit_scope(parsed, text, start, end, registry)

    def add(title: str, kind: str, operation: str, on: Scope, target: tuple[int, int] | None = None) -> None:
        if _kind_matches(kind, only):
            actions.append(Action(title, kind, operation, on, target or on.span))

    if parsed is not None and innermost is not None and doc_slot(parsed, innermost) is not None:
        what = "docstring" if parsed.language == "python" else "doc comment"
        add(
            f"Add {what} to `{innermost.name}` with Mellum",
            REWRITE,
            "docstring",
            _definition_scope(innermost),
        )
    if parsed is not None and parsed.language in _HINT_LANGUAGES and function is not None:
        if hint_slot(parsed, function) is not None:
            add(
                f"Add type hints to `{function.name}` with Mellum",
                REWRITE,
                "type_hints",
                _definition_scope(function),
            )
    if selected or scope.kind != "lines":
        what = "selection" if selected else f"`{scope.name}`" if scope.name else "statement"
        add(f"Simplify {what} with Mellum", REWRITE, "simplify", scope, (start, end) if selected else None)
    if parsed is not None and selected and _whole_statements(parsed, start, end):
        # The new function goes before the enclosing definition (or the statements): the scope
        # starts there, so inserting at its start stays inside it.
        host = function or innermost
        on = (
            _definition_scope(host)
            if host is not None
            else Scope(*line_span(parsed, start, end), "selection")
        )
        add("Extract function with Mellum", EXTRACT, "extract_function", on, (start, end))
    add("Edit with instruction…", REWRITE, "instruction", scope, (start, end) if selected else None)
    add("Explain with Mellum", EXPLAIN, "explain", scope, (start, end) if selected else None)
    return actions
