"""``mellum-lsp doctor``: what an editor needs, checked one step at a time, and the set-up snippet
for each editor with this machine's absolute paths.

Checks: the ``mellum-lsp`` command on PATH (and where it is; an editor started from a desktop
launcher often has a shorter PATH than the shell), the Python running it, the model folder, the
engine (started or found, as the language server would), the model loaded (the handshake), and a
completion round trip. Exit code 0 when every check passed, 1 otherwise. Offers ``main``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

from .engine_client import EngineSession, EngineUnavailable, engine_target
from .settings import parse_settings

EDITORS_DIR = Path(__file__).resolve().parents[1] / "editors"


def _line(ok: bool | None, what: str, detail: str) -> str:
    mark = {True: "ok  ", False: "FAIL", None: "warn"}[ok]
    return f"[{mark}] {what}: {detail}"


async def _engine_checks(settings) -> list[tuple[bool | None, str, str]]:
    out: list[tuple[bool | None, str, str]] = []
    try:
        target = engine_target(settings)
    except EngineUnavailable as e:
        return [(False, "model", str(e))]
    out.append((True, "engine socket", str(target.socket)))
    session = EngineSession(target, start_timeout_s=settings.engine.start_timeout_s)
    t0 = time.monotonic()
    try:
        await session.connect()
        info = session.info
        out.append(
            (True, "engine", f"answered in {time.monotonic() - t0:.1f} s ({info.get('backend')} backend)")
        )
        out.append((True, "model", f"{info.get('model')} (context {info.get('context_length')} tokens)"))
        t0 = time.monotonic()
        prefix = "def fibonacci(n):\n    "
        result = await session.complete(
            {"document": "doctor://check.py", "offset": len(prefix), "max_tokens": 16, "stop": ["\n\n"]},
            text=prefix + "\n",
        )
        ms = (time.monotonic() - t0) * 1e3
        out.append((True, "completion", f"{ms:.0f} ms: {result.get('text', '')!r}"))
    except EngineUnavailable as e:
        out.append((False, "engine", str(e)))
    except Exception as e:  # any failure of the round trip is the finding
        out.append((False, "completion", f"{type(e).__name__}: {e}"))
    finally:
        await session.close()
    return out


def snippets(command: str) -> dict[str, str]:
    """Each editor's set-up with the absolute path of the command."""
    return {
        "VS Code": f'Install editors/vscode (the .vsix) and set "mellum.serverPath": {json.dumps(command)}',
        "Neovim 0.7+": f"vim.opt.rtp:append({json.dumps(str(EDITORS_DIR / 'nvim'))})\n"
        f"require('mellum').setup{{ cmd = {{ {json.dumps(command)}, \"serve\" }} }}",
        "Emacs (eglot)": f"(load {json.dumps(str(EDITORS_DIR / 'emacs' / 'mellum.el'))})\n"
        f'(setq mellum-server-command \'({json.dumps(command)} "serve"))',
        "Helix": f'[language-server.mellum]\ncommand = {json.dumps(command)}\nargs = ["serve"]',
        "JetBrains (LSP4IJ 0.20+)": f"New language server → command: {command} serve",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mellum-lsp doctor", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder to check (default: the embedded model)")
    p.add_argument("--engine", metavar="SOCKET|URL", help="an engine socket or a remote server URL")
    p.add_argument("--no-engine", action="store_true", help="check the command and paths only")
    a = p.parse_args(argv)
    raw: dict = {}
    if a.model:
        raw["model"] = {"path": a.model}
    if a.engine:
        raw["engine"] = {"url" if a.engine.startswith(("http://", "https://")) else "socket": a.engine}
    settings, problems = parse_settings(raw)
    checks: list[tuple[bool | None, str, str]] = []
    found = shutil.which("mellum-lsp")
    here = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if found:
        checks.append((True, "command on PATH", found))
    else:
        hint = f" (this one is {here})" if here and here.name == "mellum-lsp" else ""
        checks.append((None, "command on PATH", "mellum-lsp is not on PATH" + hint + "; editors will not find "
                       "it: `pipx install .` or add its folder to PATH, or give editors its absolute path"))  # fmt: skip
    checks.append((True, "python", f"{sys.executable} ({sys.version.split()[0]})"))
    checks += [(False, "settings", problem) for problem in problems]
    if not a.no_engine:
        checks += asyncio.run(_engine_checks(settings))
    for ok, what, detail in checks:
        print(_line(ok, what, detail))
    command = found or (str(here) if here and here.name == "mellum-lsp" else "mellum-lsp")
    print("\nEditor set-up (paths of this installation):")
    for editor, text in snippets(command).items():
        print(f"\n# {editor}\n{text}")
    return 1 if any(ok is False for ok, _, _ in checks) else 0
