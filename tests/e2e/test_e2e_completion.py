"""Completions end to end: a real client over stdio, the real server, engine and model."""

from __future__ import annotations

import pytest
from lsprotocol import types

pytestmark = pytest.mark.slow

SOURCE = "from .store import Store\n\n\ndef count_items(store: Store) -> int:\n    return "


async def test_initialize_and_inline_completion(lsp, workspace, model):
    result = lsp.init_result
    assert result.capabilities.inline_completion_provider is not None
    assert result.capabilities.position_encoding == "utf-16"
    uri = (workspace / "inventory" / "counting.py").as_uri()
    status = await lsp.indexed()
    assert all(r["built"] and r["files"] >= 4 for r in status["roots"].values()), status
    lsp.open(uri, SOURCE)
    answer = await lsp.inline(uri, 4, 11)
    m = await lsp.last(uri)
    assert m["served"] == "model", m
    assert m["cache"]["prompt_tokens"] > 0
    assert m["context"]["chunks"] > 0  # the imported store.py at least
    if model[1]:  # the embedded model writes code; a development model may write only junk
        assert answer.items and answer.items[0].insert_text.strip()
    for item in answer.items:
        assert item.range.start == types.Position(line=4, character=11)
        assert item.command.command == "mellum.accepted"


async def test_completion_fallback_for_clients_without_inline_completion(
    engine, workspace, server_env, model
):
    from lsp_client import Session, capabilities, engine_settings

    lsp = await Session(
        str(workspace), engine_settings(engine), capabilities(inline=False), server_env
    ).start()
    try:
        caps = lsp.init_result.capabilities
        assert caps.completion_provider is not None
        uri = (workspace / "inventory" / "fallback.py").as_uri()
        lsp.open(uri, "def total(store):\n    return store.total_va")
        result = await lsp.completion(uri, 1, 25)
        m = await lsp.last(uri)
        assert m["served"] == "model"
        assert result.is_incomplete is True
        if model[1]:
            assert result.items
        for item in result.items:
            edit = item.text_edit
            assert edit.range.start == types.Position(line=1, character=17)  # start of "total_va"
            assert edit.range.end == types.Position(line=1, character=25)
            assert edit.new_text.startswith("total_va") and item.filter_text.startswith("total_va")
            assert item.sort_text == "!mellum" and item.preselect and "AI" in item.detail
    finally:
        await lsp.stop()


async def test_typed_along_is_served_by_the_server(lsp, workspace):
    uri = (workspace / "inventory" / "along.py").as_uri()
    text = "def area(width, height):\n    return "
    lsp.open(uri, text)
    first = await lsp.inline(uri, 1, 11)
    if not first.items:
        pytest.skip("the model suggested nothing here")
    suggestion = first.items[0].insert_text
    lsp.insert(uri, 2, 1, 11, suggestion[0])
    second = await lsp.inline(uri, 1, 12)
    m = await lsp.last(uri)
    assert m["served"] == "typed_along"
    assert [i.insert_text for i in second.items] == ([suggestion[1:]] if suggestion[1:] else [])


async def test_opening_a_document_prefills_its_context(engine, workspace, server_env):
    from lsp_client import Session, capabilities, engine_settings

    lsp = await Session(
        str(workspace), engine_settings(engine, prefillOnOpen=True), capabilities(), server_env
    ).start()
    try:
        await lsp.indexed()
        await lsp.request("mellum/engineStats")  # connected
        uri = (workspace / "inventory" / "prefilled.py").as_uri()
        start = len(lsp.metrics)
        text = "from .models import Item\nfrom .store import Store\n\n\ndef restock(store: Store, item: Item) -> None:\n    "
        lsp.open(uri, text)
        prefill = await lsp.wait_metric(lambda m: m.get("event") == "prefill", start)
        assert prefill["prompt_tokens"] > 100
        await lsp.inline(uri, 5, 4)
        m = await lsp.last(uri)
        assert m["cache"]["reused_tokens"] >= prefill["prompt_tokens"] - 8  # the context was ready
    finally:
        await lsp.stop()
