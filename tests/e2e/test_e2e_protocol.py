"""Malformed input on the wire and in requests: each gets an error, and the server stays up."""

from __future__ import annotations

import pytest
from raw_lsp import RawLsp

NO_ENGINE = {"mellum": {"model": {"path": "/nonexistent/model"}, "telemetry": {"enabled": False}}}
URI = "file:///tmp/mellum-e2e/a.py"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    lsp = RawLsp({"XDG_STATE_HOME": str(tmp_path_factory.mktemp("state"))})
    result = lsp.initialize(options=NO_ENGINE)
    assert "capabilities" in result["result"]
    lsp.notify("textDocument/didOpen", {"textDocument": {"uri": URI, "languageId": "python", "version": 1,
                                                         "text": "x = 1\n"}})  # fmt: skip
    yield lsp
    assert lsp.close() == 0


def alive(lsp: RawLsp) -> None:
    answer = lsp.request("mellum/status")
    assert answer["result"]["version"]


def inline(lsp: RawLsp, uri: str, position) -> dict:
    return lsp.request("textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": position,
                                                         "context": {"triggerKind": 2}})  # fmt: skip


def test_invalid_json_gets_a_parse_error(server):
    server.send_bytes(b'{"jsonrpc": "2.0", "id": 99, "method": ')
    error = server.response(None)["error"]
    assert error["code"] == -32700 and "not valid JSON" in error["message"]
    server.send_bytes(b"\xff\xfe not even utf-8")
    assert server.response(None)["error"]["code"] == -32700
    alive(server)


def test_a_message_that_is_not_an_object_is_an_invalid_request(server):
    server.send_bytes(b"[1, 2, 3]")
    assert server.response(None)["error"]["code"] == -32600
    server.send({"jsonrpc": "1.0", "id": 5, "method": "mellum/status"})
    assert server.response(5)["error"]["code"] == -32600
    alive(server)


def test_unknown_method(server):
    assert server.request("mellum/noSuchThing", {})["error"]["code"] == -32601
    alive(server)


def test_unknown_document(server):
    error = inline(server, "file:///tmp/mellum-e2e/never-opened.py", {"line": 0, "character": 0})["error"]
    assert error["code"] == -32602 and "not open" in error["message"]
    alive(server)


def test_position_past_the_end(server):
    error = inline(server, URI, {"line": 40, "character": 0})["error"]
    assert error["code"] == -32602 and "past the end" in error["message"]
    alive(server)


@pytest.mark.parametrize(
    "position",
    [{"line": "zero", "character": 0}, {"line": -1, "character": 0}, {"line": 0}, None, [0, 0]],
)
def test_wrongly_typed_params(server, position):
    error = inline(server, URI, position)["error"]
    assert error["code"] == -32602 and "textDocument/inlineCompletion" in error["message"]
    alive(server)


def test_bad_notifications_are_survived(server):
    server.notify("textDocument/didChange", {"textDocument": {"uri": "file:///nope.py", "version": 2},
                                             "contentChanges": [{"text": "y"}]})  # fmt: skip
    server.notify("textDocument/didChange", {"textDocument": {"uri": URI}, "contentChanges": "oops"})
    server.notify("$/unknownNotification", {"x": 1})
    server.notify("textDocument/didChange", {"textDocument": {"uri": URI, "version": 3},
                                             "contentChanges": [{"range": {"start": {"line": 0, "character": 4},
                                                                           "end": {"line": 0, "character": 5}},
                                                                 "text": "2"}]})  # fmt: skip
    assert server.request("mellum/document", {"uri": URI})["result"]["text"] == "x = 2\n"


def test_unknown_command(server):
    answer = server.request("workspace/executeCommand", {"command": "mellum.nope", "arguments": []})
    assert answer["error"]["code"] == -32602
    answer = server.request(
        "workspace/executeCommand", {"command": "mellum.rejected", "arguments": [{"id": "1"}]}
    )
    assert "result" in answer
    alive(server)


async def test_tcp_transport_on_localhost(tmp_path):
    import asyncio
    import os
    import re
    import sys

    from lsp_client import capabilities
    from lsprotocol import types
    from pytest_lsp import make_test_lsp_client

    env = dict(os.environ, XDG_STATE_HOME=str(tmp_path))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mellum_lsp.cli", "serve", "--tcp", "0", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        host, port = re.search(r"listening on (127\.0\.0\.1):(\d+)", line).groups()
        client = make_test_lsp_client()
        await client.start_tcp(host, int(port))
        result = await client.initialize_session(
            types.InitializeParams(capabilities=capabilities(), initialization_options=NO_ENGINE)
        )
        assert result.capabilities.inline_completion_provider is not None
        await client.shutdown_session()
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await client.stop()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
