"""JSON-RPC over a byte stream (stdio or TCP) for the language server, robust to bad input.

pygls' own loop logs a body that is not JSON and drops a request whose params do not fit the
method's types, leaving the client waiting for an answer. `message_loop` answers both:
invalid JSON gets a ParseError (-32700, id null), a message that is not a JSON-RPC object an
InvalidRequest (-32600); params of the wrong shape are answered by the protocol (see
`server.MellumProtocol`). After each message it yields to the event loop once, so that a request
handler takes its document snapshot before the next message (say a didChange) is applied.

Offers `message_loop`, `stdio_streams`, `StreamWriterAdapter`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from lsprotocol.types import ResponseError, ResponseErrorMessage

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
    protocol._send_data(ResponseErrorMessage(id=msg_id, error=ResponseError(code=code, message=message)))


async def _read_headers(reader: asyncio.StreamReader) -> int | None:
    """The Content-Length of the next message; None at the end of the stream."""
    length = None
    while True:
        line = await reader.readline()
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            if length is not None:
                return length
            continue  # stray blank line between messages
        name, _, value = line.decode("ascii", "replace").partition(":")
        if name.strip().lower() == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                length = None
            if length is not None and not 0 <= length <= MAX_BODY:
                length = None


async def message_loop(reader: asyncio.StreamReader, protocol: Any) -> int | None:
    """Read and dispatch messages until the stream ends; the exit code if `exit` was received."""
    while True:
        try:
            length = await _read_headers(reader)
            if length is None:
                return None
            body = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        try:
            data = json.loads(body)
        except ValueError as e:
            log.warning("invalid JSON from the client: %s", e)
            _send_error(protocol, None, -32700, f"Parse error: the message body is not valid JSON ({e})")
            continue
        if not isinstance(data, dict) or data.get("jsonrpc") != "2.0":
            msg_id = data.get("id") if isinstance(data, dict) else None
            _send_error(protocol, msg_id if isinstance(msg_id, int | str) else None, -32600,
                        "Invalid Request: expected a JSON-RPC 2.0 object with jsonrpc \"2.0\"")  # fmt: skip
            continue
        if "method" in data and not isinstance(data["method"], str):
            _send_error(protocol, data.get("id"), -32600, "Invalid Request: method must be a string")
            continue
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
