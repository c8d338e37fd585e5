"""Open text documents: LSP changes applied to text, positions converted to offsets and back.

Pure (no I/O, no LSP library types needed). Offers:
- `PositionEncoding` ("utf-8", "utf-16", "utf-32") and `choose_encoding(offered)`: UTF-8 when
  the client offers it, else UTF-32 when offered, else UTF-16 (the LSP default).
- `Document`: text, version, language id, and a line index kept up to date edit by edit, so a
  keystroke costs O(edit + lines after it) rather than a rescan of the text.
- `DocumentStore`: documents by URI (open / change / close).
- `DocumentError`: an unknown document or an unusable position.

Conventions (LSP 3.17): lines end at "\\n", "\\r\\n" or "\\r". A position's `character` counts
code units of the negotiated encoding; past the end of its line it means the line's end (before
the terminator). A position inside one character (half a surrogate pair, inside a UTF-8
sequence) is moved back to that character's start. A line past the last one is an error for
requests (`strict=True`) and the end of the document for edits. Offsets are indices into the
Python string (code points).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

UTF8, UTF16, UTF32 = "utf-8", "utf-16", "utf-32"
ENCODINGS = (UTF8, UTF16, UTF32)
_BREAK = re.compile(r"\r\n|\r|\n")


class DocumentError(ValueError):
    """A request or change that cannot be applied; the message names what is wrong."""


class PositionLike(Protocol):
    line: int
    character: int


def choose_encoding(offered: Iterable[str] | None) -> str:
    """The position encoding to negotiate from the client's `general.positionEncodings`."""
    offered = [str(getattr(e, "value", e)) for e in (offered or ())]
    for preferred in (UTF8, UTF32):
        if preferred in offered:
            return preferred
    return UTF16


def line_starts(text: str) -> list[int]:
    """Offsets at which each line begins (the first is always 0)."""
    return [0, *(m.end() for m in _BREAK.finditer(text))]


def units(s: str, encoding: str) -> int:
    """Length of `s` in code units of `encoding`."""
    if encoding == UTF32 or s.isascii():
        return len(s)
    if encoding == UTF16:
        return len(s) + sum(1 for c in s if c > "\uffff")
    return len(s.encode("utf-8", "surrogatepass"))


def _unit_width(c: str, encoding: str) -> int:
    if encoding == UTF16:
        return 2 if c > "\uffff" else 1
    o = ord(c)
    return 1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4


def index_at_units(s: str, n: int, encoding: str) -> int:
    """The index into `s` of the character at `n` code units (clamped to len(s); a position inside
    a character counts as that character's start)."""
    if encoding == UTF32 or s.isascii():
        return min(n, len(s))
    used = 0
    for i, c in enumerate(s):
        used += _unit_width(c, encoding)
        if used > n:
            return i
    return len(s)


@dataclass
class Document:
    uri: str
    text: str
    version: int | None = None
    language_id: str | None = None
    encoding: str = UTF16

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise DocumentError(f"position encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        self._starts = line_starts(self.text)

    # ---- lines ---------------------------------------------------------------------------
    @property
    def line_count(self) -> int:
        return len(self._starts)

    def line_range(self, line: int) -> tuple[int, int]:
        """[start, end) offsets of the line's content, without its terminator."""
        start = self._starts[line]
        if line + 1 >= len(self._starts):
            return start, len(self.text)
        end = self._starts[line + 1]
        if end > start and self.text[end - 1] == "\n":
            end -= 1
        if end > start and self.text[end - 1] == "\r":
            end -= 1
        return start, end

    def line_text(self, line: int) -> str:
        start, end = self.line_range(line)
        return self.text[start:end]

    # ---- positions -----------------------------------------------------------------------
    def offset_at(self, position: PositionLike, *, strict: bool = True) -> int:
        line, character = position.line, position.character
        if not isinstance(line, int) or not isinstance(character, int) or line < 0 or character < 0:
            raise DocumentError(
                f"position must have non-negative integer line and character, got {line!r}:{character!r}"
            )
        if line >= len(self._starts):
            if strict:
                raise DocumentError(f"line {line} is past the end of {self.uri} ({len(self._starts)} lines)")
            return len(self.text)
        start, end = self.line_range(line)
        return start + index_at_units(self.text[start:end], character, self.encoding)

    def position_at(self, offset: int) -> tuple[int, int]:
        """(line, character) of an offset, the character in this document's encoding."""
        offset = max(0, min(offset, len(self.text)))
        line = bisect_right(self._starts, offset) - 1
        start, end = self.line_range(line)
        return line, units(self.text[start : min(offset, end)], self.encoding)

    # ---- edits ---------------------------------------------------------------------------
    def apply_change(self, change: Any) -> tuple[int, int]:
        """Apply one `TextDocumentContentChangeEvent` (an object with `text` and optionally a
        `range` with `start`/`end` positions); returns the changed [start, end) offsets of the
        new text. Without a range the whole text is replaced."""
        new = change.text
        if not isinstance(new, str):
            raise DocumentError(f"a content change needs text as a string, got {type(new).__name__}")
        rng = getattr(change, "range", None)
        if rng is None:
            self.text = new
            self._starts = line_starts(new)
            return 0, len(new)
        start = self.offset_at(rng.start, strict=False)
        end = self.offset_at(rng.end, strict=False)
        if end < start:  # a reversed range: take it as the span it names
            start, end = end, start
        self._replace(start, end, new)
        return start, start + len(new)

    def apply_changes(self, changes: Iterable[Any], version: int | None = None) -> None:
        for change in changes:
            self.apply_change(change)
        if version is not None:
            self.version = version

    def _replace(self, start: int, end: int, new: str) -> None:
        """Splice `new` over [start, end) and update the line index around it.

        Line starts before `start` and after `end` keep their meaning (shifted by the length
        change); those inside the new text are rescanned. A start s is a line start iff the
        character before it is "\\n", or is "\\r" not followed by "\\n": it depends only on the
        characters at s-1 and s, so only starts in [start, start + len(new)] can change.
        """
        text = self.text[:start] + new + self.text[end:]
        delta = len(new) - (end - start)
        old = self._starts
        keep_before = old[: bisect_left(old, start)]
        shifted = [s + delta for s in old[bisect_right(old, end) :]]
        stop = start + len(new)
        lo = max(start - 1, 0)
        window = text[lo : min(stop + 1, len(text))]
        middle = [0] if start == 0 else []
        middle += [lo + m.end() for m in _BREAK.finditer(window) if start <= lo + m.end() <= stop]
        self.text = text
        self._starts = keep_before + middle + shifted


class DocumentStore:
    """Open documents by URI, all in one position encoding."""

    def __init__(self, encoding: str = UTF16) -> None:
        if encoding not in ENCODINGS:
            raise DocumentError(f"position encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.encoding = encoding
        self._docs: dict[str, Document] = {}

    def open(
        self, uri: str, text: str, version: int | None = None, language_id: str | None = None
    ) -> Document:
        doc = Document(uri, text, version, language_id, self.encoding)
        self._docs[uri] = doc
        return doc

    def get(self, uri: str) -> Document:
        doc = self._docs.get(uri)
        if doc is None:
            raise DocumentError(f"document {uri} is not open (send textDocument/didOpen first)")
        return doc

    def change(self, uri: str, changes: Iterable[Any], version: int | None = None) -> Document:
        doc = self.get(uri)
        doc.apply_changes(changes, version)
        return doc

    def close(self, uri: str) -> Document | None:
        return self._docs.pop(uri, None)

    def __contains__(self, uri: str) -> bool:
        return uri in self._docs

    def __iter__(self):
        return iter(list(self._docs.values()))
