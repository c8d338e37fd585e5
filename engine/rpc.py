"""msgpack-RPC framing, the engine's server loop and the asyncio client.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack holding one map;
every map in it has string keys. Pure Python + msgpack: the language server imports the client
from here. Every request with an id gets an answer: a frame that cannot be read, an envelope that
is wrong, and an answer too large (or impossible) to encode are answered with errors.

Offers ``encode_frame``, ``read_frame`` (``FrameError`` for a frame that cannot be read),
``Connection`` (one peer, serialised writes), ``serve_connection`` (the server loop of one
connection), ``private_socket_path`` and ``EngineClient`` with ``EngineError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import os
import struct
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack

from .protocol import ErrorCode, ProtocolError

log = logging.getLogger(__name__)

MAX_FRAME = 64 * 1024 * 1024  # a 128K-token prompt is ~0.5 MB of text; this leaves room for context
_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """A frame that cannot be read. ``fatal``: the stream cannot be resynchronised after it."""

    def __init__(self, message: str, fatal: bool) -> None:
        super().__init__(message)
        self.fatal = fatal


def encode_frame(message: dict[str, Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ValueError(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return _HEADER.pack(len(body)) + body


def _string_keys(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if not all(type(k) is str for k in out):
        bad = next(k for k in out if type(k) is not str)
        raise ValueError(f"map keys must be strings, got a {type(bad).__name__} key")
    return out


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        msg = msgpack.unpackb(body, raw=False, strict_map_key=True, object_pairs_hook=_string_keys)
    except Exception as e:  # msgpack raises several types for malformed input
        raise FrameError(f"frame is not valid msgpack: {type(e).__name__}: {e}", fatal=False) from None
    if not isinstance(msg, dict):
        raise FrameError(f"frame must hold a map, got {type(msg).__name__}", fatal=False)
    return msg


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise FrameError("stream ended inside a frame header", fatal=True) from None
        return None
    (n,) = _HEADER.unpack(head)
    if n > MAX_FRAME:
        raise FrameError(f"frame length {n} exceeds the limit of {MAX_FRAME} bytes", fatal=True)
    try:
        body = await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise FrameError(f"stream ended inside a frame of {n} bytes", fatal=True) from None
    return decode_body(body)


def _unsendable(message: dict[str, Any], e: Exception) -> dict[str, Any]:
    """The error that replaces an answer that cannot be encoded: an error keeps its code with its
    message cut short; a result becomes INTERNAL."""
    log.error("could not encode the answer to %r: %s", message.get("id"), e)
    err = message.get("error")
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return {"code": err.get("code", ErrorCode.INTERNAL), "message": err["message"][:1000] + " [cut]"}
    return {"code": ErrorCode.INTERNAL, "message": f"the answer could not be sent: {str(e)[:200]}"}


class Connection:
    """One peer of the engine: serialised writes, and the requests it has in flight."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | Any) -> None:
        self.reader, self.writer = reader, writer
        self._lock = asyncio.Lock()
        self.in_flight: dict[Any, asyncio.Task] = {}
        self.answered: set[Any] = set()  # in-flight requests whose final answer has been written
        self.closed = False

    async def send(self, message: dict[str, Any], settles: bool = True) -> None:
        """Write one message; ``settles``: a final answer for this id is the in-flight request's."""
        if self.closed:
            return
        try:
            data = encode_frame(message)
        except (ValueError, TypeError, OverflowError) as e:  # too large, or not msgpack data
            if "partial" in message or "id" not in message:
                log.error("dropped a message that could not be encoded: %s", e)
                return
            data = encode_frame({"id": message["id"], "error": _unsendable(message, e)})
        async with self._lock:
            try:
                self.writer.write(data)
                if settles and "partial" not in message and message.get("id") in self.in_flight:
                    self.answered.add(message["id"])
                await self.writer.drain()
            except (ConnectionError, RuntimeError, BrokenPipeError):
                self.closed = True

    async def error(self, request_id: Any, code: int, message: str, settles: bool = True) -> None:
        await self.send({"id": request_id, "error": {"code": code, "message": message}}, settles)


Handler = Callable[[Connection, Any, str, Any], Awaitable[None]]


def check_envelope(msg: dict[str, Any]) -> tuple[Any, str, Any]:
    request_id = msg.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, int | str)):
        raise ProtocolError(
            ErrorCode.INVALID_REQUEST, f"id must be an integer or string, got {type(request_id).__name__}"
        )
    method = msg.get("method")
    if not isinstance(method, str):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "request has no method string")
    unknown = sorted(str(k) for k in set(msg) - {"id", "method", "params"})
    if unknown:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"unknown request field(s) {unknown}")
    return request_id, method, msg.get("params")


async def serve_connection(conn: Connection, handle: Handler) -> None:
    """Read requests until the peer goes; each runs as a task. When the stream ends (or breaks at
    a frame that cannot be read), in-flight work is cancelled and answered CANCELLED: a client that
    only closed its sending side still gets an answer to every request."""
    why = "the client closed the connection"
    try:
        while True:
            try:
                msg = await read_frame(conn.reader)
            except FrameError as e:
                await conn.error(None, ErrorCode.PARSE_ERROR, str(e))
                if e.fatal:
                    why = f"the stream cannot be read past a bad frame ({e})"
                    break
                continue
            except (ConnectionError, OSError):
                break
            if msg is None:
                break
            try:
                request_id, method, params = check_envelope(msg)
            except ProtocolError as e:
                rid = msg.get("id")
                await conn.error(rid if isinstance(rid, int | str) and not isinstance(rid, bool) else None,
                                 e.code, e.message)  # fmt: skip
                continue
            if request_id is not None and request_id in conn.in_flight:
                message = f"request id {request_id!r} is already in flight"
                await conn.error(request_id, ErrorCode.INVALID_REQUEST, message, settles=False)
                continue
            task = asyncio.ensure_future(handle(conn, request_id, method, params))
            if request_id is not None:
                conn.in_flight[request_id] = task
                task.add_done_callback(lambda _t, rid=request_id: _forget(conn, rid))
    finally:
        unanswered = [rid for rid in conn.in_flight if rid not in conn.answered]
        for task in list(conn.in_flight.values()):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_cancelled(conn, unanswered, why), 2.0)
        conn.closed = True
        with contextlib.suppress(Exception):
            conn.writer.close()


def _forget(conn: Connection, request_id: Any) -> None:
    conn.in_flight.pop(request_id, None)
    conn.answered.discard(request_id)


async def _cancelled(conn: Connection, request_ids: list[Any], why: str) -> None:
    for request_id in request_ids:
        await conn.error(request_id, ErrorCode.CANCELLED, f"request cancelled: {why}")


def private_socket_path(name: str) -> Path:
    """A socket path in a directory only this user can enter (mode 0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    folder = Path(base) / f"mellum-lsp-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    st = folder.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(
            f"{folder} must be owned by you with mode 0700 (it is {oct(st.st_mode & 0o777)})"
        )
    return folder / f"{name}.sock"


def engine_socket_name(model_dir: str, backend: str) -> str:
    """One shared engine per (model, backend): the socket name encodes both."""
    digest = hashlib.sha256(f"{Path(model_dir).resolve()}|{backend}".encode()).hexdigest()[:12]
    return f"engine-{digest}"


class EngineError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class EngineClient:
    """asyncio client of one engine connection; requests may stream partial results."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future, Callable[[Any], None] | None]] = {}
        self._lock = asyncio.Lock()
        self._reader_task = asyncio.ensure_future(self._read_loop())
        self.closed = asyncio.Event()
        self.bytes_sent = 0  # request frames, for measuring what a keystroke costs on the wire

    @classmethod
    async def connect(cls, path: str | Path) -> EngineClient:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_FRAME + 8)
        return cls(reader, writer)

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await read_frame(self.reader)
                if msg is None:
                    break
                entry = self._pending.get(msg.get("id"))
                if entry is None:
                    if "error" in msg:
                        log.warning("engine error without a request: %s", msg["error"])
                    continue
                future, on_partial = entry
                if "partial" in msg:
                    if on_partial is not None:
                        try:
                            on_partial(msg["partial"])
                        except Exception:
                            log.exception("partial-result callback failed")
                    continue
                self._pending.pop(msg["id"], None)
                if future.done():
                    continue
                if "error" in msg:
                    err = msg["error"] or {}
                    future.set_exception(
                        EngineError(err.get("code", ErrorCode.INTERNAL), err.get("message", "?"))
                    )
                else:
                    future.set_result(msg.get("result"))
        except (FrameError, ConnectionError, OSError) as e:
            log.warning("engine connection failed: %s", e)
        finally:
            self.closed.set()
            for future, _ in self._pending.values():
                if not future.done():
                    future.set_exception(EngineError(ErrorCode.UNAVAILABLE, "the engine connection was lost"))
            self._pending.clear()

    async def _send(self, message: dict[str, Any] | bytes) -> None:
        if self.closed.is_set():
            raise EngineError(ErrorCode.UNAVAILABLE, "the engine connection is closed")
        data = message if isinstance(message, bytes) else encode_frame(message)
        async with self._lock:
            self.writer.write(data)
            await self.writer.drain()

    def start(self, method: str, params: Any = None, on_partial: Callable[[Any], None] | None = None):
        """Send a request now; returns (id, future of its result). ``bytes_sent`` counts its frame."""
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        frame = encode_frame({"id": request_id, "method": method, "params": params})
        self.bytes_sent += len(frame)
        self._pending[request_id] = (future, on_partial)
        send = asyncio.ensure_future(self._send(frame))

        def _sent(t: asyncio.Task) -> None:
            if t.exception() is not None and not future.done():
                self._pending.pop(request_id, None)
                future.set_exception(EngineError(ErrorCode.UNAVAILABLE, f"could not send: {t.exception()}"))

        send.add_done_callback(_sent)
        return request_id, future

    async def request(
        self, method: str, params: Any = None, on_partial: Callable[[Any], None] | None = None
    ) -> Any:
        _, future = self.start(method, params, on_partial)
        return await future

    async def notify(self, method: str, params: Any = None) -> None:
        await self._send({"method": method, "params": params})

    async def cancel(self, request_id: int) -> None:
        with contextlib.suppress(EngineError):
            await self.notify("cancel", {"id": request_id})

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
        self._reader_task.cancel()
        with contextlib.suppress(BaseException):
            await self._reader_task
