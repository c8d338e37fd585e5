"""Syntax problems of a text: tree-sitter's ERROR and MISSING nodes, and Python's own `compile()` error.

Offers:
- `SyntaxProblem(start, end, message, kind, focus, start_point, end_point)`: one problem; offsets are
  character offsets (code points) into the text, points are (line, character) in code points.
- `syntax_problems(text, language, registry=None, limit=200)`: every ERROR and MISSING node, in
  source order, with messages like "syntax error: unexpected `)`" and "missing `:`". Only subtrees
  that contain an error are walked, so a clean 5,000-line file costs one parse (~15 ms).
- `python_compile_problem(text, path)`: the first error `compile()` reports (tree-sitter does not see
  indentation errors), or None.
- `diagnostic_problems(text, language, path)`: what to publish as diagnostics. For Python, the
  compiler's one precise error instead of tree-sitter's (whose error recovery can spread one missing
  `:` over several ERROR nodes), and nothing when only the compiler objects and not to an
  indentation error (likely syntax newer than the server's Python); other languages: tree-sitter's.
- `supports(language)`, `parse(text, language, registry)`, `default_registry()`.

An ERROR node covers the tokens the parser could not place; `focus` is the token a diagnostic
should underline and the message names it: a bracket that is never closed or closes nothing; else,
in an error spanning lines, the first token on a later line (where the unfinished construct was
abandoned); else the error's last token.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache

from tree_sitter import Node, Tree

from ..context.languages import LanguageRegistry, normalize_language
from .offsets import TextOffsets, encode

_MAX_TOKEN_CHARS = 40
_MAX_LEAVES = 400


@dataclass(frozen=True)
class SyntaxProblem:
    start: int
    end: int
    message: str
    kind: str  # "error" (an ERROR node or a compile error) or "missing" (a MISSING node)
    focus: tuple[int, int]  # the range a diagnostic should underline (within start..end)
    start_point: tuple[int, int]
    end_point: tuple[int, int]

    @property
    def line(self) -> int:
        return self.start_point[0]

    def describe(self) -> str:
        """The message with its 1-based line, as shown in validation reasons."""
        return f"{self.message} (line {self.start_point[0] + 1})"


@cache
def default_registry() -> LanguageRegistry:
    """Grammars shared by the edit modules, loaded on first use (immutable once loaded)."""
    return LanguageRegistry()


def supports(language: str | None) -> bool:
    return normalize_language(language) is not None


def _language(language: str | None) -> str:
    name = normalize_language(language)
    if name is None:
        raise ValueError(f"no tree-sitter grammar for language {language!r}")
    return name


def parse(text: str, language: str, registry: LanguageRegistry | None = None) -> tuple[Tree, bytes]:
    """The tree of `text` and the bytes it was parsed from."""
    source = encode(text)
    return (registry or default_registry()).parse(_language(language), source), source


def syntax_problems(
    text: str, language: str, registry: LanguageRegistry | None = None, limit: int = 200
) -> list[SyntaxProblem]:
    """ERROR and MISSING nodes of `text` (at most `limit`), outermost ERROR nodes only, in order."""
    tree, source = parse(text, language, registry)
    root = tree.root_node
    if not root.has_error:
        return []
    offsets = TextOffsets(text)
    found: list[SyntaxProblem] = []
    stack = [root]
    while stack and len(found) < limit:
        node = stack.pop()
        if node.is_error:
            found.append(_error_problem(node, source, offsets))
        elif node.is_missing:
            found.append(_missing_problem(node, offsets))
        elif node.has_error:
            stack.extend(reversed(node.children))
    return found


def _problem(start: int, end: int, message: str, kind: str, focus: tuple[int, int], offsets: TextOffsets):
    return SyntaxProblem(start, end, message, kind, focus, offsets.point(start), offsets.point(end))


def _missing_problem(node: Node, offsets: TextOffsets) -> SyntaxProblem:
    at = offsets.char(node.start_byte)
    name = node.type.strip("_").replace("_", " ")
    message = f"missing {name}" if node.is_named else f"missing {_quote(node.type)}"
    return _problem(at, at, message, "missing", (at, at), offsets)


def _quote(token: str) -> str:
    """Markdown code for a token (a token with a backtick is fenced by two)."""
    return f"`` {token} ``" if "`" in token else f"`{token}`"


def _leaves(node: Node) -> list[Node]:
    leaves: list[Node] = []
    stack = [node]
    while stack and len(leaves) < _MAX_LEAVES:
        n = stack.pop()
        if n.child_count == 0:
            if n.end_byte > n.start_byte and not n.is_extra:
                leaves.append(n)
        else:
            stack.extend(reversed(n.children))
    return leaves


def _token_text(source: bytes, node: Node) -> str:
    text = source[node.start_byte : node.end_byte].decode("utf-8", "replace").split("\n", 1)[0].strip()
    return text if len(text) <= _MAX_TOKEN_CHARS else text[: _MAX_TOKEN_CHARS - 1] + "…"


_CLOSERS = {")": "(", "]": "[", "}": "{"}


def _bracket_fault(leaves: list[Node]) -> tuple[Node, str] | None:
    """A closing bracket with no opener ("unexpected"), or the first opener never closed."""
    stack: list[Node] = []
    for leaf in leaves:
        if leaf.type in ("(", "[", "{"):
            stack.append(leaf)
        elif leaf.type in _CLOSERS:
            if not stack or stack[-1].type != _CLOSERS[leaf.type]:
                return leaf, "unexpected"
            stack.pop()
    return (stack[0], "never closed") if stack else None


def _error_problem(node: Node, source: bytes, offsets: TextOffsets) -> SyntaxProblem:
    start, end = offsets.char(node.start_byte), offsets.char(node.end_byte)
    leaves = _leaves(node)
    if not leaves:
        return _problem(start, end, "syntax error", "error", (start, end), offsets)
    fault = _bracket_fault(leaves)
    if fault is not None and fault[1] == "never closed":
        token, message = fault[0], f"syntax error: {_quote(fault[0].type)} was never closed"
    else:
        if fault is not None:
            token = fault[0]
        else:
            first_row = node.start_point[0]
            token = next((leaf for leaf in leaves if leaf.start_point[0] > first_row), leaves[-1])
        message = f"syntax error: unexpected {_quote(_token_text(source, token))}"
    focus = (offsets.char(token.start_byte), offsets.char(token.end_byte))
    return _problem(start, end, message, "error", focus, offsets)


def python_compile_problem(text: str, path: str = "<document>") -> SyntaxProblem | None:
    """The first error Python's compiler finds in `text`, or None when it compiles."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning (invalid escapes, ...) is not an error
            compile(text, path, "exec", dont_inherit=True)
    except SyntaxError as e:
        return _compile_problem(text, e)
    except ValueError as e:  # null bytes on Python < 3.12
        return _problem(0, 0, f"syntax error: {e}", "error", (0, 0), TextOffsets(text))
    return None


def _compile_problem(text: str, e: SyntaxError) -> SyntaxProblem:
    offsets = TextOffsets(text)

    def at(line: int | None, col: int | None) -> int:
        if not line:
            return 0
        start = offsets.line_start(line - 1)
        line_end = offsets.line_start(line) if line < offsets.line_count else len(text)
        return min(start + max((col or 1) - 1, 0), line_end)

    start = at(e.lineno, e.offset)
    end = max(
        start, at(getattr(e, "end_lineno", None) or e.lineno, getattr(e, "end_offset", None) or e.offset)
    )
    kind_name = "indentation error" if isinstance(e, IndentationError) else "syntax error"
    return _problem(start, end, f"{kind_name}: {e.msg}", "error", (start, end), offsets)


def diagnostic_problems(
    text: str, language: str, path: str = "<document>", registry: LanguageRegistry | None = None
) -> list[SyntaxProblem]:
    """The syntax problems to show the user (see the module docstring)."""
    problems = syntax_problems(text, language, registry)
    if _language(language) != "python":
        return problems
    compiled = python_compile_problem(text, path)
    if compiled is None:
        return []  # valid for this interpreter: tree-sitter's complaints would be false alarms
    if problems or compiled.message.startswith("indentation error"):
        return [compiled]
    return []
