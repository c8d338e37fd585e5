"""``mellum-lsp complete FILE[:LINE:COL]``: the completion at one point of a file, for people.

LINE and COL are 1-based as editors show them; COL counts characters; without them the cursor is
at the end of the file. FILE ``-`` reads the text from stdin (shown to the model as
``--stdin-name``). The file's workspace (the nearest folder with .git, pyproject.toml,
package.json, ...; else the file's folder) is indexed and the same context pipeline as the
language server's builds the prompt, within the prompt length the model was trained for (see
``context/budget.py``). On an empty line after a block opener (``def f(n):`` and Enter) the cursor
gets the indentation an editor would have given it, and the suggestion starts with it.

The engine is the language server's shared one (``engine_target``): a running engine for the same
model and backend is used, else one is started that stays for the next call until it has been idle
for ``--idle-exit`` seconds. ``--engine`` names a socket or an OpenAI-compatible URL instead.
``--json`` prints ``{"text", "range", "timing", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import stat
import sys
import time
from pathlib import Path

from engine.rpc import EngineError

from .context import ContextCache, RecentSnippets, RepoIndex, build_context
from .context.budget import fit_file, prompt_length, train_context
from .engine_client import DEFAULT_CONTEXT_LENGTH, EngineSession, EngineUnavailable, engine_target
from .features.pipeline import Snapshot, context_budget, engine_params, finish, language_of, wants_multiline
from .postprocess import missing_indent
from .settings import EngineSettings, Settings, parse_settings

ROOT_MARKERS = (".git", ".hg", "pyproject.toml", "setup.py", "setup.cfg", "package.json", "go.mod",
                "Cargo.toml", "pom.xml", "build.gradle", "build.gradle.kts", "CMakeLists.txt", "Makefile")  # fmt: skip
STDIN = "-"


class UsageError(Exception):
    pass


def parse_location(spec: str) -> tuple[Path, int | None, int | None]:
    """FILE:LINE:COL (the file name may itself contain colons), or FILE alone (the end of it)."""
    parts = spec.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        line, col = int(parts[1]), int(parts[2])
        if line < 1 or col < 1:
            raise UsageError(f"LINE and COL are 1-based, got {line}:{col}")
        return Path(parts[0]), line, col
    if len(parts) >= 2 and parts[-1].isdigit():
        raise UsageError(f"expected FILE:LINE:COL with 1-based LINE and COL, or FILE, got {spec!r}")
    return Path(spec), None, None


def offset_of(text: str, line: int | None, col: int | None) -> int:
    """The offset of 1-based (line, column in characters); the column may be one past the line's
    last character (its end), no further; no line: the end of the text."""
    if line is None or col is None:
        return len(text)
    lines = text.split("\n")
    if line > len(lines):
        raise UsageError(f"line {line} is past the end of the file ({len(lines)} lines)")
    start = sum(len(x) + 1 for x in lines[: line - 1])
    content = lines[line - 1].rstrip("\r")
    if col > len(content) + 1:
        raise UsageError(
            f"column {col} is past the end of line {line} ({len(content)} characters; its end is column "
            f"{len(content) + 1})"
        )
    return start + col - 1


def workspace_root(path: Path) -> Path:
    folder = path.resolve().parent
    for candidate in (folder, *folder.parents):
        if any((candidate / m).exists() for m in ROOT_MARKERS):
            return candidate
    return folder


def cli_settings(a: argparse.Namespace) -> Settings:
    """The language server's settings that these flags stand for."""
    engine: dict = {"idleExitS": a.idle_exit}
    if a.engine:
        engine["url" if a.engine.startswith(("http://", "https://")) else "socket"] = a.engine
    raw = {
        "model": {"path": a.model, "backend": a.backend},
        "completion": {"maxTokens": a.max_tokens, "multiline": not a.single_line, "deadlineMs": 0},
        "engine": engine,
    }
    settings, problems = parse_settings(raw)
    if problems:
        raise UsageError("; ".join(problems))
    return settings


def read_input(a: argparse.Namespace) -> tuple[Path, str, int]:
    """(path, text, cursor offset) of the location argument."""
    path, line, col = parse_location(a.location)
    if str(path) == STDIN:
        text = sys.stdin.read()
        path = Path.cwd() / a.stdin_name
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read {path}: {e}") from None
    return path, text, offset_of(text, line, col)


def check_arguments(a: argparse.Namespace) -> None:
    """`--model` must hold a model and `--engine SOCKET` must exist: said here, in one line, rather
    than as an engine that failed to start (the engine owns the model-folder rule)."""
    if a.model:
        from engine.server import model_folder_problem

        if (problem := model_folder_problem(a.model)) is not None:
            raise UsageError(problem)
    if a.engine and not a.engine.startswith(("http://", "https://")):
        sock = Path(a.engine)
        if not sock.exists():
            raise UsageError(
                f"--engine {a.engine}: no such socket; start an engine there (mellum-lsp engine --socket "
                f"{a.engine}) or leave --engine out to use the shared engine"
            )
        if not stat.S_ISSOCK(sock.stat().st_mode):
            raise UsageError(f"--engine {a.engine} is not a socket")


async def run(a: argparse.Namespace) -> dict:
    check_arguments(a)
    settings = cli_settings(a)
    path, text, offset = read_input(a)
    t0 = time.monotonic()
    root = workspace_root(path)
    index = RepoIndex(str(root))
    if a.budget:
        index.build()
    index_ms = (time.monotonic() - t0) * 1e3
    rel = index.relpath(str(path.resolve())) or path.name
    language = language_of(None, str(path), text)
    line_start = text.rfind("\n", 0, offset) + 1
    at = {"line": text.count("\n", 0, offset) + 1, "column": offset - line_start + 1}
    indent = missing_indent(text[:offset], text[offset:], language) if a.indent else ""
    text, offset = text[:offset] + indent + text[offset:], offset + len(indent)
    snap = Snapshot(path.resolve().as_uri(), text, offset, str(path.resolve()), rel, language)

    t1 = time.monotonic()
    target = engine_target(settings)
    if a.engine and not a.engine.startswith(("http://", "https://")):
        target = dataclasses.replace(target, command=None)  # a running engine: connect, never start one
    session = EngineSession(target, start_timeout_s=settings.engine.start_timeout_s)
    try:
        await session.connect()
        connect_ms = (time.monotonic() - t1) * 1e3
        info = session.info
        multiline = wants_multiline(snap, settings.completion)
        length = prompt_length(info, DEFAULT_CONTEXT_LENGTH)
        prefix, suffix = fit_file(*snap.model_text(), length // 2)
        budget = context_budget(length, a.max_tokens, prefix, suffix, a.budget)
        t2 = time.monotonic()
        chunks = build_context(
            index, snap.path, text, offset, budget, None, RecentSnippets(), cache=ContextCache()
        )
        context_ms = (time.monotonic() - t2) * 1e3
        params = engine_params(snap, settings.completion, multiline) | {"prefix": prefix, "suffix": suffix}
        t3 = time.monotonic()
        result = await session.complete(params, chunks)
        complete_ms = (time.monotonic() - t3) * 1e3
    finally:
        await session.close()  # the engine stays, for the next call
    suggestion = finish(result.get("text", ""), snap, multiline)
    return {
        "text": indent + suggestion if suggestion else "",
        "range": {"start": at, "end": at},
        "file": str(path),
        "workspace": str(root),
        "raw": result.get("text", ""),
        "context": {
            "chunks": len(chunks),
            "budget_tokens": budget,
            "files_indexed": len(index),
            "prompt_length": length,
            "train_context": train_context(info),
            "file_chars_sent": len(prefix) + len(suffix),
        },
        "cache": result.get("cache"),
        "timing": {
            "index_ms": round(index_ms, 1),
            "engine_connect_ms": round(connect_ms, 1),
            "context_ms": round(context_ms, 1),
            "complete_ms": round(complete_ms, 1),
            "engine": result.get("timing"),
        },
        "engine": {"socket": str(session.target.socket), "description": session.target.description},
        "model": info.get("model"),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mellum-lsp complete", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "location", metavar="FILE[:LINE:COL]", help="1-based line and column (characters); FILE - is stdin"
    )
    p.add_argument("--model", metavar="DIR", help="model folder (default: the embedded model)")
    p.add_argument("--backend", choices=["auto", "torch", "ort"], default="auto")
    p.add_argument(
        "--engine", metavar="SOCKET|URL", help="this engine's socket, or a remote OpenAI-compatible server"
    )
    idle = EngineSettings().idle_exit_s
    p.add_argument("--idle-exit", type=float, default=idle, metavar="S",
                   help=f"an engine this command starts exits after S idle seconds (default {idle:g})")  # fmt: skip
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--budget", type=int, default=8192, help="cap on repository-context tokens (0: none)")
    p.add_argument("--single-line", action="store_true", help="never suggest more than one line")
    p.add_argument("--no-indent", dest="indent", action="store_false",
                   help="do not indent an empty line after a block opener as an editor would")  # fmt: skip
    p.add_argument(
        "--stdin-name", default="untitled.py", help="the file name shown for FILE - (default untitled.py)"
    )
    p.add_argument("--json", action="store_true", help='print {"text", "range", "timing", ...}')
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        out = asyncio.run(run(a))
    except UsageError as e:
        print(f"mellum-lsp complete: {e}", file=sys.stderr)
        return 2
    except (EngineUnavailable, EngineError, FileNotFoundError, ConnectionError, OSError) as e:
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
