"""What a new user sees first: `mellum-lsp complete` against the real embedded model.

- the prompt stays within the length the model was trained for (`mellum_train_context` in the
  model folder's config.json), and a model that declares none keeps its whole context;
- `def fibonacci(n):` and Enter gets an indented body;
- the first call starts a shared engine, the second call uses it (one engine served both).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.rpc import EngineClient
from mellum_lsp.context.budget import fit_file, prompt_length, train_context
from mellum_lsp.postprocess import missing_indent

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "engine" / "embedded" / "mellum-tiny-py"


# --- the prompt length -----------------------------------------------------------------------------


def test_prompt_length_is_the_trained_length_when_the_model_declares_one(tmp_path):
    assert prompt_length({"context_length": 32768, "train_context": 1024}, 8192) == 1024
    assert prompt_length({"context_length": 512, "train_context": 1024}, 8192) == 512  # never beyond
    assert prompt_length({"context_length": 131072, "train_context": None}, 8192) == 131072  # Mellum 2
    assert prompt_length({}, 8192) == 8192  # a remote server that says nothing
    # an engine that does not report the field yet: the model folder its handshake names
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "mellum", "mellum_train_context": 2048}))
    assert train_context({"model": str(folder), "context_length": 32768}) == 2048
    (folder / "config.json").write_text(json.dumps({"model_type": "mellum"}))
    assert train_context({"model": str(folder)}) is None
    assert train_context({"model": "http://gpu-box:8000/v1"}) is None
    with pytest.raises(ValueError, match="train_context must be a positive integer"):
        train_context({"train_context": "long"})


def test_fit_file_keeps_whole_lines_around_the_cursor():
    prefix = "".join(f"line_{i} = {i}\n" for i in range(400)) + "    total = "
    suffix = "price * n\n" + "".join(f"after_{i} = {i}\n" for i in range(400))
    p, s = fit_file(prefix, suffix, 200)
    assert len(p) + len(s) <= 200 * 3.5
    assert prefix.endswith(p) and suffix.startswith(s)
    assert p.startswith("line_") and p.endswith("    total = ")  # whole lines, the cursor's line kept
    assert s.startswith("price * n\n") and len(s) >= 200 * 3.5 // 4 - 20
    assert fit_file("a = 1\n", "b = 2\n", 200) == ("a = 1\n", "b = 2\n")


@pytest.mark.parametrize(
    ("prefix", "suffix", "expected"),
    [
        ("def fibonacci(n):\n", "", "    "),
        ("def fibonacci(n):\n  ", "", "  "),  # the rest of what an editor would have put there
        ("class A:\n  def f(self):\n", "\n  x = 1\n", "    "),  # the file's own indentation step
        ("if ok:  # why\n", "", "    "),
        ("x = 1\n", "", ""),  # no block opened
        ("def f(n):\n    ", "", ""),  # already indented
        ("def f(n):\n", "return 1\n", ""),  # code after the cursor
        ('s = """a:\n', "", ""),  # inside a string
    ],
)
def test_missing_indent_is_what_an_editor_would_have_indented(prefix, suffix, expected):
    assert missing_indent(prefix, suffix, "python") == expected


# --- the command against the real model -------------------------------------------------------------


@pytest.fixture
def env(tmp_path):
    """A private engine socket folder and state folder; the engine started there is shut down."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    environment = dict(os.environ, XDG_RUNTIME_DIR=str(run), XDG_STATE_HOME=str(tmp_path / "state"))
    yield environment
    for socket in run.glob("mellum-lsp-*/*.sock"):
        asyncio.run(_shutdown(socket))


async def _shutdown(socket: Path) -> None:
    try:
        client = await EngineClient.connect(socket)
    except OSError:
        return
    try:
        await asyncio.wait_for(client.request("shutdown"), 10)
    finally:
        await client.close()


async def _stats(socket: Path) -> dict:
    client = await EngineClient.connect(socket)
    try:
        return await asyncio.wait_for(client.request("stats"), 10)
    finally:
        await client.close()


def complete(env, *args, stdin: str | None = None) -> dict:
    p = subprocess.run(
        [sys.executable, "-m", "mellum_lsp.cli", "complete", *args, "--json", "--idle-exit", "60"],
        capture_output=True, text=True, env=env, timeout=240, input=stdin, cwd=env.get("CWD"),
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    """The embedded model's folder with the trained length declared in its config.json."""
    folder = tmp_path_factory.mktemp("model") / "mellum-tiny-py"
    shutil.copytree(EMBEDDED, folder)
    config = json.loads((folder / "config.json").read_text())
    config["mellum_train_context"] = 1024
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def test_complete_inside_this_repository_stays_within_the_trained_length_and_reuses_the_engine(
    env, trained_model
):
    target = ROOT / "mellum_lsp" / "complete_cli.py"  # a long file in a 200-file workspace
    first = complete(env, f"{target}:120:9", "--model", str(trained_model))
    assert first["context"]["train_context"] == 1024 and first["context"]["prompt_length"] == 1024
    assert first["context"]["files_indexed"] > 100 and first["context"]["chunks"] >= 1
    assert 300 < first["cache"]["prompt_tokens"] <= 1024 - 64, first["cache"]
    second = complete(env, f"{target}:140:9", "--model", str(trained_model))
    assert second["engine"]["socket"] == first["engine"]["socket"]
    assert second["cache"]["prompt_tokens"] <= 1024 - 64
    stats = asyncio.run(_stats(Path(first["engine"]["socket"])))
    assert stats["totals"]["requests"] >= 2, stats["totals"]  # one engine answered both calls
    assert second["timing"]["engine_connect_ms"] < first["timing"]["engine_connect_ms"]


def test_fibonacci_and_enter_gets_an_indented_body(env, tmp_path):
    env = dict(env, CWD=str(tmp_path))
    out = complete(env, "-", stdin="def fibonacci(n):\n")
    assert out["range"]["start"] == {"line": 2, "column": 1}
    lines = [line for line in out["text"].split("\n") if line.strip()]
    assert lines, out
    assert all(line.startswith("    ") for line in lines), out["text"]  # the body of the function
