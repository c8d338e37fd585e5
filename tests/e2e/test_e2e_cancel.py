"""Cancellation that stops the engine's work, superseding, and surviving the engine's death."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException

pytestmark = pytest.mark.slow


def long_source(functions: int = 150) -> str:
    """A file unique to this run (nothing cached), a few thousand tokens long: a slow prefill."""
    tag = uuid.uuid4().hex[:8]
    body = "".join(f"def f_{tag}_{i}(x):\n    return x * {i} + {i % 7}\n\n" for i in range(functions))
    return body + "def main():\n    return "


def end_of(text: str) -> tuple[int, int]:
    lines = text.split("\n")
    return len(lines) - 1, len(lines[-1])


def is_engine_request(uri: str):
    return lambda m: (
        m.get("event") == "engine_request" and m.get("document") == uri and m["method"] == "complete"
    )


async def totals(lsp) -> dict:
    return (await lsp.request("mellum/engineStats"))["totals"]


async def until_running(lsp) -> None:
    """Until the engine's model worker has taken the request (it is then no longer queued):
    a request cancelled while still queued is dropped without being counted."""
    for _ in range(10_000):
        if (await lsp.request("mellum/engineStats"))["queued"] == 0:
            return
    raise AssertionError("the engine never started the request")


async def test_cancel_request_cancels_the_engine_request(lsp, workspace):
    uri = (workspace / "inventory" / "cancel_me.py").as_uri()
    text = long_source()
    lsp.open(uri, text)
    before = await totals(lsp)
    start = len(lsp.metrics)
    line, character = end_of(text)
    pending = asyncio.ensure_future(
        lsp.client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, lsp.inline_params(uri, line, character), msg_id="cancel-me"
        )
    )
    await lsp.wait_metric(is_engine_request(uri), start)
    await until_running(lsp)  # the engine is working on it now
    lsp.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcException) as error:
        await pending
    assert error.value.code == types.LSPErrorCodes.RequestCancelled
    event = await lsp.wait_metric(lambda m: m.get("event") == "engine_cancelled", start)
    assert event["outcome"] == "cancelled"
    after = await totals(lsp)
    assert after["cancelled"] == before["cancelled"] + 1
    stats = await lsp.request("mellum/engineStats")
    record = next(r for r in reversed(stats["recent"]) if r["document"] == uri)
    assert record["stopped"] == "cancelled"


@pytest.mark.parametrize("edit", ["cursor_moved", "typed_on"])
async def test_a_newer_request_supersedes_the_older(lsp, workspace, edit):
    """The older request is answered empty at once. When the cursor moved, the server cancels
    the older engine request; when the user typed on, the engine serves the newer request from
    the older one's work or supersedes it."""
    uri = (workspace / "inventory" / f"supersede_{edit}.py").as_uri()
    text = long_source()
    lsp.open(uri, text)
    before = await totals(lsp)
    start = len(lsp.metrics)
    line, character = end_of(text)
    older = asyncio.ensure_future(
        lsp.client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, lsp.inline_params(uri, line, character)
        )
    )
    await lsp.wait_metric(is_engine_request(uri), start)
    await until_running(lsp)
    if edit == "cursor_moved":
        lsp.insert(uri, 2, 0, 0, "# edited above\n")
        line += 1
    else:
        lsp.insert(uri, 2, line, character, "§")  # typed something no model would suggest
        character += 1
    await lsp.inline(uri, line, character)
    assert not (await older).items
    served = [m["served"] for m in lsp.metrics[start:] if m.get("event") == "completion"]
    assert served == ["superseded", "model"], served
    if edit == "cursor_moved":
        event = await lsp.wait_metric(lambda m: m.get("event") == "engine_cancelled", start)
        assert event["outcome"] == "cancelled"
        after = await totals(lsp)
        assert after["cancelled"] == before["cancelled"] + 1


async def test_the_engine_killed_mid_request_is_restarted(lsp, workspace, engine):
    uri = (workspace / "inventory" / "survive.py").as_uri()
    text = long_source(40)
    lsp.open(uri, text)
    await lsp.inline(uri, 0, 0)  # connected and served
    first_pid = engine.pid
    start = len(lsp.metrics)
    line, character = end_of(text)
    pending = asyncio.ensure_future(
        lsp.client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, lsp.inline_params(uri, line, character)
        )
    )
    await lsp.wait_metric(is_engine_request(uri), start)
    os.kill(first_pid, signal.SIGKILL)
    await pending  # served after a restart: the request is retried once
    m = await lsp.last(uri)
    assert m["served"] == "model", m.get("error")
    assert any(e.get("event") == "engine_connected" for e in lsp.metrics[start:])
    assert engine.pid != first_pid
    status = await lsp.request("mellum/status")
    assert status["engine"]["connects"] == 2
