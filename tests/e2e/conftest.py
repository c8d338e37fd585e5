"""Fixtures for end-to-end tests: one real engine process per test session, language servers
started over stdio against it, and a small workspace to index.

The model: `MELLUM_TEST_MODEL=DIR` if set, else the embedded model; without either the tests
that need a model are skipped (the others still run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from lsp_client import Session, capabilities, engine_pid, engine_settings

SAMPLES = Path(__file__).resolve().parents[2] / "mellum_lsp" / "samples"


def _model() -> tuple[str | None, bool]:
    """(model folder, whether it is the embedded model)."""
    env = os.environ.get("MELLUM_TEST_MODEL")
    if env:
        return env, False
    try:
        from engine.embedded import embedded_model_dir

        return str(embedded_model_dir()), True
    except FileNotFoundError:
        return None, False


@pytest.fixture(scope="session")
def model() -> tuple[str, bool]:
    folder, embedded = _model()
    if folder is None:
        pytest.skip(
            "needs a model: the embedded model engine/embedded/mellum-tiny-py is not installed "
            "(set MELLUM_TEST_MODEL=DIR to use another model folder)"
        )
    return folder, embedded


@pytest.fixture(scope="session")
def private_dir():
    path = tempfile.mkdtemp(prefix="mlsp-")  # short: Unix socket paths are limited to ~100 bytes
    os.chmod(path, 0o700)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


class Engine:
    def __init__(self, socket: Path, model: str) -> None:
        self.socket, self.model = socket, model

    @property
    def pid(self) -> int:
        return engine_pid(str(self.socket))


async def _shutdown_engine(socket: Path) -> None:
    from engine.rpc import EngineClient

    with contextlib.suppress(OSError, ConnectionError, asyncio.TimeoutError, Exception):
        client = await EngineClient.connect(socket)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.request("shutdown"), 10)
        await client.close()


@pytest.fixture(scope="session")
def engine(model, private_dir):
    """The shared engine of the session (tests may kill it: the servers start a new one there)."""
    socket = private_dir / "e.sock"
    cmd = [sys.executable, "-m", "engine", "serve", "--model", model[0], "--socket", str(socket),
           "--idle-exit", "120"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    for line in proc.stderr:  # wait for the engine's "ready" line
        if line.startswith("ready "):
            break
    else:
        pytest.fail(f"the engine did not start (exit code {proc.wait()})")
    proc.stderr.close()
    yield Engine(socket, model[0])
    asyncio.run(_shutdown_engine(socket))
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="session")
def workspace(private_dir):
    """A copy of the sample project (indexed by the servers)."""
    root = private_dir / "ws"
    shutil.copytree(SAMPLES, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".git").mkdir(exist_ok=True)
    return root


@pytest.fixture(scope="session")
def server_env(private_dir):
    state = private_dir / "state"
    state.mkdir(exist_ok=True)
    return {"XDG_STATE_HOME": str(state)}


@pytest.fixture
async def lsp(engine, workspace, server_env):
    """A server with inline-completion capabilities, connected to the session's engine."""
    session = await Session(str(workspace), engine_settings(engine), capabilities(), server_env).start()
    yield session
    await session.stop()
