"""Fixtures shared by the real-editor tests: the environment an editor runs `mellum-lsp serve` in.

- `editor_model`: the model folder (`MELLUM_TEST_MODEL`, else the embedded model; skip without).
- `editor_env`: an `EditorEnv` for the test session: `PATH` starts with this Python's bin folder
  (where `pip install -e .` put `mellum-lsp`), and `XDG_RUNTIME_DIR` / `XDG_STATE_HOME` point into
  a private folder, so the engine the servers start listens on a socket of this run only and the
  acceptance counters stay out of the user's; `settings` are the "mellum" settings to give the
  editors (the model when it is not the embedded one). The engine is shut down at the end.
- `make_workspace(files)`: a project folder (with `.git`) holding `files` ({relative path: text}).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def editor_model() -> str:
    env = os.environ.get("MELLUM_TEST_MODEL")
    if env:
        return env
    try:
        from engine.embedded import embedded_model_dir

        return str(embedded_model_dir())
    except FileNotFoundError:
        pytest.skip(
            "needs a model: the embedded model engine/embedded/mellum-tiny-py is not installed "
            "(set MELLUM_TEST_MODEL=DIR to use another model folder)"
        )


@dataclass(frozen=True)
class EditorEnv:
    env: dict[str, str]  # the environment to start an editor with
    root: Path  # private folder of this test session (mode 0700)
    server: Path  # the `mellum-lsp` the editors will find first on PATH
    settings: dict  # "mellum" settings for the editors' servers (the model, a short engine idle exit)

    def engine_sockets(self) -> list[Path]:
        return sorted((self.root / "run").glob("mellum-lsp-*/*.sock"))


async def _shutdown_engine(socket: Path) -> None:
    from engine.rpc import EngineClient

    with contextlib.suppress(Exception):
        client = await EngineClient.connect(socket)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.request("shutdown"), 10)
        await client.close()


@pytest.fixture(scope="session")
def editor_env(editor_model) -> EditorEnv:
    bin_dir = Path(sys.executable).parent
    server = bin_dir / "mellum-lsp"
    if not os.access(server, os.X_OK):
        pytest.skip(f"{server} is missing: install the project into this Python first (pip install -e .)")
    root = Path(tempfile.mkdtemp(prefix="medt-"))  # short: Unix socket paths are limited to ~100 bytes
    root.chmod(0o700)
    for sub in ("run", "state"):
        (root / sub).mkdir(mode=0o700)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["XDG_RUNTIME_DIR"] = str(root / "run")
    env["XDG_STATE_HOME"] = str(root / "state")
    settings: dict = {"engine": {"idleExitS": 120}}
    if os.environ.get("MELLUM_TEST_MODEL"):
        settings["model"] = {"path": editor_model}
    session = EditorEnv(env=env, root=root, server=server, settings=settings)
    yield session
    for socket in session.engine_sockets():
        asyncio.run(_shutdown_engine(socket))
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_workspace(tmp_path):
    def make(files: dict[str, str]) -> Path:
        root = tmp_path / "ws"
        (root / ".git").mkdir(parents=True, exist_ok=True)
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return root

    return make
