"""Minimal text edits between two versions of a document.

Offers:
- `TextEdit(start, end, new_text)`: replace `old[start:end]` (character offsets into the old text).
- `minimal_edits(old, new)`: a line-level difflib diff whose changed hunks are trimmed of their common
  prefix and suffix, so each edit touches only the characters that change. Edits are sorted, do not
  overlap, and never start or end between the "\\r" and "\\n" of a line break (an LSP position cannot
  point there). `apply_edits(old, minimal_edits(old, new)) == new` always.
- `apply_edits(text, edits)`: the text after edits given in old-text offsets (LSP semantics).
- `changed_span(old, new)`: (start, old_end, new_end) of the single region where two texts differ.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

_LINE = re.compile(r"[^\n]*\n|[^\n]+")


@dataclass(frozen=True)
class TextEdit:
    start: int
    end: int
    new_text: str


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]; halving keeps each comparison in C
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _common_suffix(a: str, b: str, limit: int) -> int:
    n = min(len(a), len(b), limit)
    if n == 0 or a[len(a) - n :] == b[len(b) - n :]:
        return n
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[len(a) - mid : len(a) - lo] == b[len(b) - mid : len(b) - lo]:
            lo = mid
        else:
            hi = mid
    return lo


def changed_span(old: str, new: str) -> tuple[int, int, int]:
    """(start, old_end, new_end): old[start:old_end] was replaced by new[start:new_end]."""
    p = _common_prefix(old, new)
    s = _common_suffix(old, new, min(len(old), len(new)) - p)
    return p, len(old) - s, len(new) - s


def _trimmed(old: str, new: str, a0: int, a1: int, b0: int, b1: int) -> TextEdit | None:
    """The edit replacing old[a0:a1] by new[b0:b1], without their common ends."""
    seg_a, seg_b = old[a0:a1], new[b0:b1]
    p = _common_prefix(seg_a, seg_b)
    s = _common_suffix(seg_a, seg_b, min(len(seg_a), len(seg_b)) - p)
    start, end = a0 + p, a1 - s
    # An LSP position cannot sit between "\r" and "\n": widen the edit by that character.
    if p and old[start - 1] == "\r" and start < len(old) and old[start] == "\n":
        start, p = start - 1, p - 1
    if s and end > 0 and old[end - 1] == "\r" and end < len(old) and old[end] == "\n":
        end, s = end + 1, s - 1
    text = seg_b[p : len(seg_b) - s]
    if start == end and not text:
        return None
    return TextEdit(start, end, text)


def minimal_edits(old: str, new: str) -> list[TextEdit]:
    """The edits that turn `old` into `new`, each as small as the line diff allows."""
    if old == new:
        return []
    # Only the lines between the common prefix and suffix are diffed: an edit of a long file costs
    # what it changes, not what SequenceMatcher makes of thousands of equal lines.
    p, old_end, new_end = changed_span(old, new)
    base = old.rfind("\n", 0, p) + 1
    newline = old.find("\n", old_end)
    grow = newline - old_end + 1 if newline >= 0 else len(old) - old_end
    old_mid, new_mid = old[base : old_end + grow], new[base : new_end + grow]
    a, b = _LINE.findall(old_mid), _LINE.findall(new_mid)
    a_starts = [0]
    for line in a:
        a_starts.append(a_starts[-1] + len(line))
    b_starts = [0]
    for line in b:
        b_starts.append(b_starts[-1] + len(line))
    edits: list[TextEdit] = []
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        edit = _trimmed(old_mid, new_mid, a_starts[i1], a_starts[i2], b_starts[j1], b_starts[j2])
        if edit is not None:
            edits.append(TextEdit(edit.start + base, edit.end + base, edit.new_text))
    return edits


def apply_edits(text: str, edits: Sequence[TextEdit]) -> str:
    """Apply edits whose offsets all refer to `text`; they must not overlap."""
    ordered = sorted(edits, key=lambda e: (e.start, e.end))
    parts: list[str] = []
    at = 0
    for edit in ordered:
        if edit.start < at or edit.end < edit.start or edit.end > len(text):
            raise ValueError(
                f"edit {edit.start}..{edit.end} overlaps a previous edit (ending at {at}) "
                f"or lies outside the text (length {len(text)})"
            )
        parts.append(text[at : edit.start])
        parts.append(edit.new_text)
        at = edit.end
    parts.append(text[at:])
    return "".join(parts)
