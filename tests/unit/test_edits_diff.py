"""Minimal text edits between two texts (mellum_lsp.edits.diff), checked with hypothesis."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mellum_lsp.edits.diff import TextEdit, apply_edits, changed_span, minimal_edits

# Few distinct characters, so texts share lines and the line diff has work to do; line breaks of
# every kind, and characters outside the BMP and ASCII.
ALPHABET = st.sampled_from(["a", "b", " ", "\n", "\n", "\r\n", "\r", "x = 1\n", "é", "日本", "😀", "\t"])
TEXTS = st.lists(ALPHABET, max_size=60).map("".join)


@st.composite
def text_and_variant(draw):
    """A text and a version of it with a few random replacements, like an edited document."""
    old = draw(TEXTS)
    new = old
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(new)))
        j = draw(st.integers(i, min(len(new), i + 8)))
        new = new[:i] + draw(TEXTS.filter(lambda t: len(t) < 12)) + new[j:]
    return old, new


def _check(old: str, new: str) -> list[TextEdit]:
    edits = minimal_edits(old, new)
    assert apply_edits(old, edits) == new
    at = 0
    for e in edits:
        assert at <= e.start <= e.end <= len(old), edits  # sorted, disjoint, inside the text
        assert e.end > e.start or e.new_text, edits  # never a no-op edit
        assert old[e.start : e.end] != e.new_text, edits
        for boundary in (e.start, e.end):  # an LSP position cannot sit inside "\r\n"
            assert not (0 < boundary < len(old) and old[boundary - 1] == "\r" and old[boundary] == "\n"), (
                edits
            )
        at = e.end
    return edits


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text_and_variant())
def test_applying_the_edits_gives_the_new_text(pair):
    _check(*pair)


@settings(max_examples=300, deadline=None)
@given(TEXTS, TEXTS)
def test_unrelated_texts(old, new):
    edits = _check(old, new)
    assert (edits == []) == (old == new)


@settings(max_examples=200, deadline=None)
@given(TEXTS, TEXTS, TEXTS)
def test_one_change_between_shared_ends_is_one_small_edit(head, middle, tail):
    old = head + tail
    new = head + middle + tail
    edits = _check(old, new)
    if middle:
        # a pure insertion never rewrites more than the inserted text and a line-ending character
        assert sum(len(e.new_text) for e in edits) <= len(middle) + 2 * len(edits)
        assert sum(e.end - e.start for e in edits) <= 2 * len(edits)


def test_a_one_character_change_in_a_long_file_is_one_character():
    old = "".join(f"line {i} = {i * 7}\n" for i in range(2000))
    new = old.replace("line 1234 = 8638", "line 1234 = 8639")
    (edit,) = _check(old, new)
    assert edit == TextEdit(old.index("8638") + 3, old.index("8638") + 4, "9")


def test_a_long_file_of_repeated_lines_costs_what_changes():
    old = "    x = x + 1\n    return x\n\n" * 7000  # 21,000 lines, few distinct ones
    i = old.index("return x", len(old) // 2)
    new = old[:i] + "return x * 2" + old[i + len("return x") :]
    t0 = time.perf_counter()
    edits = _check(old, new)
    assert time.perf_counter() - t0 < 0.5
    assert edits == [TextEdit(i + len("return x"), i + len("return x"), " * 2")]


def test_separate_changes_are_separate_edits():
    old = "def f(x):\n    return x\n\n\ndef g(y):\n    return y\n"
    new = old.replace("return x", "return x + 1").replace("def g(y)", "def g(y, z)")
    edits = _check(old, new)
    assert [e.new_text for e in edits] == [" + 1", ", z"]


def test_crlf_documents_keep_line_breaks_whole():
    old = "a = 1\r\nb = 2\r\nc = 3\r\n"
    assert _check(old, old.replace("b = 2", "b = 20")) == [TextEdit(12, 12, "0")]
    # turning "\r\n" into "\n" removes the "\r" by an edit that ends after the "\n"
    edits = _check(old, old.replace("b = 2\r\n", "b = 2\n"))
    assert edits == [TextEdit(12, 14, "\n")]
    inserted = _check(old, old.replace("b = 2\r\n", "b = 2\r\nb2 = 5\r\n"))
    assert apply_edits(old, inserted) == old.replace("b = 2\r\n", "b = 2\r\nb2 = 5\r\n")


def test_unicode_offsets_are_code_points():
    old = "s = '日本語'\nt = '😀'\n"
    new = old.replace("😀", "😀😁")
    (edit,) = _check(old, new)
    assert edit == TextEdit(old.index("😀") + 1, old.index("😀") + 1, "😁")


def test_empty_texts():
    assert minimal_edits("", "") == []
    assert _check("", "x = 1\n") == [TextEdit(0, 0, "x = 1\n")]
    assert _check("x = 1\n", "") == [TextEdit(0, 6, "")]


def test_apply_edits_rejects_overlaps_and_bad_ranges():
    with pytest.raises(ValueError, match="overlaps"):
        apply_edits("abcdef", [TextEdit(0, 3, "x"), TextEdit(2, 4, "y")])
    with pytest.raises(ValueError, match="outside the text"):
        apply_edits("abc", [TextEdit(2, 9, "")])
    assert apply_edits("abcdef", [TextEdit(4, 5, "E"), TextEdit(0, 1, "A")]) == "AbcdEf"


def test_changed_span():
    assert changed_span("abcdef", "abXYef") == (2, 4, 4)
    assert changed_span("aaa", "aaaa") == (3, 3, 4)
    assert changed_span("same", "same") == (4, 4, 4)
