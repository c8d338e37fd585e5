"""The ``mellum-lsp`` router: its own commands run in-process, the engine, export and benchmarks
become a ``python -m ...`` process of their own (same pid, their exit codes), and the router and
the language server import nothing of the engine but its RPC and protocol modules."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from engine.rpc import EngineClient

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mellum_lsp.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, **kw)  # fmt: skip


def test_usage_and_unknown_commands():
    assert cli("--help").returncode == 0
    bare = cli()
    assert bare.returncode == 2 and "mellum-lsp serve" in bare.stdout
    unknown = cli("nope")
    assert unknown.returncode == 2
    assert "unknown command 'nope'" in unknown.stderr and "mellum-lsp bench engine|backends" in unknown.stderr
    bench = cli("bench", "nope")
    assert bench.returncode == 2 and "usage: mellum-lsp bench {engine,backends,lsp,index,chat,fix,peers,scale,soak}" in bench.stderr


def test_other_programs_keep_their_help_and_exit_codes():
    engine = cli("engine", "--help")
    assert engine.returncode == 0 and engine.stdout.startswith("usage: mellum-lsp engine")
    export = cli("export", "--help")
    assert export.returncode == 0 and export.stdout.startswith("usage: mellum-lsp export")
    bad = cli("engine", "--no-such-flag")
    assert bad.returncode == 2 and "unrecognized arguments: --no-such-flag" in bad.stderr


def test_the_server_imports_only_the_engine_protocol_and_rpc():
    code = (
        "import sys, mellum_lsp.cli, mellum_lsp.serve, mellum_lsp.server\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('engine', 'export', 'benchmarks')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "['engine', 'engine.protocol', 'engine.rpc']"


def test_the_engine_command_becomes_the_engine_process():
    """`mellum-lsp engine` is the engine itself (os.execv): same pid, its exit code, its signals."""
    folder = tempfile.mkdtemp(prefix="mlsp-c-")
    socket = Path(folder) / "e.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mellum_lsp.cli", "engine", "--socket", str(socket), "--idle-exit", "60"],
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        for line in proc.stderr:
            if line.startswith("ready "):
                break
        else:
            pytest.fail(f"the engine did not start (exit code {proc.wait()})")
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert [b"-m", b"engine", b"serve"] == cmdline[1:4]

        async def shutdown() -> dict:
            client = await EngineClient.connect(socket)
            try:
                return await asyncio.wait_for(client.request("shutdown"), 30)
            finally:
                await client.close()

        assert asyncio.run(shutdown()) == {"ok": True}
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        if socket.exists():
            os.unlink(socket)
        os.rmdir(folder)
