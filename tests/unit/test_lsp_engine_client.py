"""The server's engine client against a scripted engine on a Unix socket (no model, but the
engine's real input memory, ``engine.inputs``): context keys sent once and resent when the engine
answers UNKNOWN_CONTEXT_KEY, documents sent as edits and in full after UNKNOWN_DOCUMENT,
reconnection after a lost connection, cancellation reaching the engine, and the manager that
remakes the session when the settings change. One slow test starts a real engine without a model
path (its embedded model)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from engine.inputs import Inputs
from engine.protocol import ErrorCode, ProtocolError, parse_params
from engine.rpc import Connection, EngineClient, EngineError, serve_connection
from mellum_lsp.context import ContextChunk
from mellum_lsp.engine_client import (
    EngineManager,
    EngineSession,
    EngineTarget,
    EngineUnavailable,
    engine_target,
)
from mellum_lsp.settings import parse_settings


class ScriptedEngine:
    def __init__(self, socket: Path) -> None:
        self.socket = socket
        self.inputs = Inputs()  # what the real engine remembers of its clients' inputs
        self.requests: list[tuple[str, dict]] = []
        self.cancels: list[int] = []
        self.connections: list[Connection] = []
        self.hold = asyncio.Event()  # `complete` waits for this when params ask for it
        self.server: asyncio.AbstractServer | None = None

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
                result = {"context_length": 4096, "protocol": 1, "backend": "torch"}
            elif method == "cancel":
                self.cancels.append(params["id"])
                self.hold.set()
                return
            else:
                p = self.inputs.resolve(parse_params(method, params))
                if p.prefix == "hold":
                    await self.hold.wait()
                    if self.cancels:
                        raise ProtocolError(ErrorCode.CANCELLED, "request cancelled")
                result = {"text": "ok", "cache": {}, "seen": [p.prefix, p.suffix]}
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
    await session.complete({"prefix": "xy"}, CHUNKS[:1])
    first, second, third = [p for m, p in engine.requests if m == "complete"]
    assert all("text" in c for c in first["context"]) and second == {
        "prefix": "xy",
        "context_ref": first["context_ref"],
    }
    assert not any("text" in c for c in third["context"])  # another list of chunks sent before
    assert session.context_length == 4096
    assert [e["event"] for e in events].count("engine_connected") == 1
    await session.close()


async def test_unknown_context_key_is_resent_with_text(engine):
    session = EngineSession(EngineTarget(engine.socket, None, "fake"))
    await session.complete({"prefix": "x"}, CHUNKS)
    engine.inputs = Inputs()  # the engine evicted them
    assert (await session.complete({"prefix": "xy"}, CHUNKS))["text"] == "ok"
    *_, failed, resent = [p for m, p in engine.requests if m == "complete"]
    assert "context" not in failed and all("text" in c for c in resent["context"])
    await session.close()


async def test_documents_go_as_edits_and_in_full_when_the_engine_lost_them(engine):
    session = EngineSession(EngineTarget(engine.socket, None, "fake"))
    doc = {"document": "file:///a.py", "offset": 4}
    assert (await session.complete(doc, text="def f\n"))["seen"] == ["def ", "f\n"]
    r = await session.complete(dict(doc, offset=5), text="def g()\n")
    assert r["seen"] == ["def g", "()\n"] and r["rpc_bytes"] < 150
    sent = [p["doc"] for m, p in engine.requests if m == "complete"]
    assert sent[1] == {"version": 2, "base": 1, "edit": [4, 5, "g()"]}
    engine.inputs = Inputs()  # a restarted engine holds no document
    assert (await session.complete(dict(doc, offset=0), text="x\n"))["seen"] == ["", "x\n"]
    *_, failed, resent = [p["doc"] for m, p in engine.requests if m == "complete"]
    assert "base" in failed and resent == {"version": 4, "text": "x\n"}
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


def test_without_a_model_path_the_engine_is_started_without_model(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    settings, _ = parse_settings({"model": {"backend": "ort"}})
    target = engine_target(settings, python="py")
    assert target.command[:4] == ("py", "-m", "engine", "serve") and "--model" not in target.command
    assert ["--backend", "ort"] == list(target.command[4:6])
    assert target.socket.parent == tmp_path / f"mellum-lsp-{os.getuid()}"
    monkeypatch.chdir(tmp_path)  # one shared engine whatever the server's working directory
    assert engine_target(settings, python="py") == target
    torch, _ = parse_settings({"model": {"backend": "torch"}})
    assert engine_target(torch).socket != target.socket
    given, _ = parse_settings({"engine": {"socket": str(tmp_path / "e.sock")}})
    assert (
        engine_target(given).socket == tmp_path / "e.sock" and "--model" not in engine_target(given).command
    )


@pytest.fixture
async def second_engine():
    folder = tempfile.mkdtemp(prefix="mlsp-u-")
    fake = ScriptedEngine(Path(folder) / "f.sock")
    await fake.start()
    yield fake
    await fake.stop()
    shutil.rmtree(folder)


async def test_the_manager_remakes_the_session_when_engine_settings_change(engine, second_engine):
    first, _ = parse_settings({"engine": {"socket": str(engine.socket)}})
    events = Events()
    manager = EngineManager(first, on_event=events)
    assert manager.status() is None and not manager.connected
    session = await manager.get()
    assert manager.connected and await manager.get() is session
    assert manager.status() == {"socket": str(engine.socket), "connected": True, "connects": 1,
                                "info": session.info}  # fmt: skip

    same_engine, _ = parse_settings(
        {"engine": {"socket": str(engine.socket)}, "completion": {"maxTokens": 3}}
    )
    assert manager.configure(same_engine) is None and manager.session is session

    second, _ = parse_settings({"engine": {"socket": str(second_engine.socket)}})
    await manager.configure(second)
    assert not session.connected  # the old session is closed
    assert manager.connected and manager.session.target.socket == second_engine.socket
    assert [m for m, _ in second_engine.requests] == ["handshake"]
    await manager.close()
    assert not manager.connected


async def test_the_manager_reports_failures_at_most_once_a_minute(tmp_path):
    errors: list[str] = []
    bad, _ = parse_settings({"model": {"path": str(tmp_path / "nothing")}})
    manager = EngineManager(bad, on_error=errors.append)
    with pytest.raises(EngineUnavailable, match="not a model folder"):
        await manager.get()
    await manager.connect()
    await manager.connect()
    assert len(errors) == 1 and "not a model folder" in errors[0]
    manager.error_interval_s = 0.0
    await manager.connect()
    assert len(errors) == 2


@pytest.mark.slow
async def test_a_real_engine_started_without_a_model_path_runs_the_embedded_model(tmp_path, monkeypatch):
    from engine.embedded import embedded_model_dir

    try:
        embedded = embedded_model_dir()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    runtime = tempfile.mkdtemp(prefix="mlsp-u-")  # short: Unix socket paths are limited to ~100 bytes
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # the engine's log
    settings, _ = parse_settings({"engine": {"idleExitS": 60}})
    manager = EngineManager(settings)
    try:
        session = await manager.get()
        assert "--model" not in session.target.command
        assert Path(session.info["model"]).resolve() == embedded.resolve()
    finally:
        await manager.close()
        with contextlib.suppress(OSError, EngineError):
            client = await EngineClient.connect(session.target.socket)
            await asyncio.wait_for(client.request("shutdown"), 30)
            await client.close()
        shutil.rmtree(runtime, ignore_errors=True)
