"""Suggestions as LSP results, the context budget and the engine parameters (pure parts)."""

from __future__ import annotations

from lsprotocol import types

from mellum_lsp.documents import UTF16, Document
from mellum_lsp.features import items
from mellum_lsp.features.pipeline import Snapshot, context_budget, engine_params, finish
from mellum_lsp.settings import CompletionSettings


def test_inline_item_inserts_at_the_cursor_in_utf16_units():
    doc = Document("file:///a.py", "s = '😀' + na\n", encoding=UTF16)
    offset = doc.text.index("na") + 2
    cmd = items.feedback_command("7", doc.uri, "me", "python")
    result = items.inline_list("me", doc, offset, cmd)
    (item,) = result.items
    assert item.insert_text == "me"
    assert item.range.start == item.range.end == types.Position(line=0, character=13)  # the emoji is 2 units
    assert item.command.command == "mellum.accepted" and item.command.arguments[0]["id"] == "7"
    assert items.inline_list("", doc, offset, cmd).items == []


def test_completion_item_replaces_the_word_and_sorts_first():
    doc = Document("file:///a.py", "    total = compu\n", encoding=UTF16)
    offset = len("    total = compu")
    result = items.completion_list("te(a)\nmore", doc, offset, None)
    assert result.is_incomplete is True
    (item,) = result.items
    assert item.text_edit.range.start == types.Position(line=0, character=12)
    assert item.text_edit.range.end == types.Position(line=0, character=17)
    assert item.text_edit.new_text == "compute(a)\nmore"
    assert item.filter_text.startswith("compu")
    assert item.sort_text < "a" and item.preselect
    assert "AI" in item.detail and item.label == "compute(a)…"
    assert items.word_start("a.b_c", 5) == 2


def test_context_budget_leaves_room_for_file_and_generation():
    assert context_budget(32768, 64, "", "", 8192) == 8192
    small = context_budget(4096, 64, "x" * 7000, "", 100_000)
    assert small == 4096 - 64 - 2000 - 64
    assert context_budget(4096, 64, "x" * 10**6, "", 100_000) == 4096 - 64 - 2048 - 64  # file capped at half
    assert context_budget(1024, 2000, "", "", 8192) == 0


def test_crlf_documents_are_normalised_for_the_model_and_restored():
    snap = Snapshot(
        "file:///a.py", "def f():\r\n    return 1\r\n", len("def f():\r\n    "), "/a.py", "a.py", "python"
    )
    params = engine_params(snap, CompletionSettings(deadline_ms=0), multiline=True)
    assert params["prefix"] == "def f():\n    " and params["suffix"] == "return 1\n"
    assert "deadline_ms" not in params and params["path"] == "a.py"
    text = finish("x = 1\n    y = 2", snap, multiline=True)
    assert text == "x = 1\r\n    y = 2"
