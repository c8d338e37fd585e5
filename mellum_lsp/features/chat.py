"""Chat over LSP: `mellum/chat`, `mellum/chat/reset`, and transcripts as virtual documents.

- `mellum/chat` {conversationId?, message, context?: {textDocument, range?}, partialResultToken?}
  -> {conversationId, answer, reasoning?, transcript, usage}. The answer streams as it is decoded:
  as LSP partial results (`$/progress` on `partialResultToken`) or, for clients that cannot pass
  a token, as `mellum/chatChunk` notifications; both carry {conversationId, kind: "content" |
  "reasoning", text}. `$/cancelRequest` stops the engine's decoding. The context (selection, file,
  code the repository index retrieves) fits the chat model's window next to the conversation.
- `mellum/chat/reset` {conversationId} -> {reset}: ends a conversation.
- `workspace/textDocumentContent` {uri: "mellum-chat:/<id>.md"} -> {text}: the transcript as
  Markdown (LSP 3.18); after each turn the server sends `workspace/textDocumentContent/refresh`
  when the client supports the method.

The conversations live per server (`conversations(ls)`), shared with `features/agent.py`.

Offers `register`, `conversations`, `Chunks`, `SessionEngine`, `refresh`, `parse_chat`, `ChatRequest`,
`open_document`, `SCHEMES`.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInvalidParams

from engine.rpc import EngineError

from ..agent.chat import ChatContext, chat_turn, context_budget, context_text
from ..agent.conversation import SCHEME, Conversation, ConversationError, Conversations, id_of_uri
from ..agent.transcript import render
from ..context.files import read_source
from ..context.languages import language_for_path, normalize_language
from ..documents import Document, DocumentError
from ..engine_client import EngineSession, EngineUnavailable
from .protocol import plain
from .state import MellumServer
from .workspace import uri_to_path

SCHEMES = [SCHEME]


def conversations(ls: MellumServer) -> Conversations:
    """The conversations of this server (chat and agent runs)."""
    return ls.conversations


def failed(message: str) -> JsonRpcException:
    return JsonRpcException(message=message, code=types.LSPErrorCodes.RequestFailed)


class SessionEngine:
    """The engine session as a `ChatEngine` (one `chat` request, partial results to a callback)
    and an `EditEngine` (`edits.generate`)."""

    def __init__(self, session: EngineSession) -> None:
        self.session = session

    @property
    def info(self) -> dict:
        return self.session.info

    async def chat(self, params: dict, on_partial=None) -> dict:
        return await self.session.request("chat", params, on_partial)

    async def request(self, method: str, params: Any = None, on_partial=None) -> Any:
        return await self.session.request(method, params, on_partial)

    async def complete(
        self, params: dict, chunks: Any = (), on_partial=None, text: str | None = None
    ) -> dict:
        return await self.session.complete(params, chunks, on_partial, text)


class Chunks:
    """Sends a conversation's chunks: `$/progress` on the request's partial-result token, else
    `mellum/chatChunk` notifications. Pieces of one kind are gathered for `interval_s` (a token
    per notification would flood the client); `flush()` sends what is left."""

    def __init__(
        self, ls: MellumServer, conversation_id: str, token: Any = None, interval_s: float = 0.03
    ) -> None:
        self.ls, self.conversation_id, self.token, self.interval_s = ls, conversation_id, token, interval_s
        self.sent = 0
        self._kind: str | None = None
        self._parts: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, kind: str, text: str) -> None:
        if not text:
            return
        if kind != self._kind:
            self.flush()
            self._kind = kind
        self._parts.append(text)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval_s, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._parts or self._kind is None:
            return
        value = {"conversationId": self.conversation_id, "kind": self._kind, "text": "".join(self._parts)}
        self._parts = []
        if self.token is not None:
            self.ls.protocol.notify(types.PROGRESS, types.ProgressParams(token=self.token, value=value))
        else:
            self.ls.protocol.notify("mellum/chatChunk", value)
        self.sent += 1


def refresh(ls: MellumServer, conversation: Conversation) -> None:
    """Ask the client to re-read the conversation's transcript, when it reads transcripts at all."""
    if ls.capability("workspace.text_document_content") is None:
        return
    ls.spawn(
        ls.workspace_text_document_content_refresh_async(
            types.TextDocumentContentRefreshParams(uri=conversation.uri)
        )
    )


# ---- params ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatRequest:
    message: str
    conversation_id: str | None = None
    uri: str | None = None
    range: dict | None = None
    token: Any = None


def _str(params: dict, name: str, method: str, required: bool = False) -> str | None:
    value = params.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise JsonRpcInvalidParams(f"{method}: {name} must be a non-empty string, got {value!r:.80}")
    return value


def parse_context(params: dict, method: str) -> tuple[str | None, dict | None]:
    """(uri, range) of a request's `context`."""
    context = params.get("context")
    if context is None:
        return None, None
    if not isinstance(context, dict):
        raise JsonRpcInvalidParams(f"{method}: context must be an object, got {type(context).__name__}")
    doc = context.get("textDocument")
    uri = doc.get("uri") if isinstance(doc, dict) else None
    if not isinstance(uri, str):
        raise JsonRpcInvalidParams(f"{method}: context.textDocument.uri must be a string")
    rng = context.get("range")
    if rng is not None and not (
        isinstance(rng, dict) and isinstance(rng.get("start"), dict) and isinstance(rng.get("end"), dict)
    ):
        raise JsonRpcInvalidParams(f"{method}: context.range must be an LSP Range, got {rng!r:.80}")
    return uri, rng


def parse_chat(params: Any) -> ChatRequest:
    p = plain(params)
    if not isinstance(p, dict):
        raise JsonRpcInvalidParams("mellum/chat: params must be an object")
    uri, rng = parse_context(p, "mellum/chat")
    token = p.get("partialResultToken")
    if token is not None and not isinstance(token, str | int):
        raise JsonRpcInvalidParams("mellum/chat: partialResultToken must be a string or an integer")
    return ChatRequest(
        message=_str(p, "message", "mellum/chat", required=True),  # type: ignore[arg-type]
        conversation_id=_str(p, "conversationId", "mellum/chat"),
        uri=uri,
        range=rng,
        token=token,
    )


# ---- context -------------------------------------------------------------------------------
def open_document(ls: MellumServer, path: str) -> Document | None:
    """The editor's open document for a file path (compared by real path)."""
    real = os.path.realpath(path)
    for doc in ls.docs:
        doc_path = uri_to_path(doc.uri)
        if doc_path is not None and os.path.realpath(doc_path) == real:
            return doc
    return None


def _position(p: dict) -> types.Position:
    line, character = p.get("line"), p.get("character")
    if not isinstance(line, int) or not isinstance(character, int):
        raise JsonRpcInvalidParams(f"a position needs integer line and character, got {p!r:.80}")
    return types.Position(line=line, character=character)


def document_for(ls: MellumServer, uri: str) -> tuple[str, str | None, str | None, Document]:
    """(text, path, language, document) of a context's document: open in the editor, else on disk."""
    path = uri_to_path(uri)
    if uri in ls.docs:
        doc = ls.docs.get(uri)
    else:
        text = read_source(path) if path is not None else None
        if text is None:
            raise JsonRpcInvalidParams(f"context.textDocument {uri} is neither open nor a readable text file")
        doc = Document(uri, text, encoding=ls.docs.encoding)
    language = normalize_language(doc.language_id) or (language_for_path(path, doc.text) if path else None)
    return doc.text, path, language, doc


def selection_of(doc: Document, rng: dict | None) -> tuple[int, int] | None:
    if rng is None:
        return None
    try:
        start = doc.offset_at(_position(rng["start"]), strict=False)
        end = doc.offset_at(_position(rng["end"]), strict=False)
    except DocumentError as e:
        raise JsonRpcInvalidParams(f"context.range: {e}") from None
    return (min(start, end), max(start, end))


def shown_path(ls: MellumServer, path: str | None, uri: str) -> str:
    root = ls.workspace_ctx.root_for(path)
    rel = root.relpath(path) if root is not None and path is not None else None
    return rel or path or uri


async def chat_context(ls: MellumServer, uri: str, rng: dict | None, budget: int) -> ChatContext:
    text, path, language, doc = document_for(ls, uri)
    selection = selection_of(doc, rng)
    related: tuple[tuple[str, str], ...] = ()
    if path is not None and ls.settings.context.enabled and budget > 0:
        offset = selection[0] if selection else 0
        chunks = await ls.workspace_ctx.chunks(path, text, offset, budget // 3)
        related = tuple((c.path, c.text) for c in chunks if c.kind != "file")
    return ChatContext(shown_path(ls, path, uri), language, text, selection, related)


# ---- handlers ------------------------------------------------------------------------------
async def engine_session(ls: MellumServer) -> EngineSession:
    try:
        return await ls.engines.get()
    except EngineUnavailable as e:
        raise failed(str(e)) from None


async def chat(ls: MellumServer, params: Any) -> dict:
    req = parse_chat(params)
    try:
        conversation = conversations(ls).get_or_new(req.conversation_id, "chat")
    except ConversationError as e:
        raise JsonRpcInvalidParams(f"mellum/chat: {e}") from None
    session = await engine_session(ls)
    s = ls.settings.chat
    chunks = Chunks(ls, conversation.id, req.token)
    async with conversation.lock:
        try:
            context, about = "", None
            if req.uri is not None:
                budget = context_budget(
                    conversation.messages, session.context_length, s.max_tokens, s.context_tokens
                )
                ctx = await chat_context(ls, req.uri, req.range, budget)
                context, about = context_text(ctx, budget), ctx.describe()
            turn = await chat_turn(
                SessionEngine(session), conversation, req.message, context=context, about=about,
                max_tokens=s.max_tokens, temperature=s.temperature, context_length=session.context_length,
                emit=chunks,
            )  # fmt: skip
        except EngineUnavailable as e:
            raise failed(str(e)) from None
        except EngineError as e:
            raise failed(f"the engine could not answer: {e.message}") from None
        finally:
            chunks.flush()
            refresh(ls, conversation)
    cache = turn.result.get("cache") or {}
    out = {
        "conversationId": conversation.id,
        "answer": turn.answer,
        "transcript": conversation.uri,
        "usage": {
            "promptTokens": cache.get("prompt_tokens"),
            "reusedTokens": cache.get("reused_tokens"),
            "answerTokens": turn.result.get("tokens"),
            "finishReason": turn.result.get("finish_reason"),
        },
    }
    if turn.reasoning:
        out["reasoning"] = turn.reasoning
    return out


def reset(ls: MellumServer, params: Any) -> dict:
    p = plain(params)
    cid = p.get("conversationId") if isinstance(p, dict) else None
    if not isinstance(cid, str):
        raise JsonRpcInvalidParams("mellum/chat/reset: conversationId must be a string")
    return {"reset": conversations(ls).reset(cid)}


def text_document_content(ls: MellumServer, params: types.TextDocumentContentParams):
    cid = id_of_uri(params.uri)
    if cid is None:
        raise JsonRpcInvalidParams(
            f"workspace/textDocumentContent: {params.uri} is not a {SCHEME}: transcript"
        )
    try:
        conversation = conversations(ls).get(cid)
    except ConversationError as e:
        raise failed(str(e)) from None
    return types.TextDocumentContentResult(text=render(conversation))


EXPLAIN_COMMAND = "mellum.explain"  # the code action "Explain with Mellum" (features/code_actions.py)
EXPLAIN = "Explain what this code does, briefly, and point out anything that looks wrong."


async def explain(ls: MellumServer, *args: Any) -> dict:
    """`mellum.explain {textDocument, range}`: a new chat about the selection; the answer streams as
    `mellum/chatChunk` and the transcript is `mellum-chat:/<id>.md`."""
    arg = plain(args[0]) if args else None
    doc = arg.get("textDocument") if isinstance(arg, dict) else None
    if not isinstance(doc, dict) or not isinstance(doc.get("uri"), str):
        raise JsonRpcInvalidParams(f"{EXPLAIN_COMMAND}: needs {{textDocument: {{uri}}, range}}")
    return await chat(ls, {"message": EXPLAIN, "context": {"textDocument": doc, "range": arg.get("range")}})


def register(server: MellumServer) -> None:
    server.command(EXPLAIN_COMMAND)(explain)
    server.feature("mellum/chat")(chat)
    server.feature("mellum/chat/reset")(reset)
    server.feature(types.WORKSPACE_TEXT_DOCUMENT_CONTENT, types.TextDocumentContentOptions(schemes=SCHEMES))(
        text_document_content
    )
