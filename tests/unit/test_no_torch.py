"""A plain install (no ``torch`` extra) runs completions: the runtime path never needs PyTorch.

The fast tests run the real commands in subprocesses whose ``import torch`` / ``import
transformers`` fail: a ``sitecustomize.py`` on PYTHONPATH installs a meta-path finder that raises
ImportError for them and logs the attempt, in that process and in every child it starts (the
engine that ``mellum-lsp complete`` spawns). They also check that nothing even tried to import
them. The slow test builds a real fresh venv with ``pip install`` of the project and runs
``mellum-lsp complete`` there.

The model is a tiny random checkpoint with a real tokenizer, exported once per session with
``--quant int8`` (the embedded model's layout); exporting needs torch, the runs under test do not.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from engine.rpc import encode_frame, read_frame

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "transformers")
SITECUSTOMIZE = textwrap.dedent(
    f"""
    import os
    import sys

    BLOCKED = {BLOCKED!r}


    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                with open(os.environ["NO_TORCH_LOG"], "a") as log:
                    log.write(f"{{os.getpid()}} {{name}} {{' '.join(sys.argv)}}\\n")
                raise ImportError(f"{{name}} is blocked: this process must run without it")
            return None


    sys.meta_path.insert(0, _NoTorch())
    """
)
SOURCE = "def scale(values, factor):\n    return [v * factor for v in values]\n\n\ntotal = scale([1, 2], 3)\n"


@pytest.fixture(scope="session")
def exported_tiny(tiny_model_dir, tmp_path_factory) -> Path:
    pytest.importorskip("torch", reason="exporting the test model needs torch")
    from export.cli import main

    out = tmp_path_factory.mktemp("no-torch-model") / "onnx"
    assert main(["--model", str(tiny_model_dir), "--out", str(out), "--quant", "int8", "--threads", "1"]) == 0
    assert (out / "tokenizer.json").is_file() and (out / "mtp.onnx").is_file()
    return out


@pytest.fixture
def no_torch(tmp_path):
    """run(*argv, stdin=None) -> CompletedProcess, with torch and transformers unimportable."""
    site = tmp_path / "no-torch-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "torch-imports.log"
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "NO_TORCH_LOG": str(log)}

    def run(*argv, timeout=180):
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)

    run.env, run.log = env, log
    probe = run(sys.executable, "-c", "import torch")
    assert probe.returncode != 0 and "is blocked" in probe.stderr, "the blocker does not work"
    log.unlink()
    yield run
    assert not log.exists(), f"the runtime path tried to import torch/transformers:\n{log.read_text()}"


@pytest.mark.parametrize("backend", ["ort", "auto"])
def test_engine_generate_without_torch(exported_tiny, no_torch, backend):
    p = no_torch(
        sys.executable, "-m", "engine", "generate", "--model", str(exported_tiny), "--prompt-ids", "1,2,3",
        "--greedy", "--json", "--backend", backend, "--max-new-tokens", "8", "--threads", "1",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["backend"] == "ort" and len(out["ids"]) == 8 and len(out["logprobs"]) == 8


def test_engine_serve_stdio_completes_without_torch(exported_tiny, no_torch):
    async def go():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "engine", "serve", "--stdio", "--model", str(exported_tiny), "--threads", "1",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=no_torch.env, cwd=ROOT,
        )  # fmt: skip
        try:
            proc.stdin.write(encode_frame({"id": 1, "method": "handshake"}))
            proc.stdin.write(
                encode_frame(
                    {"id": 2, "method": "complete", "params": {"prefix": SOURCE[:40], "max_tokens": 6}}
                )
            )
            await proc.stdin.drain()
            hello = await asyncio.wait_for(read_frame(proc.stdout), 120)
            while True:
                answer = await asyncio.wait_for(read_frame(proc.stdout), 120)
                if answer is None or "partial" not in answer:
                    break
            proc.stdin.close()
            await asyncio.wait_for(proc.wait(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        return hello, answer, (await proc.stderr.read()).decode()

    hello, answer, stderr = asyncio.run(go())
    assert hello is not None and hello["id"] == 1 and hello["result"]["protocol"] == 1, stderr
    assert answer is not None and answer["id"] == 2, stderr
    assert "result" in answer and isinstance(answer["result"]["text"], str), answer


def _complete_cli_missing() -> str | None:
    if importlib.util.find_spec("mellum_lsp.complete_cli") is None:
        return "mellum_lsp/complete_cli.py (`mellum-lsp complete`) does not exist yet"
    return None


def _check_completion(p: subprocess.CompletedProcess, path: Path) -> dict:
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert isinstance(out["text"], str) and out["file"] == str(path)
    assert out["range"]["start"] == {"line": 2, "column": 12}
    return out


def test_mellum_lsp_complete_without_torch(exported_tiny, no_torch, tmp_path):
    if reason := _complete_cli_missing():
        pytest.skip(reason)
    (tmp_path / "proj").mkdir()
    path = tmp_path / "proj" / "scale.py"
    path.write_text(SOURCE)
    script = shutil.which("mellum-lsp", path=str(Path(sys.executable).parent))  # the console script
    command = (
        [script]
        if script
        else [sys.executable, "-c", "import sys; from mellum_lsp.cli import main; sys.exit(main())"]
    )
    p = no_torch(
        *command, "complete", f"{path}:2:12", "--model", str(exported_tiny), "--json", "--max-tokens", "6",
    )  # fmt: skip
    _check_completion(p, path)


def _project_copy(dest: Path) -> Path:
    """The project's source as ``pip install`` sees it, outside the work tree (a build writes build/)."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc", "build", "dist")
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dest / name)
    for pkg in ("engine", "mellum_lsp", "export", "benchmarks"):
        if (ROOT / pkg).is_dir():
            shutil.copytree(ROOT / pkg, dest / pkg, ignore=skip)
    return dest


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_fresh_venv_without_the_torch_extra_runs_mellum_lsp_complete(exported_tiny, tmp_path):
    """``pip install .`` into a new venv (pip's cache reused), then ``mellum-lsp complete`` there."""
    if reason := _complete_cli_missing():
        pytest.skip(reason)
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    src = _project_copy(tmp_path / "src")
    p = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(src)],
        capture_output=True, text=True, env=env, timeout=1000,
    )  # fmt: skip
    install_s = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    print(f"fresh venv + pip install: {install_s:.0f} s")
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True, env=env)
    assert probe.returncode != 0 and "torch" in probe.stderr, "torch is importable in the fresh venv"
    (tmp_path / "proj").mkdir()
    path = tmp_path / "proj" / "scale.py"
    path.write_text(SOURCE)
    p = subprocess.run(
        [str(bindir / "mellum-lsp"), "complete", f"{path}:2:12", "--model", str(exported_tiny), "--json",
         "--max-tokens", "6"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    out = _check_completion(p, path)
    assert out["model"] == str(exported_tiny)
