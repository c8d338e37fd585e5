"""The engine's RPC protocol: methods, typed parameters with validation, results and error codes.

Pure Python (no torch, no numpy): the language server imports it to talk to the engine.

Frames are length-prefixed msgpack maps (see ``engine.rpc``). A request is
``{id, method, params}``; the engine answers with any number of ``{id, partial}`` messages and
then exactly one ``{id, result}`` or ``{id, error: {code, message}}``. A request without ``id``
is a notification and gets no answer.

Methods: ``handshake``, ``complete`` (FIM), ``generate`` (raw prompt or chat), ``chat`` (a
conversation with the chat model: tools, tool calls, constrained output, reasoning as its own
channel), ``prefill`` (warm the cache, no output), ``cancel``, ``stats``, ``shutdown``.

The engine remembers what a client sent so that a keystroke costs O(change) on the wire: context
chunks by ``key`` (send the text once), a list of chunks by ``context_ref`` (send the list once:
with it a request lists the ref and no chunks) and each document's text by ``version`` — a ``complete``
or ``prefill`` may give ``doc`` (the document's text in full, or as one edit of a version the
engine holds) and the cursor ``offset`` in place of ``prefix``/``suffix``. When the engine does not
hold what a request refers to (after a restart, or an eviction) it answers UNKNOWN_CONTEXT_KEY or
UNKNOWN_DOCUMENT and the client sends the text again: error codes decide retries, never messages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any

PROTOCOL_VERSION = 1
METHODS = ("handshake", "complete", "generate", "chat", "prefill", "cancel", "stats", "shutdown")
MAX_MESSAGES = 512
MAX_TOOLS = 128


class ErrorCode:
    PARSE_ERROR = -32700  # the frame is not msgpack, or too large
    INVALID_REQUEST = -32600  # not a map with id/method/params of the right types
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL = -32603
    CANCELLED = -32800  # cancelled by the client or by its disconnect
    SUPERSEDED = -32801  # a newer request for the same document replaced it
    UNAVAILABLE = -32803  # the engine is shutting down or its backend failed
    UNKNOWN_CONTEXT_KEY = -32804  # a context chunk was sent by key and the engine does not hold its text
    UNKNOWN_DOCUMENT = -32805  # a document edit refers to a version the engine does not hold


class ProtocolError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


def _check(value: Any, kind: type | tuple[type, ...], name: str, method: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and kind in (int, float):
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: {name} must be a number, got a boolean")
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS, f"{method}: {name} must be {want}, got {type(value).__name__}"
        )
    return value


@dataclass(frozen=True)
class ContextChunk:
    """A repository snippet placed before the FIM part. ``text`` may be omitted when ``key`` was
    sent with text before on this connection's engine: the engine keeps chunks by key."""

    path: str
    text: str | None = None
    key: str | None = None


def chunk_key(chunk: ContextChunk) -> str:
    """The chunk's key: the one given, or a digest of its path and text."""
    if chunk.key is not None:
        return chunk.key
    return hashlib.sha1(f"{chunk.path}\0{chunk.text}".encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class DocumentText:
    """A document's text as of ``version``: in full (``text``), or as the edit ``(start, end,
    text)`` (code-point offsets) of version ``base``'s text, which the engine holds."""

    version: int
    text: str | None = None
    base: int | None = None
    edit: tuple[int, int, str] | None = None


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    deadline_ms: float | None = None
    stream: bool = True


@dataclass(frozen=True)
class CompleteParams:
    prefix: str
    suffix: str = ""
    context: tuple[ContextChunk, ...] = ()  # or, once sent, the same list by ``context_ref``
    path: str | None = None  # the current file's workspace-relative path, shown to the model
    document: str | None = None  # a stable id (the URI): requests for it supersede each other
    sampling: Sampling = field(default_factory=Sampling)
    delay_ms: float = 0.0  # the client's debounce: wait this long unless a newer request comes
    typed_ahead: bool = True  # may be answered from the last suggestion the user is typing along
    context_ref: str | None = None  # a context list sent before with this ref (engine.inputs)
    doc: DocumentText | None = None  # in place of prefix/suffix, with ``offset``
    offset: int | None = None


@dataclass(frozen=True)
class GenerateParams:
    prompt: str | None = None
    messages: tuple[dict[str, str], ...] = ()
    document: str | None = None
    sampling: Sampling = field(default_factory=Sampling)


@dataclass(frozen=True)
class ChatParams:
    """A chat turn: OpenAI-shaped ``messages`` (system/user/assistant/tool; assistant messages may
    carry ``tool_calls`` and ``reasoning_content``), ``tools`` and ``tool_choice``, an output
    constraint (``response_format`` or a Lark ``grammar``), and ``conversation``: an id whose
    previous turn's KV cache the next turn reuses. The chat path checks the deep structure."""

    messages: tuple[dict, ...]
    tools: tuple[dict, ...] = ()
    tool_choice: Any = None
    response_format: dict | None = None
    grammar: str | None = None
    conversation: str | None = None
    sampling: Sampling = field(default_factory=Sampling)

    @property
    def document(self) -> str | None:
        """The prefix-cache key of the conversation (never superseded by completions)."""
        return None if self.conversation is None else f"chat:{self.conversation}"


@dataclass(frozen=True)
class PrefillParams:
    prefix: str = ""
    suffix: str = ""
    context: tuple[ContextChunk, ...] = ()
    path: str | None = None
    document: str | None = None
    doc: DocumentText | None = None
    offset: int | None = None
    context_ref: str | None = None


@dataclass(frozen=True)
class CancelParams:
    id: int | str | None = None
    document: str | None = None


_SAMPLING_FIELDS = {f.name for f in fields(Sampling)}
_FIM_FIELDS = {"prefix", "suffix", "context", "context_ref", "path", "document", "doc", "offset"}


def _sampling(p: dict[str, Any], method: str) -> Sampling:
    kw: dict[str, Any] = {}
    if "max_tokens" in p:
        kw["max_tokens"] = _check(p["max_tokens"], int, "max_tokens", method)
        if not 0 <= kw["max_tokens"] <= 8192:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: max_tokens must be in 0..8192")
    if "temperature" in p:
        kw["temperature"] = _check(p["temperature"], float, "temperature", method)
        if not 0 <= kw["temperature"] <= 10:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: temperature must be in 0..10")
    if "top_p" in p:
        kw["top_p"] = _check(p["top_p"], float, "top_p", method)
        if not 0 < kw["top_p"] <= 1:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: top_p must be in (0, 1]")
    if "stop" in p:
        stop = _check(p["stop"], (list, tuple, str), "stop", method)
        stop = [stop] if isinstance(stop, str) else stop
        for s in stop:
            _check(s, str, "stop[]", method)
        if any(not s for s in stop):
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: stop strings must be non-empty")
        kw["stop"] = tuple(stop)
    if p.get("deadline_ms") is not None:
        kw["deadline_ms"] = _check(p["deadline_ms"], float, "deadline_ms", method)
        if kw["deadline_ms"] <= 0:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: deadline_ms must be > 0")
    if "stream" in p:
        kw["stream"] = _check(p["stream"], bool, "stream", method)
    return Sampling(**kw)


def _context(p: dict[str, Any], method: str) -> tuple[ContextChunk, ...]:
    raw = _check(p.get("context", []), (list, tuple), "context", method)
    out = []
    for i, c in enumerate(raw):
        _check(c, dict, f"context[{i}]", method)
        path = _check(c.get("path"), str, f"context[{i}].path", method)
        text = c.get("text")
        key = c.get("key")
        if text is not None:
            _check(text, str, f"context[{i}].text", method)
        if key is not None:
            _check(key, str, f"context[{i}].key", method)
        if text is None and key is None:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: context[{i}] needs text or key")
        out.append(ContextChunk(path, text, key))
    return tuple(out)


MAX_DELAY_MS = 5000.0


def _chat(p: dict[str, Any], method: str) -> ChatParams:
    fields_ = {"messages", "tools", "tool_choice", "response_format", "grammar", "conversation"}
    _no_unknown(p, fields_ | _SAMPLING_FIELDS, method)
    messages = _check(p.get("messages"), (list, tuple), "messages", method)
    if not messages or len(messages) > MAX_MESSAGES:
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS, f"{method}: messages must hold 1..{MAX_MESSAGES} messages"
        )
    for i, m in enumerate(messages):
        _check(m, dict, f"messages[{i}]", method)
        _check(m.get("role"), str, f"messages[{i}].role", method)
    tools = _check(p.get("tools") or [], (list, tuple), "tools", method)
    if len(tools) > MAX_TOOLS:
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS, f"{method}: at most {MAX_TOOLS} tools, got {len(tools)}"
        )
    for i, t in enumerate(tools):
        _check(t, dict, f"tools[{i}]", method)
    if p.get("tool_choice") is not None:
        _check(p["tool_choice"], (str, dict), "tool_choice", method)
    if p.get("response_format") is not None:
        _check(p["response_format"], dict, "response_format", method)
    grammar = _opt_str(p, "grammar", method)
    if grammar is not None and p.get("response_format") is not None:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: give response_format or grammar, not both")
    return ChatParams(
        messages=tuple(dict(m) for m in messages),
        tools=tuple(dict(t) for t in tools),
        tool_choice=p.get("tool_choice"),
        response_format=p.get("response_format"),
        grammar=grammar,
        conversation=_opt_str(p, "conversation", method),
        sampling=_sampling(p, method),
    )


def _doc(p: dict[str, Any], method: str) -> tuple[DocumentText | None, int | None]:
    """``doc`` and ``offset``; a request gives them or ``prefix``/``suffix``, not both."""
    if p.get("doc") is None:
        if p.get("offset") is not None:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: offset needs doc")
        return None, None
    if "prefix" in p or "suffix" in p:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: give doc and offset, or prefix and suffix")
    if p.get("document") is None:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: doc needs document (its id)")
    d = _check(p["doc"], dict, "doc", method)
    _no_unknown(d, {"version", "text", "base", "edit"}, f"{method} doc")
    version = _check(d.get("version"), int, "doc.version", method)
    offset = _check(p.get("offset"), int, "offset", method)
    if offset < 0:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: offset must be >= 0, got {offset}")
    if d.get("text") is not None:
        if d.get("base") is not None or d.get("edit") is not None:
            raise ProtocolError(
                ErrorCode.INVALID_PARAMS, f"{method}: doc has text, or base and edit, not both"
            )
        return DocumentText(version, _check(d["text"], str, "doc.text", method)), offset
    base = _check(d.get("base"), int, "doc.base", method)
    edit = None
    if d.get("edit") is not None:
        e = _check(d["edit"], (list, tuple), "doc.edit", method)
        if len(e) != 3:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: doc.edit must be [start, end, text]")
        start = _check(e[0], int, "doc.edit[0]", method)
        end = _check(e[1], int, "doc.edit[1]", method)
        if not 0 <= start <= end:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: doc.edit needs 0 <= start <= end")
        edit = (start, end, _check(e[2], str, "doc.edit[2]", method))
    return DocumentText(version, None, base, edit), offset


def _opt_str(p: dict[str, Any], name: str, method: str) -> str | None:
    v = p.get(name)
    return None if v is None else _check(v, str, name, method)


def _no_unknown(p: dict[str, Any], allowed: set[str], method: str) -> None:
    unknown = sorted(set(p) - allowed)
    if unknown:
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS,
            f"{method}: unknown parameter(s) {unknown}; expected some of {sorted(allowed)}",
        )


def parse_params(method: str, params: Any) -> Any:
    """Validate ``params`` of ``method``; raises ProtocolError naming the bad field."""
    if method not in METHODS:
        raise ProtocolError(
            ErrorCode.METHOD_NOT_FOUND, f"unknown method {method!r}; expected one of {METHODS}"
        )
    params = {} if params is None else params
    _check(params, dict, "params", method)
    if method == "complete":
        _no_unknown(params, _FIM_FIELDS | {"delay_ms", "typed_ahead"} | _SAMPLING_FIELDS, method)
        doc, offset = _doc(params, method)
        delay = _check(params.get("delay_ms", 0.0), float, "delay_ms", method)
        if not 0 <= delay <= MAX_DELAY_MS:
            raise ProtocolError(
                ErrorCode.INVALID_PARAMS, f"{method}: delay_ms must be in 0..{MAX_DELAY_MS:g}"
            )
        return CompleteParams(
            prefix="" if doc else _check(params.get("prefix"), str, "prefix", method),
            suffix="" if doc else _check(params.get("suffix", ""), str, "suffix", method),
            context=_context(params, method),
            path=_opt_str(params, "path", method),
            document=_opt_str(params, "document", method),
            sampling=_sampling(params, method),
            delay_ms=delay,
            typed_ahead=_check(params.get("typed_ahead", True), bool, "typed_ahead", method),
            doc=doc,
            offset=offset,
            context_ref=_opt_str(params, "context_ref", method),
        )
    if method == "generate":
        _no_unknown(params, {"prompt", "messages", "document"} | _SAMPLING_FIELDS, method)
        prompt = _opt_str(params, "prompt", method)
        messages = _check(params.get("messages", []), (list, tuple), "messages", method)
        for i, m in enumerate(messages):
            _check(m, dict, f"messages[{i}]", method)
            _check(m.get("role"), str, f"messages[{i}].role", method)
            _check(m.get("content"), str, f"messages[{i}].content", method)
        if (prompt is None) == (not messages):
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: give exactly one of prompt or messages")
        return GenerateParams(
            prompt,
            tuple(dict(m) for m in messages),
            _opt_str(params, "document", method),
            _sampling(params, method),
        )
    if method == "chat":
        return _chat(params, method)
    if method == "prefill":
        _no_unknown(params, _FIM_FIELDS, method)
        doc, offset = _doc(params, method)
        return PrefillParams(
            prefix=_check(params.get("prefix", ""), str, "prefix", method),
            suffix=_check(params.get("suffix", ""), str, "suffix", method),
            context=_context(params, method),
            path=_opt_str(params, "path", method),
            document=_opt_str(params, "document", method),
            doc=doc,
            offset=offset,
            context_ref=_opt_str(params, "context_ref", method),
        )
    if method == "cancel":
        _no_unknown(params, {"id", "document"}, method)
        target = params.get("id")
        if target is not None:
            _check(target, (int, str), "id", method)
        document = _opt_str(params, "document", method)
        if target is None and document is None:
            raise ProtocolError(ErrorCode.INVALID_PARAMS, f"{method}: give id or document")
        return CancelParams(target, document)
    _no_unknown(params, set(), method)
    return None
