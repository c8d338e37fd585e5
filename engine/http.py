"""OpenAI-compatible HTTP/1.1 front end of the engine, on asyncio streams.

Routes: ``GET /health``; ``GET /v1/models`` (one model); ``POST /v1/completions`` (FIM with
``suffix``) and ``POST /v1/chat/completions`` (tools, tool_choice, response_format), their bodies
read by ``engine.openai``. ``stream: true`` answers with server-sent events in chunked encoding,
ending in ``data: [DONE]``; a chat stream carries ``reasoning_content`` deltas for a Thinking
model's trace and the ``tool_calls`` once they are parsed.

Errors are OpenAI-shaped, ``{"error": {"message", "type", "code"}}``. Connections stay open
between requests (HTTP/1.1 keep-alive) unless the client sends ``Connection: close``; a client
that goes away mid-request cancels its job. With a token, ``/v1/*`` needs
``Authorization: Bearer <token>`` (``/health`` stays open, as in vLLM). Offers
``start_http_server``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from .openai import (
    HttpError,
    chat_message,
    chat_request,
    completion_request,
    finish_reason,
    from_protocol,
    usage,
)

log = logging.getLogger("engine.http")

MAX_BODY = 8 * 2**20  # bytes of a request body
MAX_HEAD = 64 * 2**10  # bytes of a request line plus headers
IDLE_TIMEOUT = 75.0  # seconds a kept-alive connection may wait for its next request
LINGER_S = 2.0  # seconds a refused request's connection keeps reading before it closes
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


def _count(text: str) -> int | None:
    """A Content-Length value as a number; None unless it is ASCII digits ("²".isdigit() is true)."""
    return int(text) if text.isascii() and text.isdigit() else None


# ---- the connection ------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        return self.version == "HTTP/1.1" and "close" not in tokens


class ClientGone(Exception):
    """The client closed its connection while its request was running."""


class _Conn:
    """One client connection: a byte buffer over the stream, so a disconnect can be watched for
    while a job runs without losing a request the client pipelined."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = bytearray()
        self.refused = False  # an error was answered and the connection is to close: linger

    async def linger(self, seconds: float = LINGER_S, limit: int = MAX_BODY) -> None:
        """After an error answer that ends the connection, the client may still be sending its
        request: stop writing, then read and drop what comes for a moment. Closing with unread
        bytes would reset the connection, and a reset can destroy the answer before the client
        reads it (the lingering close of nginx and Apache)."""
        loop = asyncio.get_running_loop()
        deadline, dropped = loop.time() + seconds, 0
        with contextlib.suppress(Exception):
            if self.writer.can_write_eof():
                self.writer.write_eof()
            while dropped < limit and (left := deadline - loop.time()) > 0:
                data = await asyncio.wait_for(self.reader.read(65536), left)
                if not data:
                    return
                dropped += len(data)

    async def _fill(self) -> bool:
        data = await self.reader.read(65536)
        self.buf += data
        return bool(data)

    async def read_head(self) -> bytes | None:
        """The request line and headers, or None when the client closed between requests."""
        while True:
            while self.buf.startswith(b"\r\n"):  # stray line ends between requests are allowed
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise HttpError(431, f"request head is over {MAX_HEAD} bytes", "head_too_large", close=True)
            if not await self._fill():
                return None

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill():
                raise ClientGone
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    async def read_line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > MAX_HEAD:
                raise HttpError(400, "chunk header line is too long", "bad_chunk", close=True)
            if not await self._fill():
                raise ClientGone
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    async def wait_closed(self) -> None:
        """Return when the client closes; bytes it sends meanwhile (a pipelined request) are kept."""
        while len(self.buf) <= MAX_HEAD + MAX_BODY:
            if not await self._fill():
                return
        await asyncio.Event().wait()  # too much pipelined: stop reading, wait to be cancelled

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


def _parse_head(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"malformed request line {lines[0][:100]!r}", "bad_request", close=True)
    method, target, version = parts
    path = target.split("?", 1)[0]
    if "://" in path:  # absolute form
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    req = Request(method, path, version)
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(400, f"malformed header line {line[:100]!r}", "bad_request", close=True)
        name = name.lower()
        value = value.strip()
        if name in req.headers:
            if name == "content-length" and req.headers[name] != value:
                raise HttpError(400, "conflicting Content-Length headers", "bad_request", close=True)
            value = req.headers[name] if name == "content-length" else f"{req.headers[name]}, {value}"
        req.headers[name] = value
    return req


async def _read_body(conn: _Conn, req: Request) -> bytes:
    """The body by Content-Length or chunked coding; 413 over ``MAX_BODY`` (the connection then closes)."""
    coding = req.headers.get("transfer-encoding", "").lower()
    if coding and coding != "chunked":
        raise HttpError(501, f"Transfer-Encoding {coding!r} is not supported; expected chunked", close=True)
    length = req.headers.get("content-length", "0" if not coding else "")
    size = _count(length)
    if not coding and size is None:
        raise HttpError(400, f"Content-Length {length[:40]!r} is not a number", "bad_request", close=True)
    if not coding and size > MAX_BODY:
        raise HttpError(
            413, f"request body is {length} bytes; the limit is {MAX_BODY}", "body_too_large", close=True
        )
    if req.headers.get("expect", "").lower() == "100-continue":
        await conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    if not coding:
        return await conn.read_exactly(size)
    body = bytearray()
    while True:
        size_text = (await conn.read_line()).split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text):  # int(x, 16) would take "-1", "0x5" and "1_0"
            raise HttpError(400, f"malformed chunk size {size_text[:20]!r}", "bad_chunk", close=True)
        size = int(size_text, 16)
        if size == 0:
            while await conn.read_line():  # trailers
                pass
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise HttpError(
                413, f"request body is over the limit of {MAX_BODY} bytes", "body_too_large", close=True
            )
        body += await conn.read_exactly(size)
        if await conn.read_exactly(2) != b"\r\n":
            raise HttpError(400, "chunk data is not followed by CRLF", "bad_chunk", close=True)


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "Server: mellum-lsp"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send_json(conn: _Conn, status: int, obj: Any, keep: bool, extra: dict | None = None) -> None:
    body = json.dumps(obj).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body)),
               "Connection": "keep-alive" if keep else "close", **(extra or {})}  # fmt: skip
    await conn.write(_head(status, headers) + body)


def _sse(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


# ---- the server ----------------------------------------------------------------------------------


class HttpServer:
    """Serves the OpenAI routes over one ``Dispatcher`` (its engine, scheduler and activity clock)."""

    def __init__(self, dispatcher: Any, token: str | None = None) -> None:
        self.d, self.token = dispatcher, token
        self.routes = {
            "/health": {"GET": self.health},
            "/v1/models": {"GET": self.models},
            "/v1/completions": {"POST": self.completions},
            "/v1/chat/completions": {"POST": self.chat},
        }

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        self.d.connections += 1
        try:
            while True:
                try:
                    head = await asyncio.wait_for(conn.read_head(), IDLE_TIMEOUT)
                    if head is None:
                        break
                    req = _parse_head(head)
                    self.d.last_activity = time.monotonic()
                    keep = await self.handle(conn, req)
                except HttpError as e:
                    await self.send_error(conn, e, keep=False)
                    break
                if not keep:
                    break
        except (ClientGone, ConnectionError, asyncio.TimeoutError):
            pass
        except Exception as e:  # a failure of ours: answered, never a connection dropped in silence
            log.exception("HTTP request failed")
            await self.send_error(
                conn, HttpError(500, f"internal error: {type(e).__name__}: {e}", "internal"), False
            )
        finally:
            if conn.refused:
                await conn.linger()
            self.d.connections -= 1
            self.d.last_activity = time.monotonic()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def handle(self, conn: _Conn, req: Request) -> bool:
        """Answer one request; whether the connection may carry another."""
        has_body = "transfer-encoding" in req.headers or req.headers.get("content-length", "0") != "0"
        try:
            if self.token is not None and req.path.startswith("/v1/"):
                self._authorize(req)
            methods = self.routes.get(req.path)
            if methods is None:
                raise HttpError(
                    404, f"no route {req.path}; expected one of {sorted(self.routes)}", "not_found"
                )
            handler = methods.get(req.method)
            if handler is None:
                allow = ", ".join(methods)
                raise HttpError(405, f"{req.path} takes {allow}, not {req.method}", "method_not_allowed",
                                headers={"Allow": allow})  # fmt: skip
            if req.method == "POST":
                req.body = await asyncio.wait_for(_read_body(conn, req), IDLE_TIMEOUT)
                has_body = False
            elif has_body:  # a body where none is expected: not worth reading
                raise HttpError(400, f"{req.method} {req.path} takes no body", "bad_request")
            return await handler(conn, req)
        except HttpError as e:
            keep = req.keep_alive and not e.close
            if keep and has_body:  # refused before its body was read: skip a small one, else close
                length = _count(req.headers.get("content-length", ""))
                keep = "transfer-encoding" not in req.headers and length is not None and length <= MAX_HEAD
                if keep:
                    await asyncio.wait_for(conn.read_exactly(length), IDLE_TIMEOUT)
            await self.send_error(conn, e, keep=keep)
            return keep

    def _authorize(self, req: Request) -> None:
        scheme, _, given = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            message = "missing or wrong bearer token; send Authorization: Bearer <token>"
            raise HttpError(401, message, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    # ---- answers ------------------------------------------------------------------------------
    async def send_error(self, conn: _Conn, e: HttpError, keep: bool) -> None:
        conn.refused = conn.refused or not keep
        with contextlib.suppress(ConnectionError):
            await _send_json(conn, e.status, e.body(), keep, e.headers)

    def _model_id(self) -> str:
        return self.d.engine.handshake().get("model_id") or "mellum"

    async def health(self, conn: _Conn, req: Request) -> bool:
        if self.d.stop.is_set():
            raise HttpError(503, "the engine is shutting down", "unavailable")
        await _send_json(conn, 200, {"status": "ok"}, req.keep_alive)
        return req.keep_alive

    async def models(self, conn: _Conn, req: Request) -> bool:
        hs = self.d.engine.handshake()
        model = {"id": hs.get("model_id") or "mellum", "object": "model", "created": int(time.time()),
                 "owned_by": "mellum-lsp", "max_model_len": hs.get("context_length")}  # fmt: skip
        await _send_json(conn, 200, {"object": "list", "data": [model]}, req.keep_alive)
        return req.keep_alive

    @staticmethod
    def _json_body(req: Request) -> dict:
        try:
            body = json.loads(req.body)
        except (ValueError, RecursionError) as e:
            reason = "it is nested too deeply" if isinstance(e, RecursionError) else e
            raise HttpError(400, f"the request body is not valid JSON: {reason}", "invalid_json") from None
        if not isinstance(body, dict):
            raise HttpError(
                400, f"the request body must be a JSON object, got {type(body).__name__}", "invalid_json"
            )
        return body

    async def completions(self, conn: _Conn, req: Request) -> bool:
        body = self._json_body(req)
        method, params = completion_request(body)
        return await self._answer(conn, req, body, method, params, chat=False)

    async def chat(self, conn: _Conn, req: Request) -> bool:
        body = self._json_body(req)
        method, params = chat_request(body)
        return await self._answer(conn, req, body, method, params, chat=True)

    async def _answer(
        self, conn: _Conn, req: Request, body: dict, method: str, params: Any, chat: bool
    ) -> bool:
        answer = _Answer(conn, req, self._model_id(), chat, params.sampling, body)
        loop = asyncio.get_running_loop()
        job, queue = self.d.start_job(
            method, params, answer.partial if params.sampling.stream else None, loop
        )
        watch = asyncio.ensure_future(conn.wait_closed())
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait({get, watch}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    raise ClientGone
                kind, payload = get.result()
                if kind == "partial":
                    await answer.partial(payload)
                    continue
                result, error = payload
                break
        except (asyncio.CancelledError, ClientGone, ConnectionError):
            self.d.scheduler.cancel(job, "cancelled")
            raise
        finally:
            watch.cancel()
            self.d.last_activity = time.monotonic()
        if error is not None:
            return await answer.fail(from_protocol(error))
        return await answer.finish(result)


class _Answer:
    """One response to a completion: JSON, or SSE chunks once streaming has begun."""

    def __init__(self, conn: _Conn, req: Request, model: str, chat: bool, sampling: Any, body: dict) -> None:
        self.conn, self.req, self.model, self.chat = conn, req, model, chat
        self.stream = sampling.stream
        # Hold back what a stop string could still cut (the engine trims the text it has streamed).
        self.holdback = max((len(s) for s in sampling.stop), default=1) - 1
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.got, self.sent, self.started = "", 0, False
        self.chunked = req.version == "HTTP/1.1"  # HTTP/1.0 clients read the stream until close

    def _frame(self, data: bytes, last: bool = False) -> bytes:
        """``data`` as one chunk of the chunked body (and its end when ``last``)."""
        if not self.chunked:
            return data
        chunk = f"{len(data):X}\r\n".encode() + data + b"\r\n" if data else b""
        return chunk + (b"0\r\n\r\n" if last else b"")

    def _chunk(
        self, text: str | None, finish: str | None, role: bool = False, delta: dict | None = None
    ) -> dict:
        if self.chat:
            if delta is None:
                delta = (
                    {"role": "assistant", "content": ""}
                    if role
                    else ({} if text is None else {"content": text})
                )
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            kind = "text_completion"
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    async def _start(self) -> None:
        if self.started:
            return
        self.started = True
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                   "Connection": "keep-alive" if self.req.keep_alive else "close"}  # fmt: skip
        if self.chunked:
            headers["Transfer-Encoding"] = "chunked"
        first = _sse(self._chunk(None, None, role=True)) if self.chat else b""
        await self.conn.write(_head(200, headers) + self._frame(first))

    async def partial(self, partial: dict) -> None:
        if partial.get("reasoning") and self.chat:
            await self._start()
            delta = {"reasoning_content": partial["reasoning"]}
            await self.conn.write(self._frame(_sse(self._chunk(None, None, delta=delta))))
        self.got += partial.get("text", "")
        upto = len(self.got) - self.holdback
        if upto > self.sent:
            await self._start()
            await self.conn.write(self._frame(_sse(self._chunk(self.got[self.sent : upto], None))))
            self.sent = upto

    async def fail(self, e: HttpError) -> bool:
        if not self.started:
            await _send_json(self.conn, e.status, e.body(), self.req.keep_alive)
            return self.req.keep_alive
        await self.conn.write(self._frame(_sse(e.body()) + _sse(b"[DONE]"), last=True))
        return self.req.keep_alive

    async def finish(self, result: dict) -> bool:
        text, finish, counts = result["text"], finish_reason(result), usage(result)
        keep = self.req.keep_alive
        if not self.stream:
            if self.chat:
                choice = {"index": 0, "message": chat_message(result), "finish_reason": finish}
                kind = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                kind = "text_completion"
            obj = {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                   "choices": [choice], "usage": counts}  # fmt: skip
            await _send_json(self.conn, 200, obj, keep)
            return keep
        await self._start()
        sent_text = self.got[: self.sent]
        rest = text[len(sent_text) :] if text.startswith(sent_text) else ""
        out = _sse(self._chunk(rest, None)) if rest else b""
        if self.chat and result.get("tool_calls"):
            calls = [dict(c, index=i) for i, c in enumerate(result["tool_calls"])]
            out += _sse(self._chunk(None, None, delta={"tool_calls": calls}))
        out += _sse(self._chunk(None, finish))
        if self.include_usage:
            out += _sse({"id": self.id, "object": self._chunk(None, None)["object"], "created": self.created,
                         "model": self.model, "choices": [], "usage": counts})  # fmt: skip
        await self.conn.write(self._frame(out + _sse(b"[DONE]"), last=True))
        return keep


async def start_http_server(
    dispatcher: Any, host: str = "127.0.0.1", port: int = 8080, token: str | None = None
) -> asyncio.AbstractServer:
    """Serve the OpenAI-compatible routes for ``dispatcher`` on host:port (port 0: any free port)."""
    server = HttpServer(dispatcher, token=token or None)
    return await asyncio.start_server(server.serve, host.strip("[]"), port)  # "[::1]" from --http
