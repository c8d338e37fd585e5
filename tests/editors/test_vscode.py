"""The VS Code extension (editors/vscode) in real VS Code: code-server driven by Chromium.

`tools/install_vscode_test.sh` installs code-server, Chromium and playwright-core (cached in
~/.cache/mellum-lsp-ci/) and packages the extension as a .vsix; this test installs that .vsix into a
private code-server with the real `mellum-lsp serve` and the embedded model on a private engine
socket, and `vscode_driver.js` types into a Python file like a person: the ghost text must appear,
Tab must accept it and the saved file must hold it. Screenshots before and after accepting are kept
in the folder the test prints ($MELLUM_ARTIFACTS_DIR/vscode when set).

Skipped, with the reason, only when the installer says something cannot be installed here (exit 75:
no registry, not root); any other install failure fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing
import urllib.request
from pathlib import Path

import pytest

from mellum_lsp.settings import Settings, camel

REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "tools" / "install_vscode_test.sh"
DRIVER = Path(__file__).with_name("vscode_driver.js")
PACKAGE_JSON = REPO / "editors" / "vscode" / "package.json"
CLIENT_ONLY = {"serverPath", "serverArgs", "trace.server"}

SOURCE = '''"""Small geometry helpers."""

import math


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y

    def distance(self, other):
        return math.hypot(self.x - other.x, self.y - other.y)


def read_lines(path):
    with open(path) as f:
'''
TYPED = "        return f."
TYPED_AFTER_RESTART = "\n\ndef "
BAD_SERVER_PATH = "/nonexistent/mellum-lsp"
QUESTION = "What does read_lines return?"
INSTRUCTION = "add a docstring"


# ---- package.json mirrors the server's settings (fast) -------------------------------------------
def _server_settings(cls: type = Settings, prefix: str = "") -> dict[str, typing.Any]:
    out: dict[str, typing.Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + camel(f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out |= _server_settings(hints[f.name], key + ".")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[key] = list(default) if isinstance(default, tuple) else default
    return out


def test_package_json_mirrors_server_settings():
    sections = json.loads(PACKAGE_JSON.read_text())["contributes"]["configuration"]
    contributed = {
        key.removeprefix("mellum."): spec
        for section in sections
        for key, spec in section["properties"].items()
    }
    server = _server_settings()
    mirrored = {k: v for k, v in contributed.items() if k not in CLIENT_ONLY}
    assert sorted(mirrored) == sorted(server), "package.json's mellum.* settings differ from settings.py"
    for key, default in server.items():
        assert mirrored[key]["default"] == default, f"mellum.{key}: package.json default != settings.py's"


# ---- installing --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Installed:
    code_server: str
    chromium: str
    node_path: str
    vsix: str
    versions: dict


@pytest.fixture(scope="module")
def installed() -> Installed:
    if shutil.which("bash") is None or shutil.which("node") is None:
        pytest.skip("VS Code test: needs bash and node (Node 20) to install code-server")
    proc = subprocess.run(
        ["bash", str(INSTALLER)], capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL
    )
    if proc.returncode == 75:
        reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "unknown reason"
        pytest.skip(f"VS Code test: {reason}")
    if proc.returncode != 0:
        pytest.fail(f"{INSTALLER.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    manifest = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    return Installed(
        manifest["codeServer"],
        manifest["chromium"],
        manifest["nodePath"],
        manifest["vsix"],
        manifest["versions"],
    )


# ---- the running pieces ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def private_dir():
    path = Path(tempfile.mkdtemp(prefix="mvsc-"))  # short: Unix socket paths are limited
    path.chmod(0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def model_dir() -> str:
    from engine.embedded import embedded_model_dir

    try:
        return str(embedded_model_dir())
    except FileNotFoundError:
        pytest.skip("needs the embedded model engine/embedded/mellum-tiny-py")


async def _shutdown_engine(sock: Path) -> None:
    from engine.rpc import EngineClient

    with contextlib.suppress(Exception):
        client = await EngineClient.connect(sock)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.request("shutdown"), 10)
        await client.close()


@pytest.fixture(scope="module")
def engine_socket(private_dir, model_dir):
    """An engine of our own on a private socket (the server connects to it, starts none)."""
    sock = private_dir / "e.sock"
    cmd = [sys.executable, "-m", "engine", "serve", "--model", model_dir, "--socket", str(sock),
           "--idle-exit", "300"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if line.startswith("ready "):
            break
    else:
        pytest.fail(f"the engine did not start (exit code {proc.wait()})")
    proc.stderr.close()
    yield sock
    asyncio.run(_shutdown_engine(sock))
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    if proc.poll() is None:
        proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"code-server exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.2)
    raise TimeoutError(f"code-server did not answer {url} within {timeout_s:.0f} s")


@dataclasses.dataclass
class CodeServer:
    url: str
    workspace: Path
    user_data: Path
    settings: Path
    log: Path
    server_log: Path


@pytest.fixture(scope="module")
def code_server(installed, private_dir, engine_socket, model_dir):
    """A private code-server with the extension, a workspace and the settings of this test."""
    ws = private_dir / "ws"
    ws.mkdir()
    (ws / "shapes.py").write_text(SOURCE)
    user_data, extensions, home = private_dir / "user-data", private_dir / "extensions", private_dir / "home"
    (user_data / "User").mkdir(parents=True)
    home.mkdir()
    server_log = private_dir / "mellum-lsp.log"
    settings = {
        "workbench.startupEditor": "none",
        "workbench.tips.enabled": False,
        "workbench.enableExperiments": False,
        "security.workspace.trust.enabled": False,
        "telemetry.telemetryLevel": "off",
        "extensions.ignoreRecommendations": True,
        "extensions.autoUpdate": False,
        "extensions.autoCheckUpdates": False,
        "update.mode": "none",
        "chat.commandCenter.enabled": False,
        "editor.inlineSuggest.enabled": True,
        "editor.quickSuggestions": {"other": False, "comments": False, "strings": False},
        "editor.suggestOnTriggerCharacters": False,
        "editor.autoClosingBrackets": "never",
        "editor.autoClosingQuotes": "never",
        "files.autoSave": "off",
        "mellum.serverPath": str(Path(sys.executable).with_name("mellum-lsp")),
        "mellum.serverArgs": ["--log-file", str(server_log), "--log-level", "INFO"],
        "mellum.model.path": model_dir,
        "mellum.engine.socket": str(engine_socket),
        "mellum.completion.maxTokens": 16,
        "mellum.completion.multiline": False,
        "mellum.context.budgetTokens": 1024,
        "mellum.debug.metrics": True,
    }
    settings_file = user_data / "User" / "settings.json"
    settings_file.write_text(json.dumps(settings, indent=2))
    port = _free_port()
    config = private_dir / "code-server.yaml"
    config.write_text(f"bind-addr: 127.0.0.1:{port}\nauth: none\ncert: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSCODE_", "ELECTRON_"))}
    env |= {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_STATE_HOME": str(home / ".local/state"),
        "XDG_CACHE_HOME": str(home / ".cache"),
    }
    common = ["--config", str(config), "--user-data-dir", str(user_data), "--extensions-dir", str(extensions)]
    subprocess.run(
        [installed.code_server, *common, "--install-extension", installed.vsix],
        env=env, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    log = private_dir / "code-server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [installed.code_server, *common, "--disable-telemetry", "--disable-update-check",
             "--disable-workspace-trust", "--disable-getting-started-override", str(ws)],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz", proc, 60)
        yield CodeServer(
            f"http://127.0.0.1:{port}/?folder={ws}", ws, user_data, settings_file, log, server_log
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # code-server, its extension host and our mellum-lsp
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def screenshots(tmp_path) -> Path:
    base = os.environ.get("MELLUM_ARTIFACTS_DIR")
    folder = Path(base) / "vscode" if base else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return f"({path} missing)"


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a cold install (first run on a machine) is part of it
def test_ghost_text_accepted_with_tab(installed, code_server, screenshots, capsys, record_property):
    cfg = {
        "url": code_server.url,
        "chromium": installed.chromium,
        "file": "shapes.py",
        "type": TYPED,
        "typeAfterRestart": TYPED_AFTER_RESTART,
        "settingsFile": str(code_server.settings),
        "badServerPath": BAD_SERVER_PATH,
        "question": QUESTION,
        "instruction": INSTRUCTION,
        "screenshots": str(screenshots),
        "timeoutMs": 60000,
    }
    started = time.monotonic()
    proc = subprocess.run(
        ["node", str(DRIVER), json.dumps(cfg)],
        env={**os.environ, "NODE_PATH": installed.node_path},
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    record_property("screenshots", str(screenshots))
    with capsys.disabled():
        print(f"\nVS Code {installed.versions['vscode']} (code-server {installed.versions['codeServer']}): "
              f"screenshots in {screenshots}, driver {elapsed:.1f} s")  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"ok": False, "error": proc.stderr[-3000:]}
    (screenshots / "driver-result.json").write_text(json.dumps(result, indent=1))
    for log in code_server.user_data.glob("logs/**/*Mellum*.log"):  # the extension's output channel
        shutil.copy(log, screenshots / "mellum-output.log")
    detail = (
        f"driver: {json.dumps(result, indent=1)}\nstderr: {proc.stderr[-2000:]}\n"
        f"code-server log:\n{_tail(code_server.log)}\nmellum-lsp log:\n{_tail(code_server.server_log)}"
    )
    assert result.get("ok"), detail
    with capsys.disabled():
        print(
            f"steps (ms): {result['steps']}; ghost text {result['ghostText']!r}; status: {result['statusLabel']!r}"
        )

    ghost = result["ghostText"]
    assert ghost.strip(), f"no ghost text was read\n{detail}"
    saved = (code_server.workspace / "shapes.py").read_text()
    assert saved.startswith(SOURCE + TYPED), f"the typed text is not in the saved file:\n{saved}"
    accepted = saved[len(SOURCE + TYPED) :]
    assert accepted.strip(), f"Tab inserted nothing; ghost text was {ghost!r}\n{detail}"
    assert accepted.splitlines()[0].rstrip() == ghost.splitlines()[0].rstrip(), (
        f"accepted {accepted!r}, but the ghost text showed {ghost!r}"
    )
    # the status-bar item reports the last suggestion's latency (from mellum/lastCompletion)
    assert "last suggestion" in (result.get("statusLabelAfter") or ""), result
    # "Mellum: Restart server" gave a new server that suggests too
    assert result["ghostAfterRestart"].strip(), result
    # Ask: a transcript beside the editor, or (a server without mellum/chat) a message saying so
    ask = result["ask"]
    if ask["kind"] == "transcript":
        assert QUESTION in ask["text"], ask
    else:
        assert ask["kind"] == "message" and "does not offer chat yet (no mellum/chat)" in ask["text"], ask
    edit = result["edit"]
    if edit["kind"] == "message":
        assert "does not offer Edit with instruction yet (no mellum/edit)" in edit["text"], edit
    # a wrong mellum.serverPath: an error that names the setting and says how to install
    message = result["notFoundMessage"]
    assert BAD_SERVER_PATH in message and "pipx install mellum-lsp" in message, (
        message,
        result["settingsSaved"],
    )
    assert result["statusLabelNotFound"].startswith("Mellum: error"), result
    for name in ("1-ghost-text.png", "2-accepted.png", "3-server-not-found.png"):
        png = screenshots / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{png} is not a PNG"
