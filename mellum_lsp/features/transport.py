"""JSON-RPC over a byte stream (stdio or TCP) for the language server, robust to bad input.

pygls' own loop logs a body that is not JSON and drops a request whose params do not fit the
method's types, leaving the client waiting for an answer. `message_loop` answers both:
invalid JSON (also too deeply nested for the parser) gets a ParseError (-32700, id null), a message
that is not a JSON-RPC object, or whose id is not an integer or a string, an InvalidRequest
(-32600); params of the wrong shape are answered by the protocol (see `protocol.MellumProtocol`),
and omitted params are null, as JSON-RPC allows. A header block without a usable Content-Length
gets a ParseError; a message over `MAX_BODY` an InvalidRequest, and its body is skipped unread, so
the stream stays in step; a header line over the stream's limit is skipped. After each message it
yields to the event loop once, so that a request handler takes its document snapshot before the
next message (say a didChange) is applied.

Offers `message_loop`, `stdio_streams`, `StreamWriterAdapter`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

log = logging.getLogger(__name__)
MAX_BODY = 256 * 1024 * 1024


class StreamWriterAdapter:
    """pygls' writer interface over an asyncio StreamWriter (writes are buffered by asyncio)."""

    def __init__(self, writer: asyncio.StreamWriter | Any) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    def close(self) -> None:
        self._writer.close()


async def stdio_streams() -> tuple[asyncio.StreamReader, StreamWriterAdapter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_BODY)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout.buffer)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, StreamWriterAdapter(writer)


def _send_error(protocol: Any, msg_id: Any, code: int, message: str) -> None:
    # A plain object: lsprotocol's ResponseErrorMessage leaves out an id of None, and JSON-RPC
    # wants "id": null in the answer to a message whose id could not be read.
    protocol._send_data({"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}})


class BadHeader(Exception):
    """A header block that names no usable Content-Length (its body cannot be found)."""


async def _read_headers(reader: asyncio.StreamReader) -> int | None:
    """The Content-Length of the next message; None at the end of the stream."""
    length, problem, seen = None, None, False
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # over the stream's limit: asyncio dropped what it read; skip the rest
            problem, seen = "a header line is over the size limit", True
            continue
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            if length is not None:
                return length
            if seen:
                raise BadHeader(problem or "the message has no Content-Length header")
            continue  # stray blank line between messages
        seen = True
        name, _, value = line.decode("ascii", "replace").partition(":")
        if name.strip().lower() == "content-length":
            value = value.strip()
            length = int(value) if value.isascii() and value.isdigit() else None
            if length is None:
                problem = f"Content-Length {value[:40]!r} is not a byte count"


async def _skip(reader: asyncio.StreamReader, n: int) -> None:
    """Read and drop `n` bytes (fewer at the end of the stream) without holding them."""
    while n > 0:
        chunk = await reader.read(min(n, 1 << 16))
        if not chunk:
            return
        n -= len(chunk)


def _valid_id(msg_id: Any) -> bool:
    return isinstance(msg_id, int | str) and not isinstance(msg_id, bool)


async def message_loop(reader: asyncio.StreamReader, protocol: Any) -> int | None:
    """Read and dispatch messages until the stream ends; the exit code if `exit` was received."""
    while True:
        try:
            length = await _read_headers(reader)
            if length is None:
                return None
            if length > MAX_BODY:
                _send_error(protocol, None, -32600,
                            f"Invalid Request: a message of {length} bytes is over the limit of {MAX_BODY}")  # fmt: skip
                await _skip(reader, length)
                continue
            body = await reader.readexactly(length)
        except BadHeader as e:
            _send_error(protocol, None, -32700, f"Parse error: {e}")
            continue
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as e:
            reason = "it is nested too deeply" if isinstance(e, RecursionError) else e
            log.warning("invalid JSON from the client: %s", reason)
            _send_error(protocol, None, -32700, f"Parse error: the message body is not valid JSON ({reason})")
            continue
        msg_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(data, dict) or data.get("jsonrpc") != "2.0":
            _send_error(protocol, msg_id if _valid_id(msg_id) else None, -32600,
                        "Invalid Request: expected a JSON-RPC 2.0 object with jsonrpc \"2.0\"")  # fmt: skip
            continue
        if "method" in data:
            if not isinstance(data["method"], str):
                _send_error(protocol, msg_id if _valid_id(msg_id) else None, -32600,
                            "Invalid Request: method must be a string")  # fmt: skip
                continue
            if "id" in data and not _valid_id(msg_id):
                _send_error(protocol, None, -32600,
                            f"Invalid Request: id must be an integer or a string, got {json.dumps(msg_id)[:40]}")  # fmt: skip
                continue
            data.setdefault("params", None)  # JSON-RPC: params may be omitted
        try:
            message = protocol.structure_message(data)
            protocol.handle_message(message)
        except SystemExit as e:
            return int(e.code or 0)
        except Exception as e:
            log.exception("could not handle a message")
            if "id" in data and "method" in data:
                _send_error(protocol, data["id"], -32603, f"Internal error: {type(e).__name__}: {e}")
        await asyncio.sleep(0)  # let a new request handler snapshot its document first
