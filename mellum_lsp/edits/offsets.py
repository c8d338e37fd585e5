"""Offsets in one text: characters (code points) ↔ UTF-8 bytes (tree-sitter's unit) ↔ (line, character).

Offers:
- `TextOffsets(text)`: `char(byte)`, `byte(char)`, `point(offset)` -> (line, character) in code
  points, `line_of(offset)` and `line_start(line)`. Lines end at "\\n", "\\r\\n" or "\\r", as in
  `documents.py`; an ASCII text needs no tables.
- `encode(text)`: the UTF-8 bytes tree-sitter parses (lone surrogates passed through).
- `to_lf(text)` / `crlf(text)`: the "\\n" form of a text that the model sees, and whether a text ends
  its lines with "\\r\\n".
"""

from __future__ import annotations

from bisect import bisect_right

from ..documents import line_starts


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def to_lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def crlf(text: str) -> bool:
    return "\r\n" in text


class TextOffsets:
    """Offset conversions for one (immutable) text; tables are built on first use."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._ascii = text.isascii()
        self._lines: list[int] | None = None  # LSP line starts (code points)
        self._nl_chars: list[int] | None = None  # starts of "\n"-separated lines (code points)
        self._nl_bytes: list[int] | None = None  # the same in bytes

    def _byte_tables(self) -> tuple[list[int], list[int]]:
        if self._nl_chars is None or self._nl_bytes is None:
            chars, byts = [0], [0]
            c = b = 0
            for line in self.text.split("\n"):
                c += len(line) + 1
                b += len(encode(line)) + 1
                chars.append(c)
                byts.append(b)
            self._nl_chars, self._nl_bytes = chars, byts
        return self._nl_chars, self._nl_bytes

    def char(self, byte: int) -> int:
        """The character offset of a byte offset (inside a character: that character's start)."""
        if self._ascii:
            return min(max(byte, 0), len(self.text))
        chars, byts = self._byte_tables()
        row = max(0, bisect_right(byts, byte) - 1)
        start = chars[row]
        line = self.text[start : chars[row + 1] - 1] if row + 1 < len(chars) else self.text[start:]
        col = encode(line)[: byte - byts[row]].decode("utf-8", "ignore")
        return min(start + len(col), len(self.text))

    def byte(self, char: int) -> int:
        """The UTF-8 byte offset of a character offset."""
        char = min(max(char, 0), len(self.text))
        if self._ascii:
            return char
        chars, byts = self._byte_tables()
        row = max(0, bisect_right(chars, char) - 1)
        return byts[row] + len(encode(self.text[chars[row] : char]))

    def _line_starts(self) -> list[int]:
        if self._lines is None:
            self._lines = line_starts(self.text)
        return self._lines

    def line_of(self, offset: int) -> int:
        return bisect_right(self._line_starts(), max(0, offset)) - 1

    def line_start(self, line: int) -> int:
        starts = self._line_starts()
        return starts[line] if line < len(starts) else len(self.text)

    @property
    def line_count(self) -> int:
        return len(self._line_starts())

    def point(self, offset: int) -> tuple[int, int]:
        """(line, character) of an offset, characters counted in code points."""
        offset = min(max(offset, 0), len(self.text))
        line = self.line_of(offset)
        return line, offset - self._line_starts()[line]
