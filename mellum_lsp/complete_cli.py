"""``mellum-lsp complete FILE:LINE:COL``: the completion at one point of a file, for people.

LINE and COL are 1-based as editors show them; COL counts characters. The file's workspace (the
nearest folder with .git, pyproject.toml, package.json, ...; else the file's folder) is indexed
and the same context pipeline as the language server's builds the prompt. The engine runs in
this process's child over stdio (`python -m engine serve --stdio`) unless `--engine` names a
socket or an OpenAI-compatible URL. `--json` prints `{"text", "range", "timing", ...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from engine.rpc import EngineClient, EngineError

from .context import ContextCache, RecentSnippets, RepoIndex, build_context
from .engine_client import DEFAULT_CONTEXT_LENGTH
from .features.pipeline import Snapshot, context_budget, engine_params, finish, language_of, wants_multiline
from .settings import parse_settings

ROOT_MARKERS = (".git", ".hg", "pyproject.toml", "setup.py", "setup.cfg", "package.json", "go.mod",
                "Cargo.toml", "pom.xml", "build.gradle", "build.gradle.kts", "CMakeLists.txt", "Makefile")  # fmt: skip


class UsageError(Exception):
    pass


def parse_location(spec: str) -> tuple[Path, int, int]:
    """FILE:LINE:COL (the file name may itself contain colons)."""
    parts = spec.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
        raise UsageError(f"expected FILE:LINE:COL with 1-based LINE and COL, got {spec!r}")
    line, col = int(parts[1]), int(parts[2])
    if line < 1 or col < 1:
        raise UsageError(f"LINE and COL are 1-based, got {line}:{col}")
    return Path(parts[0]), line, col


def offset_of(text: str, line: int, col: int) -> int:
    """The offset of 1-based (line, column in characters); a column past the line's end is its end."""
    lines = text.split("\n")
    if line > len(lines):
        raise UsageError(f"line {line} is past the end of the file ({len(lines)} lines)")
    start = sum(len(x) + 1 for x in lines[: line - 1])
    content = lines[line - 1].rstrip("\r")
    return start + min(col - 1, len(content))


def workspace_root(path: Path) -> Path:
    folder = path.resolve().parent
    for candidate in (folder, *folder.parents):
        if any((candidate / m).exists() for m in ROOT_MARKERS):
            return candidate
    return folder


async def _open_engine(a: argparse.Namespace) -> tuple[EngineClient, asyncio.subprocess.Process | None]:
    if a.engine and not a.engine.startswith(("http://", "https://")):
        return await EngineClient.connect(a.engine), None
    cmd = [sys.executable, "-m", "engine", "serve", "--stdio", "--backend", a.backend]
    cmd += ["--remote", a.engine] if a.engine else (["--model", a.model] if a.model else [])
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                limit=2**27)  # fmt: skip
    return EngineClient(proc.stdout, proc.stdin), proc


async def run(a: argparse.Namespace) -> dict:
    path, line, col = parse_location(a.location)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    offset = offset_of(text, line, col)
    settings, problems = parse_settings({"completion": {"maxTokens": a.max_tokens, "multiline": not a.single_line,
                                                        "deadlineMs": 0}})  # fmt: skip
    if problems:
        raise UsageError("; ".join(problems))
    t0 = time.monotonic()
    root = workspace_root(path)
    index = RepoIndex(str(root))
    if a.budget:
        index.build()
    index_ms = (time.monotonic() - t0) * 1e3
    rel = index.relpath(str(path.resolve()))
    snap = Snapshot(
        path.resolve().as_uri(), text, offset, str(path.resolve()), rel, language_of(None, str(path), text)
    )

    t1 = time.monotonic()
    client, proc = await _open_engine(a)
    try:
        info = await client.request("handshake")
        load_ms = (time.monotonic() - t1) * 1e3
        multiline = wants_multiline(snap, settings.completion)
        prefix, suffix = snap.model_text()
        context_length = info.get("context_length") or DEFAULT_CONTEXT_LENGTH  # a remote may not say
        budget = context_budget(context_length, a.max_tokens, prefix, suffix, a.budget)
        t2 = time.monotonic()
        chunks = build_context(
            index, snap.path, text, offset, budget, None, RecentSnippets(), cache=ContextCache()
        )
        context_ms = (time.monotonic() - t2) * 1e3
        params = engine_params(snap, settings.completion, multiline)
        params["context"] = [{"path": c.path, "text": c.text, "key": c.key} for c in chunks]
        t3 = time.monotonic()
        result = await client.request("complete", params)
        complete_ms = (time.monotonic() - t3) * 1e3
        if proc is not None:
            with contextlib.suppress(EngineError):
                await asyncio.wait_for(client.request("shutdown"), 10)
    finally:
        await client.close()
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
    suggestion = finish(result.get("text", ""), snap, multiline)
    at = {"line": line, "column": offset - (text.rfind("\n", 0, offset) + 1) + 1}
    return {
        "text": suggestion,
        "range": {"start": at, "end": at},
        "file": str(path),
        "workspace": str(root),
        "raw": result.get("text", ""),
        "context": {"chunks": len(chunks), "budget_tokens": budget, "files_indexed": len(index)},
        "cache": result.get("cache"),
        "timing": {
            "index_ms": round(index_ms, 1),
            "engine_start_ms": round(load_ms, 1),
            "context_ms": round(context_ms, 1),
            "complete_ms": round(complete_ms, 1),
            "engine": result.get("timing"),
        },  # fmt: skip
        "model": info.get("model"),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mellum-lsp complete", description=__doc__.split("\n\n")[0])
    p.add_argument("location", metavar="FILE:LINE:COL", help="1-based line and column (characters)")
    p.add_argument("--model", metavar="DIR", help="model folder (default: the embedded model)")
    p.add_argument("--backend", choices=["auto", "torch", "ort"], default="auto")
    p.add_argument(
        "--engine", metavar="SOCKET|URL", help="use a running engine, or a remote OpenAI-compatible server"
    )
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--budget", type=int, default=8192, help="repository-context tokens (0: none)")
    p.add_argument("--single-line", action="store_true", help="never suggest more than one line")
    p.add_argument("--json", action="store_true", help='print {"text", "range", "timing", ...}')
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        out = asyncio.run(run(a))
    except UsageError as e:
        print(f"mellum-lsp complete: {e}", file=sys.stderr)
        return 2
    except (EngineError, FileNotFoundError, ConnectionError, OSError) as e:
        print(f"mellum-lsp complete: engine: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(out))
    else:
        sys.stdout.write(out["text"] + ("\n" if out["text"] and not out["text"].endswith("\n") else ""))
        if os.isatty(2):
            t = out["timing"]
            print(f"[{out['context']['chunks']} context chunks, {t['complete_ms']:.0f} ms]", file=sys.stderr)
    return 0
