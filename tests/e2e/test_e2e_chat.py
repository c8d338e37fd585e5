"""Chat through a real LSP client against the real engine and the embedded model: the answer
streams as partial results (or `mellum/chatChunk` notifications), a second turn reuses the
engine's KV cache, `$/cancelRequest` stops decoding, conversations are reset by id, and the
transcript is readable as the virtual document `mellum-chat:/<id>.md`.

`ChatClient` (used by the agent tests too) is a `Session` whose client records partial results,
chat chunks, transcript refreshes and `workspace/applyEdit` requests (answered by `apply_policy`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import lsp_client
import pytest
from lsp_client import Session, capabilities, engine_settings, plain
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp.client import (
    DEFAULT_CLIENT_FEATURES,
    LanguageClient,
    default_converter,
    register_lsp_features,
)

TIMEOUT = 120.0


def chat_capabilities() -> types.ClientCapabilities:
    caps = capabilities()
    caps.workspace.apply_edit = True
    caps.workspace.workspace_edit = types.WorkspaceEditClientCapabilities(
        document_changes=True,
        change_annotation_support=types.ChangeAnnotationsSupportOptions(groups_on_label=True),
    )
    caps.workspace.text_document_content = types.TextDocumentContentClientCapabilities()
    return caps


def _client() -> LanguageClient:
    """pytest-lsp's client without its `$/progress` handler (it knows only work-done progress)."""
    client = LanguageClient(converter_factory=default_converter)
    features = {m: f for m, f in DEFAULT_CLIENT_FEATURES.items() if m != types.PROGRESS}
    register_lsp_features(client, features)
    return client


class ChatClient:
    """A server session whose client records what chat and the agent send it."""

    def __init__(self, root: str, settings: dict, env: dict, monkeypatch) -> None:
        monkeypatch.setattr(lsp_client, "make_test_lsp_client", _client)
        self.session = Session(root, settings, chat_capabilities(), env)
        self.progress: dict[Any, list[dict]] = {}
        self.chunks: list[dict] = []
        self.refreshed: list[str] = []
        self.applied: list[dict] = []  # the params of each workspace/applyEdit
        self.apply_policy: Callable[[dict], dict] = lambda params: {"applied": False}
        self.first_chunk = asyncio.Event()
        client = self.session.client

        @client.feature(types.PROGRESS)
        def on_progress(params: types.ProgressParams) -> None:
            value = plain(params.value)
            self.progress.setdefault(params.token, []).append(value)
            if isinstance(value, dict) and "conversationId" in value:  # not work-done progress
                self.first_chunk.set()

        @client.feature("mellum/chatChunk")
        def on_chunk(params: Any) -> None:
            self.chunks.append(plain(params))
            self.first_chunk.set()

        @client.feature(types.WORKSPACE_TEXT_DOCUMENT_CONTENT_REFRESH)
        def on_refresh(params: types.TextDocumentContentRefreshParams) -> None:
            self.refreshed.append(params.uri)

        @client.feature(types.WORKSPACE_APPLY_EDIT)
        def on_apply(params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
            raw = client.protocol._converter.unstructure(params)
            self.applied.append(raw)
            answer = self.apply_policy(raw)
            return types.ApplyWorkspaceEditResult(
                applied=answer["applied"], failure_reason=answer.get("failureReason")
            )

    async def start(self) -> ChatClient:
        await self.session.start()
        return self

    async def request(self, method: str, params: Any = None, timeout: float = TIMEOUT) -> Any:
        return await self.session.request(method, params, timeout)

    async def transcript(self, uri: str) -> str:
        result = await self.session.client.workspace_text_document_content_async(
            types.TextDocumentContentParams(uri=uri)
        )
        return result.text


def chat_settings(engine, **chat) -> dict:
    return {**engine_settings(engine), "chat": {"maxTokens": 48, **chat}}


@pytest.fixture
async def chat(engine, workspace, server_env, monkeypatch):
    client = await ChatClient(str(workspace), chat_settings(engine), server_env, monkeypatch).start()
    await client.session.indexed()
    yield client
    await client.session.stop()


def open_sample(client: ChatClient, workspace) -> tuple[str, str]:
    path = next(p for p in sorted(workspace.rglob("*.py")) if p.stat().st_size > 200)
    text = path.read_text()
    client.session.open(path.as_uri(), text)
    return path.as_uri(), text


def context_of(uri: str, first: int = 0, last: int = 3) -> dict:
    return {"textDocument": {"uri": uri},
            "range": {"start": {"line": first, "character": 0}, "end": {"line": last, "character": 0}}}  # fmt: skip


async def test_the_answer_streams_as_partial_results_and_the_transcript_reads_it(chat, workspace):
    uri, _ = open_sample(chat, workspace)
    result = await chat.request(
        "mellum/chat",
        {"message": "What does this code do?", "context": context_of(uri), "partialResultToken": "t1"},
    )
    parts = chat.progress["t1"]
    assert parts and all(p["conversationId"] == result["conversationId"] for p in parts)
    assert "".join(p["text"] for p in parts if p["kind"] == "content") == result["answer"]
    assert result["answer"] and result["usage"]["answerTokens"] == 48
    assert not chat.chunks  # a client with a token gets no chatChunk notifications
    uri_md = f"mellum-chat:/{result['conversationId']}.md"
    assert result["transcript"] == uri_md
    text = await chat.transcript(uri_md)
    assert "## You\n\nWhat does this code do?" in text and result["answer"] in text
    assert "lines 1-3" in text  # what the question was about
    for _ in range(200):  # the refresh request follows the answer
        if uri_md in chat.refreshed:
            break
        await asyncio.sleep(0.01)
    assert uri_md in chat.refreshed


async def test_without_a_token_the_chunks_come_as_notifications(chat):
    result = await chat.request("mellum/chat", {"message": "def fib(n):"})
    assert chat.chunks and {c["conversationId"] for c in chat.chunks} == {result["conversationId"]}
    assert "".join(c["text"] for c in chat.chunks if c["kind"] == "content") == result["answer"]


async def test_a_second_turn_reuses_the_first_turns_cache(chat, workspace):
    uri, _ = open_sample(chat, workspace)
    first = await chat.request("mellum/chat", {"message": "Explain this.", "context": context_of(uri)})
    second = await chat.request(
        "mellum/chat", {"conversationId": first["conversationId"], "message": "And what could go wrong?"}
    )
    assert second["conversationId"] == first["conversationId"]
    # the previous prompt and the answer decoded from it are served from the cache
    held = first["usage"]["promptTokens"] + first["usage"]["answerTokens"]
    assert second["usage"]["reusedTokens"] >= held - 2
    assert second["usage"]["promptTokens"] > held
    stats = await chat.request("mellum/engineStats")
    record = next(r for r in reversed(stats["recent"]) if r["document"] == f"chat:{first['conversationId']}")
    assert record["reused_tokens"] == second["usage"]["reusedTokens"]
    text = await chat.transcript(second["transcript"])
    assert text.index("Explain this.") < text.index("And what could go wrong?")


async def test_cancel_request_stops_decoding_in_the_engine(engine, workspace, server_env, monkeypatch):
    client = await ChatClient(
        str(workspace), chat_settings(engine, maxTokens=8000), server_env, monkeypatch
    ).start()
    try:
        before = (await client.request("mellum/engineStats"))["totals"]
        start = len(client.session.metrics)
        pending = asyncio.ensure_future(
            client.session.client.protocol.send_request_async(
                "mellum/chat", {"message": "Write a long story.", "partialResultToken": "c1"}, msg_id="chat-1"
            )
        )
        await asyncio.wait_for(client.first_chunk.wait(), TIMEOUT)  # decoding is under way
        client.session.client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="chat-1"))
        with pytest.raises(JsonRpcException) as error:
            await asyncio.wait_for(pending, TIMEOUT)
        assert error.value.code == types.LSPErrorCodes.RequestCancelled
        event = await client.session.wait_metric(lambda m: m.get("event") == "engine_cancelled", start)
        assert event["outcome"] == "cancelled" and event["method"] == "chat"
        stats = await client.request("mellum/engineStats")
        assert stats["totals"]["cancelled"] == before["cancelled"] + 1
        cid = client.progress["c1"][0]["conversationId"]
        record = next(r for r in reversed(stats["recent"]) if r["document"] == f"chat:{cid}")
        assert record["stopped"] == "cancelled" and record["generated_tokens"] < 8000
        text = await client.transcript(f"mellum-chat:/{cid}.md")
        assert "(cancelled)" in text
    finally:
        await client.session.stop()


async def test_reset_ends_a_conversation(chat):
    first = await chat.request("mellum/chat", {"message": "Hello"})
    cid = first["conversationId"]
    assert await chat.request("mellum/chat/reset", {"conversationId": cid}) == {"reset": True}
    assert await chat.request("mellum/chat/reset", {"conversationId": cid}) == {"reset": False}
    with pytest.raises(JsonRpcException, match="no conversation"):
        await chat.request("mellum/chat", {"conversationId": cid, "message": "Again"})
    with pytest.raises(JsonRpcException, match="no conversation"):
        await chat.transcript(f"mellum-chat:/{cid}.md")
    with pytest.raises(JsonRpcException, match="message must be a non-empty string"):
        await chat.request("mellum/chat", {"message": ""})


async def test_explain_with_mellum_opens_a_chat_about_the_selection(chat, workspace):
    """The code action "Explain with Mellum" is the command `mellum.explain {textDocument, range}`."""
    uri, text = open_sample(chat, workspace)
    params = types.ExecuteCommandParams(command="mellum.explain", arguments=[context_of(uri)])
    result = plain(await chat.request(types.WORKSPACE_EXECUTE_COMMAND, params))
    assert (
        result["answer"]
        and "".join(c["text"] for c in chat.chunks if c["kind"] == "content") == result["answer"]
    )
    transcript = await chat.transcript(result["transcript"])
    assert "Explain what this code does" in transcript and text.splitlines()[1] in transcript
