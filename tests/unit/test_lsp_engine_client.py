"""The server's engine client against a scripted engine on a Unix socket (no model): context
keys sent once, resent on "unknown context key", reconnection after a lost connection, and
cancellation reaching the engine."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest

from engine.protocol import ErrorCode, ProtocolError
from engine.rpc import Connection, serve_connection
from mellum_lsp.context import ContextChunk
from mellum_lsp.engine_client import EngineSession, EngineTarget, EngineUnavailable, engine_target
from mellum_lsp.settings import parse_settings


class ScriptedEngine:
    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.keys: set[str] = set()
        self.requests: list[tuple[str, dict]] = []
        self.cancels: list[int] = []
        self.connections: list[Connection] = []
        self.hold = asyncio.Event()  # `complete` waits for this when params ask for it
        self.server: asyncio.AbstractServer | None = None
        self.remote = False  # like engine.remote: no chunks kept by key

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, str(self.socket))

    async def _serve(self, reader, writer) -> None:
        conn = Connection(reader, writer)
        self.connections.append(conn)
        await serve_connection(conn, self._handle)

    async def _handle(self, conn: Connection, rid, method: str, params) -> None:
        self.requests.append((method, params))
        try:
            if method == "handshake":
                result = {
                    "context_length": 4096,
                    "protocol": 1,
                    "backend": "remote" if self.remote else "torch",
                }
            elif method == "cancel":
                self.cancels.append(params["id"])
                self.hold.set()
                return
            else:
                for chunk in params.get("context", []):
                    if "text" not in chunk and self.remote:
                        raise ProtocolError(
                            ErrorCode.INVALID_PARAMS,
                            "chunk has no text; a remote engine keeps no chunks by key",
                        )
                    if "text" in chunk:
                        self.keys.add(chunk["key"])
                    elif chunk["key"] not in self.keys:
                        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"unknown context key {chunk['key']!r}")
                if params.get("prefix") == "hold":
                    await self.hold.wait()
                    if self.cancels:
                        raise ProtocolError(ErrorCode.CANCELLED, "request cancelled")
                result = {"text": "ok", "cache": {}}
        except ProtocolError as e:
            await conn.error(rid, e.code, e.message)
            return
        if rid is not None:
            await conn.send({"id": rid, "result": result})

    def drop_all(self) -> None:
        for conn in self.connections:
            conn.writer.close()
        self.connections.clear()

    async def stop(self) -> None:
        self.drop_all()
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def engine():
    folder = tempfile.mkdtemp(prefix="mlsp-u-")
    fake = ScriptedEngine(Path(folder) / "e.sock")
    await fake.start()
    yield fake
    await fake.stop()
    os.unlink(fake.socket)
    os.rmdir(folder)


class Events(list):
    """Engine events as they come; `wait(name)` until one of that kind has come."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Event()

    def __call__(self, event: dict) -> None:
        self.append(event)
        self.changed.set()

    async def wait(self, name: str) -> dict:
        while True:
            found = [e for e in self if e["event"] == name]
            if found:
                return found[0]
            self.changed.clear()
            await self.changed.wait()


CHUNKS = [
    ContextChunk("a.py", "def a(): pass", "file", "k-a"),
    ContextChunk("b.py", "B = 1", "window", "k-b"),
]


async def test_context_text_is_sent_once_per_connection(engine):
    events = []
    session = EngineSession(EngineTarget(engine.socket, None, "fake"), on_event=events.append)
    await session.complete({"prefix": "x"}, CHUNKS)
    await session.complete({"prefix": "xy"}, CHUNKS)
    first, second = [p["context"] for m, p in engine.requests if m == "complete"]
    assert all("text" in c for c in first) and not any("text" in c for c in second)
    assert session.context_length == 4096
    assert [e["event"] for e in events].count("engine_connected") == 1
    await session.close()


async def test_unknown_context_key_is_resent_with_text(engine):
    session = EngineSession(EngineTarget(engine.socket, None, "fake"))
    await session.complete({"prefix": "x"}, CHUNKS)
    engine.keys.clear()  # the engine evicted them
    assert (await session.complete({"prefix": "xy"}, CHUNKS))["text"] == "ok"
    *_, failed, resent = [p["context"] for m, p in engine.requests if m == "complete"]
    assert not any("text" in c for c in failed) and all("text" in c for c in resent)
    await session.close()


async def test_a_remote_engine_always_gets_the_text(engine):
    engine.remote = True
    session = EngineSession(EngineTarget(engine.socket, None, "fake"))
    for prefix in ("x", "xy", "xyz"):
        assert (await session.complete({"prefix": prefix}, CHUNKS))["text"] == "ok"
    contexts = [p["context"] for m, p in engine.requests if m == "complete"]
    assert len(contexts) == 3 and all("text" in c for ctx in contexts for c in ctx)
    await session.close()


async def test_a_lost_connection_is_reopened_and_the_request_retried(engine):
    session = EngineSession(EngineTarget(engine.socket, None, "fake"))
    await session.complete({"prefix": "x"}, CHUNKS)
    engine.drop_all()
    await session.client.closed.wait()
    assert (await session.complete({"prefix": "xy"}, CHUNKS))["text"] == "ok"
    assert session.connects == 2
    last = [p["context"] for m, p in engine.requests if m == "complete"][-1]
    assert all("text" in c for c in last)  # a new connection knows no keys
    await session.close()


async def test_cancelling_the_caller_cancels_the_engine_request(engine):
    events = Events()
    session = EngineSession(EngineTarget(engine.socket, None, "fake"), on_event=events)
    await session.connect()
    task = asyncio.ensure_future(session.complete({"prefix": "hold"}))
    await events.wait("engine_request")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    cancelled = await events.wait("engine_cancelled")
    assert cancelled["outcome"] == "cancelled" and engine.cancels == [cancelled["request"]]
    await session.close()


async def test_no_engine_and_nothing_to_start(tmp_path):
    session = EngineSession(EngineTarget(tmp_path / "none.sock", None, "fake"))
    with pytest.raises(EngineUnavailable, match="no engine listens"):
        await session.connect()


def test_engine_targets(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    settings, _ = parse_settings(
        {"model": {"path": str(model), "backend": "torch"}, "engine": {"idleExitS": 30}}
    )
    target = engine_target(settings, python="py")
    assert target.socket.parent == tmp_path / f"mellum-lsp-{os.getuid()}"
    assert target.command[:4] == ("py", "-m", "engine", "serve")
    assert ["--model", str(model)] == list(target.command[4:6]) and "--idle-exit" in target.command
    assert engine_target(settings, python="py") == target  # windows share one engine
    remote, _ = parse_settings({"engine": {"url": "http://127.0.0.1:8000/v1"}})
    assert "--remote" in engine_target(remote, python="py").command
    bad, _ = parse_settings({"model": {"path": str(tmp_path / "nothing")}})
    with pytest.raises(EngineUnavailable, match="not a model folder"):
        engine_target(bad)
