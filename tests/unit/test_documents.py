"""The document store: LSP positions under each encoding, incremental edits, the line index."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mellum_lsp.documents import (
    UTF8,
    UTF16,
    UTF32,
    Document,
    DocumentError,
    DocumentStore,
    choose_encoding,
    line_starts,
)


@dataclass
class Pos:
    line: int
    character: int


@dataclass
class Rng:
    start: Pos
    end: Pos


@dataclass
class Change:
    text: str
    range: Rng | None = None


# ---- an independent client-side model: positions computed from the encoded bytes -----------
_CODEC = {UTF8: ("utf-8", 1), UTF16: ("utf-16-le", 2), UTF32: ("utf-32-le", 4)}


def client_lines(text: str) -> list[tuple[int, str]]:
    """(start offset, content without terminator) of each line."""
    out, start = [], 0
    for m in re.finditer(r"\r\n|\r|\n", text):
        out.append((start, text[start : m.start()]))
        start = m.end()
    out.append((start, text[start:]))
    return out


def client_position(text: str, offset: int, encoding: str) -> Pos:
    codec, width = _CODEC[encoding]
    lines = client_lines(text)
    for i in range(len(lines) - 1, -1, -1):
        start, content = lines[i]
        if start <= offset:
            col = text[start:offset]
            assert col == content[: len(col)], "offset inside a line terminator"
            return Pos(i, len(col.encode(codec, "surrogatepass")) // width)
    raise AssertionError


def test_choose_encoding_prefers_utf8_then_utf32():
    assert choose_encoding(None) == UTF16
    assert choose_encoding(["utf-16"]) == UTF16
    assert choose_encoding(["utf-16", "utf-8"]) == UTF8
    assert choose_encoding(["utf-32", "utf-16"]) == UTF32
    assert choose_encoding(["utf-32", "utf-8"]) == UTF8
    assert choose_encoding(["latin-1"]) == UTF16


TEXT = "a😀b\r\n中文x\rz\n\U0001d11e!"


@pytest.mark.parametrize(
    ("encoding", "line", "character", "offset"),
    [
        (UTF16, 0, 0, 0),
        (UTF16, 0, 1, 1),
        (UTF16, 0, 3, 2),  # after the emoji (2 UTF-16 units)
        (UTF16, 0, 2, 1),  # inside the surrogate pair: the emoji's start
        (UTF16, 0, 4, 3),
        (UTF16, 0, 99, 3),  # past the end: the line's end, before \r\n
        (UTF8, 0, 5, 2),  # the emoji is 4 bytes
        (UTF8, 0, 3, 1),  # inside it
        (UTF8, 1, 3, 6),  # 中 is 3 bytes
        (UTF8, 1, 6, 7),
        (UTF32, 0, 2, 2),
        (UTF16, 2, 1, 10),  # the line after a lone \r
        (UTF16, 3, 2, 12),  # U+1D11E is 2 UTF-16 units
        (UTF8, 3, 4, 12),
        (UTF32, 3, 1, 12),
    ],
)
def test_offsets_under_each_encoding(encoding, line, character, offset):
    doc = Document("file:///t", TEXT, encoding=encoding)
    assert doc.line_count == 4
    assert doc.offset_at(Pos(line, character)) == offset


def test_positions_round_trip():
    for encoding in (UTF8, UTF16, UTF32):
        doc = Document("file:///t", TEXT, encoding=encoding)
        for offset in range(len(TEXT) + 1):
            if TEXT[offset - 1 : offset + 1] == "\r\n":
                continue  # between \r and \n: no position names it
            line, character = doc.position_at(offset)
            assert (line, character) == tuple(vars(client_position(TEXT, offset, encoding)).values())
            assert doc.offset_at(Pos(line, character)) == offset


def test_bad_positions():
    doc = Document("file:///t", "one\ntwo")
    with pytest.raises(DocumentError, match="past the end"):
        doc.offset_at(Pos(5, 0))
    with pytest.raises(DocumentError, match="non-negative"):
        doc.offset_at(Pos(-1, 0))
    assert doc.offset_at(Pos(5, 0), strict=False) == len(doc.text)  # edits: the end of the text


def test_incremental_edits_with_crlf_and_emoji():
    doc = Document("file:///t", "def f():\r\n    return 1\r\n", encoding=UTF16)
    doc.apply_change(Change("😀", Rng(Pos(1, 11), Pos(1, 12))))  # replace "1"
    assert doc.text == "def f():\r\n    return 😀\r\n"
    doc.apply_change(Change("x", Rng(Pos(1, 13), Pos(1, 13))))  # after the emoji (2 units)
    assert doc.text == "def f():\r\n    return 😀x\r\n"
    doc.apply_change(Change("\n", Rng(Pos(0, 8), Pos(0, 8))))  # splits nothing: \n before \r\n
    assert doc.line_count == 4
    doc.apply_change(Change("", Rng(Pos(0, 0), Pos(3, 0))))
    assert doc.text == "" and doc.line_count == 1
    doc.apply_change(Change("whole\rtext"))
    assert doc.line_text(1) == "text"


def test_edit_that_joins_cr_and_lf():
    doc = Document("file:///t", "a\rb\nc")
    doc.apply_change(Change("", Rng(Pos(1, 0), Pos(1, 1))))  # delete "b": "\r" + "\n" is one break now
    assert doc.text == "a\r\nc"
    assert doc._starts == line_starts(doc.text) == [0, 3]


def test_store():
    store = DocumentStore(UTF8)
    store.open("file:///a", "x", 1, "python")
    store.change("file:///a", [Change("é", Rng(Pos(0, 1), Pos(0, 1)))], 2)
    assert store.get("file:///a").text == "xé" and store.get("file:///a").version == 2
    with pytest.raises(DocumentError, match="not open"):
        store.get("file:///b")
    store.close("file:///a")
    assert "file:///a" not in store


# ---- the property: server text equals client text after random edits -----------------------
PIECES = ["a", "b", " ", "\n", "\r\n", "\r", "é", "中", "文", "😀", "\U0001d11e", "\t", "}"]
text_st = st.lists(st.sampled_from(PIECES), max_size=20).map("".join)


def _boundaries(text: str) -> list[int]:
    """Offsets a client can name with a position (not between \\r and \\n)."""
    return [i for i in range(len(text) + 1) if text[i - 1 : i + 1] != "\r\n"]


@st.composite
def edits(draw):
    text = draw(text_st)
    steps = []
    current = text
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.integers(0, 15)) == 0:
            new = draw(text_st)
            steps.append((None, None, new))
            current = new
            continue
        spots = _boundaries(current)
        a = draw(st.sampled_from(spots))
        b = draw(st.sampled_from([s for s in spots if s >= a]))
        new = draw(text_st)
        steps.append((a, b, new))
        current = current[:a] + new + current[b:]
    return text, steps


@settings(max_examples=300, deadline=None)
@given(edits(), st.sampled_from([UTF8, UTF16, UTF32]))
def test_random_edits_keep_server_text_equal_to_client_text(case, encoding):
    text, steps = case
    doc = Document("file:///p", text, encoding=encoding)
    client = text
    for a, b, new in steps:
        if a is None:
            change = Change(new)
            client = new
        else:
            change = Change(
                new, Rng(client_position(client, a, encoding), client_position(client, b, encoding))
            )
            client = client[:a] + new + client[b:]
        doc.apply_change(change)
        assert doc.text == client
        assert doc._starts == line_starts(client)
        assert doc.line_count == len(client_lines(client))
