"""What a connection's engine holds: one edit per keystroke, chunk keys sent once."""

from __future__ import annotations

from collections import namedtuple

from hypothesis import given
from hypothesis import strategies as st

from mellum_lsp.held import Held, one_edit

Chunk = namedtuple("Chunk", "path text key")


@given(st.text(max_size=60), st.text(max_size=60))
def test_one_edit_turns_old_into_new(old, new):
    start, end, text = one_edit(old, new)
    assert old[:start] + text + old[end:] == new
    assert 0 <= start <= end <= len(old)


def test_typing_a_character_sends_just_it():
    assert one_edit("def f(x):\n    ret\n", "def f(x):\n    retu\n") == (17, 17, "u")
    assert one_edit("aaaa", "aaa") == (3, 4, "")


def test_documents_are_sent_in_full_once_then_as_edits():
    held = Held()
    assert held.document("d", "abc") == {"version": 1, "text": "abc"}
    assert held.document("d", "abXc") == {"version": 2, "base": 1, "edit": [2, 2, "X"]}
    assert held.document("d", "abXc") == {"version": 2, "base": 2}
    held.forget_documents()
    assert held.document("d", "abXc") == {"version": 3, "text": "abXc"}


def test_chunk_text_goes_once_and_a_list_by_its_ref_afterwards():
    held = Held()
    chunks = [Chunk("a.py", "A = 1", "ka")]
    first = held.context(chunks)
    assert first["context"] == [{"path": "a.py", "key": "ka", "text": "A = 1"}]
    assert held.context(chunks) == {"context_ref": first["context_ref"]}
    more = held.context([*chunks, Chunk("b.py", "B", "kb")])
    assert more["context"] == [{"path": "a.py", "key": "ka"}, {"path": "b.py", "key": "kb", "text": "B"}]
    held.forget_chunks()
    assert held.context(chunks)["context"][0]["text"] == "A = 1"
    assert held.context([]) == {"context": []}
