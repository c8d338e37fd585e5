"""The formats an LLM answers an edit request in, parsed and applied to a document's text.

Offers:
- `SearchReplace(search, replace)`, `parse_search_replace(answer)`: the blocks of an answer
      <<<<<<< SEARCH
      lines to find
      =======
      lines to put there
      >>>>>>> REPLACE
  (text around the blocks, code fences and "\\r\\n" line ends are tolerated).
- `apply_search_replace(text, blocks, scope=None)`: each block applied in turn, inside `scope`
  (character offsets, moved along as blocks change the text): an exact match first, then a match
  that ignores trailing whitespace and a uniform change of indentation (the replacement is
  re-indented to match). A SEARCH text that is not found or found more than once is an error.
- `extract_code_block(answer)` and `replace_region(text, scope, code)`: the other format, a whole
  replacement of a region in a fenced code block (re-indented when the model dropped the region's
  indentation).
- `SEARCH_REPLACE_LARK` and `search_replace_grammar(scope_text)`: Lark grammars of the format for
  constrained decoding with llguidance; the second allows only SEARCH sections that are runs of
  consecutive lines of `scope_text`, so every SEARCH is found.
- `EditFormatError`: a malformed answer or a block that cannot be applied; the message says which.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .offsets import to_lf

_SEARCH = re.compile(r"^\s*<{5,9} ?SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9} ?REPLACE\s*$")
_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n`]*$")
_LINE = re.compile(r"[^\n]*\n|[^\n]+")
_MAX_SHOWN = 60

SEARCH_REPLACE_LARK = r"""
start: block ("\n"? block)*
block: SEARCH_START body DIVIDER body REPLACE_END
body: LINE*
SEARCH_START: "<<<<<<< SEARCH\n"
DIVIDER: "=======\n"
REPLACE_END: ">>>>>>> REPLACE\n"
LINE: /[^\n]*\n/ & ~/(<<<<<<<|=======|>>>>>>>)[^\n]*\n/
"""


class EditFormatError(ValueError):
    """An answer that cannot be read or applied as an edit; the message says which block and why."""


@dataclass(frozen=True)
class SearchReplace:
    search: str
    replace: str


def _show(text: str) -> str:
    line = next((ln.strip() for ln in text.split("\n") if ln.strip()), "")
    return line if len(line) <= _MAX_SHOWN else line[: _MAX_SHOWN - 1] + "…"


# --- search/replace blocks: parsing --------------------------------------------------------------


def parse_search_replace(answer: str) -> list[SearchReplace]:
    """The blocks of an answer, in order."""
    lines = answer.replace("\r\n", "\n").split("\n")
    blocks: list[SearchReplace] = []
    i = 0
    while i < len(lines):
        if not _SEARCH.match(lines[i]):
            i += 1
            continue
        n = len(blocks) + 1
        j = i + 1
        while j < len(lines) and not _DIVIDER.match(lines[j]):
            if _SEARCH.match(lines[j]) or _REPLACE.match(lines[j]):
                raise EditFormatError(f"block {n} (line {i + 1} of the answer) has no ======= divider")
            j += 1
        if j == len(lines):
            raise EditFormatError(f"block {n} (line {i + 1} of the answer) has no ======= divider")
        k = j + 1
        while k < len(lines) and not _REPLACE.match(lines[k]):
            if _SEARCH.match(lines[k]) or _DIVIDER.match(lines[k]):
                raise EditFormatError(f"block {n} (line {i + 1} of the answer) has no >>>>>>> REPLACE end")
            k += 1
        if k == len(lines):
            raise EditFormatError(f"block {n} (line {i + 1} of the answer) is cut off before >>>>>>> REPLACE")
        blocks.append(SearchReplace(_joined(lines[i + 1 : j]), _joined(lines[j + 1 : k])))
        i = k + 1
    if not blocks:
        raise EditFormatError("the answer has no <<<<<<< SEARCH / ======= / >>>>>>> REPLACE block")
    return blocks


def _joined(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


# --- search/replace blocks: applying ---------------------------------------------------------------


def apply_search_replace(
    text: str, blocks: Sequence[SearchReplace], scope: tuple[int, int] | None = None
) -> str:
    """`text` with every block applied in turn; only the `scope` region (moved along) is searched."""
    start, end = scope if scope is not None else (0, len(text))
    if not 0 <= start <= end <= len(text):
        raise ValueError(f"scope {start}..{end} is not a range within the text (length {len(text)})")
    newline = "\r\n" if "\r\n" in text else "\n"
    for n, block in enumerate(blocks, 1):
        search, replace = block.search, block.replace
        if newline != "\n":
            search, replace = search.replace("\n", newline), replace.replace("\n", newline)
        region = text[start:end]
        at, length, new = _locate(region, search, replace, n)
        text = text[: start + at] + new + text[start + at + length :]
        end += len(new) - length
    return text


def _locate(region: str, search: str, replace: str, n: int) -> tuple[int, int, str]:
    """(offset in region, length, replacement) where the block applies."""
    if not search.strip():
        if not region.strip():
            return 0, len(region), replace
        raise EditFormatError(
            f"block {n}: the SEARCH section is empty; copy the lines to replace from the code"
        )
    first = region.find(search)
    if first >= 0:
        second = region.find(search, first + 1)
        if second >= 0:
            raise _ambiguous(n, search, region, region.count(search))
        return first, len(search), replace
    matches = _line_matches(region, search, replace)
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise _ambiguous(n, search, region, len(matches))
    raise EditFormatError(f"block {n}: the SEARCH text is not in the code to edit: `{_show(search)}`")


def _ambiguous(n: int, search: str, region: str, count: int) -> EditFormatError:
    return EditFormatError(
        f"block {n}: the SEARCH text `{_show(search)}` is found {count} times in the code to edit;"
        " add lines around it to make it unique"
    )


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _strip_blank_ends(lines: list[str]) -> tuple[list[str], int, int]:
    lead = 0
    while lead < len(lines) and not lines[lead].strip():
        lead += 1
    trail = 0
    while trail < len(lines) - lead and not lines[len(lines) - 1 - trail].strip():
        trail += 1
    return lines[lead : len(lines) - trail], lead, trail


def _reindenter(pairs: list[tuple[str, str]]):
    """A function mapping a SEARCH line's indentation to the matched code line's, or None."""
    first = next(((r, s) for r, s in pairs if s.strip()), None)
    if first is None:
        return None
    r_ind, s_ind = _indent(first[0]), _indent(first[1])
    if r_ind.endswith(s_ind):
        add = r_ind[: len(r_ind) - len(s_ind)]

        def fix(line: str) -> str:
            return add + line if line.strip() else line
    elif s_ind.endswith(r_ind):
        cut = len(s_ind) - len(r_ind)

        def fix(line: str) -> str:
            ind = _indent(line)
            return line[min(cut, len(ind)) :]
    else:
        return None
    for r, s in pairs:
        if s.strip() and fix(s).rstrip() != r.rstrip():
            return None
    return fix


def _line_matches(region: str, search: str, replace: str) -> list[tuple[int, int, str]]:
    """Matches of the SEARCH lines ignoring trailing whitespace and a uniform indentation change."""
    r_lines = _LINE.findall(region)
    s_lines, lead, trail = _strip_blank_ends(_LINE.findall(search))
    if not s_lines:
        return []
    rep_all = _LINE.findall(replace)
    _, rep_lead, rep_trail = _strip_blank_ends(rep_all)
    # Blank lines around the SEARCH text are not matched: drop as many around the replacement.
    rep_lines = rep_all[min(lead, rep_lead) : len(rep_all) - min(trail, rep_trail)]
    starts = [0]
    for line in r_lines:
        starts.append(starts[-1] + len(line))
    found = []
    m = len(s_lines)
    for i in range(len(r_lines) - m + 1):
        window = r_lines[i : i + m]
        if any(w.strip() != s.strip() for w, s in zip(window, s_lines, strict=True)):
            continue
        fix = _reindenter(list(zip(window, s_lines, strict=True)))
        if fix is None:
            continue
        new = "".join(fix(line) for line in rep_lines)
        if not window[-1].endswith("\n") and new.endswith("\n"):  # the match ends the text, no newline
            new = new[:-2] if new.endswith("\r\n") else new[:-1]
        found.append((starts[i], starts[i + m] - starts[i], new))
    return found


# --- a fenced code block replacing a region ----------------------------------------------------------


def extract_code_block(answer: str) -> str:
    """The content of the longest fenced code block of an answer ("\\n" line ends)."""
    lines = answer.replace("\r\n", "\n").split("\n")
    blocks: list[str] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence = opening.group(1)
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            j += 1
        if j == len(lines):
            if blocks:
                break
            raise EditFormatError(
                f"the code block opened on line {i + 1} of the answer is not closed (cut off?)"
            )
        blocks.append(_joined(lines[i + 1 : j]))
        i = j + 1
    if not blocks:
        raise EditFormatError("the answer has no fenced code block")
    return max(blocks, key=len)


def replace_region(text: str, scope: tuple[int, int], code: str) -> str:
    """`text` with `text[scope]` replaced by `code`, keeping the region's final newline (or lack of
    one), its line ends and, when the model dropped it, its indentation."""
    start, end = scope
    if not 0 <= start <= end <= len(text):
        raise ValueError(f"scope {start}..{end} is not a range within the text (length {len(text)})")
    region = text[start:end]
    code = code.replace("\r\n", "\n")
    region_lf = region.replace("\r\n", "\n")
    if region_lf.endswith("\n") and not code.endswith("\n"):
        code += "\n"
    elif not region_lf.endswith("\n") and code.endswith("\n"):
        code = code[:-1]
    at_line_start = start == 0 or text[start - 1] in "\r\n"
    r_first = next((ln for ln in region_lf.split("\n") if ln.strip()), None)
    c_first = next((ln for ln in code.split("\n") if ln.strip()), None)
    if at_line_start and r_first is not None and c_first is not None:
        r_ind, c_ind = _indent(r_first), _indent(c_first)
        if len(r_ind) > len(c_ind) and r_ind.endswith(c_ind):
            add = r_ind[: len(r_ind) - len(c_ind)]
            code = "".join(add + ln if ln.strip() else ln for ln in _LINE.findall(code))
    if "\r\n" in text:
        code = code.replace("\n", "\r\n")
    return text[:start] + code + text[end:]


# --- grammars for constrained decoding ----------------------------------------------------------------


def _literal(line: str) -> str:
    return json.dumps(line, ensure_ascii=False)


def search_replace_grammar(scope_text: str | None = None) -> str:
    """A Lark grammar of search/replace answers; with `scope_text`, SEARCH sections may only be runs
    of consecutive lines of it (each line written with "\\n")."""
    if scope_text is None or not scope_text.strip():
        return SEARCH_REPLACE_LARK
    lines = [line if line.endswith("\n") else line + "\n" for line in _LINE.findall(to_lf(scope_text))]
    rules = [
        f"s{i}: {_literal(line)} s{i + 1}?" if i + 1 < len(lines) else f"s{i}: {_literal(line)}"
        for i, line in enumerate(lines)
    ]
    search = " | ".join(f"s{i}" for i in range(len(lines)))
    return "\n".join(
        [
            'start: block ("\\n"? block)*',
            "block: SEARCH_START search DIVIDER body REPLACE_END",
            f"search: {search}",
            *rules,
            "body: LINE*",
            'SEARCH_START: "<<<<<<< SEARCH\\n"',
            'DIVIDER: "=======\\n"',
            'REPLACE_END: ">>>>>>> REPLACE\\n"',
            r"LINE: /[^\n]*\n/ & ~/(<<<<<<<|=======|>>>>>>>)[^\n]*\n/",
            "",
        ]
    )
