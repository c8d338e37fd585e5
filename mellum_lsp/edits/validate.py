"""Is a candidate edit safe to offer? Checked on text alone, before the user sees it.

Offers:
- `Verdict(ok, reason, problems)`: `reason` says why a candidate was rejected ("" when ok);
  `problems` are the syntax problems that caused it.
- `validate_edit(original, new_text, language, scope=None, *, path, allow_whitespace, must_fix,
  min_similarity, max_deleted)`:
  rejects, in this order,
  1. a no-op (the new text equals the original);
  2. a change outside `scope` (character offsets into the original; touching its ends is inside);
  3. new tree-sitter ERROR/MISSING nodes: more problems than before in the region (the scope, or
     the changed span without one), or any problem outside it that the original did not have at
     the same place once shifted by the edit;
  4. for Python, a text that no longer `compile()`s — or, when the original did not compile
     either, a first compile error that moved earlier (the edit made it worse);
  5. a change of whitespace only, unless `allow_whitespace` or the edit fixes a problem (an
     indentation fix is a whitespace change);
  6. with `must_fix`, a candidate that fixes no problem: no fewer tree-sitter problems in the
     region and, for Python, the first compile error neither gone nor moved past the region.
  7. with `min_similarity`, a candidate whose changed lines keep less than that share of the
     longer of the old and new lines (characters difflib matches / the longer length): a syntax
     fix is a small edit, not a rewrite, nor a deletion of the broken code;
  8. with `max_deleted`, a candidate that removes more non-whitespace characters of the original
     than that: a syntax fix inserts what is missing or drops a stray token, it does not replace
     the arguments of a call whose `)` is missing.
  Languages without a grammar skip 3 and the tree-sitter half of 6.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher

from ..context.languages import normalize_language
from .diff import changed_span
from .offsets import TextOffsets
from .syntax import SyntaxProblem, python_compile_problem, supports, syntax_problems

_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    problems: tuple[SyntaxProblem, ...] = field(default=())

    def __bool__(self) -> bool:
        return self.ok


_OK = Verdict(True)


def _reject(reason: str, problems: tuple[SyntaxProblem, ...] = ()) -> Verdict:
    return Verdict(False, reason, problems)


def _line(text: str, offset: int) -> int:
    return TextOffsets(text).line_of(offset) + 1


def _outside_scope(original: str, new_text: str, scope: tuple[int, int]) -> str:
    """Why the edit reaches outside `scope`, or "" when it stays inside."""
    start, end = scope
    if not 0 <= start <= end <= len(original):
        raise ValueError(f"scope {start}..{end} is not a range within the text (length {len(original)})")
    if new_text[:start] != original[:start]:
        p, _, _ = changed_span(original[:start], new_text[:start])
        return f"the edit changes line {_line(original, p)}, before the allowed region ({_lines(original, scope)})"
    tail = len(original) - end
    if len(new_text) - tail < start:
        return f"the edit removes text after the allowed region ({_lines(original, scope)})"
    new_tail = new_text[len(new_text) - tail :]
    if new_tail != original[end:]:
        _, rel_end, _ = changed_span(original[end:], new_tail)
        at = end + max(rel_end - 1, 0)
        return f"the edit changes line {_line(original, at)}, after the allowed region ({_lines(original, scope)})"
    return ""


def _lines(text: str, scope: tuple[int, int]) -> str:
    first = _line(text, scope[0])
    last = _line(text, max(scope[0], scope[1] - 1))
    return f"lines {first}-{last}" if last != first else f"line {first}"


def _changed_lines(original: str, new_text: str) -> tuple[int, int, int]:
    """(start, old_end, new_end) of the changed span widened to whole lines of the original (a
    MISSING node sits right after the previous token, often on the line before)."""
    start, old_end, new_end = changed_span(original, new_text)
    lines = TextOffsets(original)
    widened_end = lines.line_start(lines.line_of(old_end) + 1)
    return lines.line_start(lines.line_of(start)), widened_end, new_end + widened_end - old_end


def _overlaps(p: SyntaxProblem, start: int, end: int, text: str) -> bool:
    """Whether a problem touches [start, end]; a MISSING node, placed right after the previous
    token, stands for the whole gap of whitespace after it."""
    p_end = p.end
    if p.kind == "missing":
        while p_end < len(text) and text[p_end].isspace():
            p_end += 1
    return p.start <= end and p_end >= start


def validate_edit(
    original: str,
    new_text: str,
    language: str | None,
    scope: tuple[int, int] | None = None,
    *,
    path: str = "<edit>",
    allow_whitespace: bool = False,
    must_fix: bool = False,
    min_similarity: float | None = None,
    max_deleted: int | None = None,
) -> Verdict:
    """Whether `new_text` is an acceptable edit of `original` (see the module docstring)."""
    if new_text == original:
        return _reject("the edit changes nothing")
    if scope is not None:
        outside = _outside_scope(original, new_text, scope)
        if outside:
            return _reject(outside)
        # compare problems over the whole allowed region, mapped into the new text
        start, old_end = scope
        new_end = old_end + len(new_text) - len(original)
    else:
        start, old_end, new_end = _changed_lines(original, new_text)

    fixed = False
    if supports(language):
        assert language is not None
        verdict, fixed = _syntax(original, new_text, language, start, old_end, new_end)
        if not verdict.ok:
            return verdict
    whitespace_only = _WS.sub("", original) == _WS.sub("", new_text)
    if _is_python(language, path):
        need_fixed = not fixed and (must_fix or (whitespace_only and not allow_whitespace))
        verdict, compile_fixed = _compiles(original, new_text, path, start, old_end, new_end, need_fixed)
        if not verdict.ok:
            return verdict
        fixed = fixed or compile_fixed
    if not allow_whitespace and not fixed and whitespace_only:
        return _reject("the edit only changes whitespace")
    if must_fix and not fixed:
        return _reject("the edit does not fix the syntax problem it targets")
    if min_similarity is not None:
        start, old_end, new_end = _changed_lines(original, new_text)
        a, b = original[start:old_end], new_text[start:new_end]
        kept = sum(m.size for m in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks())
        similarity = kept / max(len(a), len(b), 1)
        if similarity < min_similarity:
            return _reject(
                f"the edit rewrites too much of {_lines(original, (start, old_end))} for a fix "
                f"(similarity {similarity:.2f}, at least {min_similarity:.2f} expected)"
            )
    if max_deleted is not None:
        deleted = _deleted_code(original, new_text)
        if len(deleted) > max_deleted:
            shown = deleted if len(deleted) <= 40 else deleted[:39] + "…"
            return _reject(
                f"the edit deletes {len(deleted)} characters of code (`{shown}`); a fix may delete at most {max_deleted}"
            )
    return _OK


def _deleted_code(original: str, new_text: str) -> str:
    """The non-whitespace characters of the original that the edit removes."""
    start, old_end, new_end = changed_span(original, new_text)
    a, b = original[start:old_end], new_text[start:new_end]
    gone, at = [], 0
    for m in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
        gone.append(a[at : m.a])
        at = m.a + m.size
    return "".join("".join(gone).split())


def _syntax(
    original: str, new_text: str, language: str, start: int, old_end: int, new_end: int
) -> tuple[Verdict, bool]:
    """(verdict, whether the region has fewer problems than before)."""
    before = syntax_problems(original, language)
    after = syntax_problems(new_text, language)
    shift = new_end - old_end
    kept = {
        (p.start + shift, p.end + shift, p.message) if p.start > old_end else (p.start, p.end, p.message)
        for p in before
        if not _overlaps(p, start, old_end, original)
    }
    inside_before = [p for p in before if _overlaps(p, start, old_end, original)]
    inside_after = [p for p in after if _overlaps(p, start, new_end, new_text)]
    broken = tuple(
        p
        for p in after
        if not _overlaps(p, start, new_end, new_text) and (p.start, p.end, p.message) not in kept
    )
    if broken:
        return _reject(
            f"the edit breaks code outside the edited region: {broken[0].describe()}", broken
        ), False
    if len(inside_after) > len(inside_before):
        added = tuple(_added(inside_before, inside_after))
        return _reject(f"the edit adds a syntax problem: {added[0].describe()}", added), False
    return _OK, len(inside_after) < len(inside_before)


def _added(before: list[SyntaxProblem], after: list[SyntaxProblem]) -> list[SyntaxProblem]:
    """The problems of `after` that `before` has no problem with the same message for (else all)."""
    messages = [p.message for p in before]
    added = []
    for p in after:
        if p.message in messages:
            messages.remove(p.message)
        else:
            added.append(p)
    return added or after


def _is_python(language: str | None, path: str) -> bool:
    return normalize_language(language) == "python" or path.endswith((".py", ".pyi"))


def _compiles(
    original: str, new_text: str, path: str, start: int, old_end: int, new_end: int, need_fixed: bool
) -> tuple[Verdict, bool]:
    """(verdict, whether the original's first compile error is gone or moved later); the original
    is compiled only when the answer depends on it."""
    after = python_compile_problem(new_text, path)
    if after is None:
        return _OK, need_fixed and python_compile_problem(original, path) is not None
    before = python_compile_problem(original, path)
    if before is None:
        return _reject(f"the edited file no longer compiles: {after.describe()}", (after,)), False
    # Both fail: where would the original's first error be in the new text?
    if before.start < start:
        mapped, moved_on = before.start, after.start > before.start
    elif before.start <= old_end:
        mapped, moved_on = start, after.start >= new_end
    else:
        mapped = before.start + (new_end - old_end)
        moved_on = after.start > mapped
    if after.start < mapped:
        return _reject(
            f"the edit adds a compile error before the existing one: {after.describe()}", (after,)
        ), False
    return _OK, moved_on
