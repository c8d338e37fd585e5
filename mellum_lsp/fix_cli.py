"""``mellum-lsp fix FILE[:LINE] [--apply] [--json]``: the validated fix of a syntax error, as a diff.

The same path as the "Fix with Mellum" code action: the file's syntax problems as the language
server publishes them (`edits.syntax.diagnostic_problems`, `features.diagnostics`), the quickfix
`edits.actions.list_actions` makes of the one on LINE (1-based; else the first), and
`edits.generate.generate_edit` against an engine — a child over stdio (`python -m engine serve
--stdio`, the embedded model unless `--model`) or the one at `--engine SOCKET`. The fix is printed
as a unified diff; `--apply` writes it to the file, only after the diff was printed. `--json`
prints `{"diagnostic", "diff", "valid", "candidates_tried", "timing", "reason", "via"}`.
Exit codes: 0 a fix was found (or there is nothing to fix), 1 no valid fix (or the engine failed),
2 bad input (a one-line error).

Offers `main`, `fix_text`, `FixOutcome`, `unified_diff`, `open_engine`, `DirectEngine`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import json
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.rpc import EngineClient, EngineError

from .edits import SyntaxProblem, diagnostic_problems, list_actions
from .edits.generate import EditRequest, EditResult, GenerateOptions, generate_edit
from .edits.syntax import supports
from .features.diagnostics import problem_diagnostic
from .features.pipeline import language_of


class UsageError(Exception):
    """Bad input; the message is the one line shown."""


class DirectEngine:
    """An engine connection as `edits.generate` needs it (`info`, `complete`, `request`), without
    the language server's reconnects: context chunks go with their text, cancelling a request
    cancels it in the engine."""

    def __init__(self, client: EngineClient, info: dict) -> None:
        self.client, self.info = client, info

    async def request(self, method: str, params: Any = None, on_partial=None) -> Any:
        rid, future = self.client.start(method, params, on_partial)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            asyncio.ensure_future(self.client.cancel(rid))
            raise

    async def complete(
        self, params: dict, chunks: Any = (), on_partial=None, text: str | None = None
    ) -> dict:
        wire = dict(params)
        if text is not None:  # the document and a cursor offset, as prefix and suffix
            offset = wire.pop("offset")
            wire["prefix"], wire["suffix"] = text[:offset], text[offset:]
        if chunks:
            wire["context"] = [{"path": c.path, "text": c.text, "key": c.key} for c in chunks]
        return await self.request("complete", wire, on_partial)


@contextlib.asynccontextmanager
async def open_engine(
    engine: str | None = None, model: str | None = None, backend: str = "auto", args: Sequence[str] = ()
) -> AsyncIterator[DirectEngine]:
    """The engine at the socket `engine`, else a child engine over stdio (`args` are its flags),
    shut down on exit."""
    proc = None
    if engine:
        client = await EngineClient.connect(engine)
    else:
        cmd = [sys.executable, "-m", "engine", "serve", "--stdio", "--backend", backend, *args]
        cmd += ["--model", model] if model else []
        proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                    limit=2**27)  # fmt: skip
        client = EngineClient(proc.stdout, proc.stdin)
    try:
        yield DirectEngine(client, await client.request("handshake"))
        if proc is not None:
            with contextlib.suppress(EngineError, asyncio.TimeoutError):
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


@dataclass
class FixOutcome:
    problem: SyntaxProblem | None  # the problem fixed (None: none there)
    problems: list[SyntaxProblem]  # all the text has
    result: EditResult | None
    diff: str
    timing: dict

    @property
    def valid(self) -> bool:
        return self.result is not None and self.result.ok

    def to_json(self) -> dict:
        p, r = self.problem, self.result
        diagnostic = None
        if p is not None:
            diagnostic = {"line": p.start_point[0] + 1, "column": p.start_point[1] + 1, "message": p.message}
        return {
            "diagnostic": diagnostic,
            "diff": self.diff,
            "valid": self.valid,
            "candidates_tried": r.candidates_tried if r is not None else 0,
            "timing": self.timing,
            "reason": r.reason if r is not None else "",
            "via": r.via if r is not None else "",
        }


def unified_diff(old: str, new: str, name: str) -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{name}", f"b/{name}"
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


def pick_problem(problems: Sequence[SyntaxProblem], line: int | None) -> SyntaxProblem | None:
    """The problem on 1-based `line` (else the first); None when there is none there."""
    if line is None:
        return problems[0] if problems else None
    return next((p for p in problems if p.start_point[0] + 1 <= line <= p.end_point[0] + 1), None)


async def fix_text(
    engine: Any,
    text: str,
    path: str,
    *,
    line: int | None = None,
    options: GenerateOptions | None = None,
    document: str | None = None,
) -> FixOutcome:
    """The validated fix of the syntax problem on `line` (else the first) of `text`."""
    t0 = time.monotonic()
    language = language_of(None, path, text)
    if not supports(language):
        raise UsageError(f"{path}: no grammar for this file's language (supported: Python, JavaScript, "
                         "TypeScript, Go, Rust, Java, C, C++)")  # fmt: skip
    assert language is not None
    problems = diagnostic_problems(text, language, path)
    problem = pick_problem(problems, line)
    check_ms = (time.monotonic() - t0) * 1e3
    if problem is None:
        return FixOutcome(
            None, problems, None, "", {"check_ms": round(check_ms, 3), "total_ms": round(check_ms, 3)}
        )
    diagnostic = problem_diagnostic(problem)
    (action,) = list_actions(
        text, language, (diagnostic.start, diagnostic.start), [diagnostic], only=["quickfix"]
    )
    uri = document or Path(path).resolve().as_uri()
    req = EditRequest(text, language, action, uri, Path(path).name)
    result = await generate_edit(engine, req, options)
    diff = (
        unified_diff(text, result.new_text, Path(path).name)
        if result.ok and result.new_text is not None
        else ""
    )
    total_ms = (time.monotonic() - t0) * 1e3
    return FixOutcome(problem, problems, result, diff, {"check_ms": round(check_ms, 3), **result.timing,
                                              "total_ms": round(total_ms, 3)})  # fmt: skip


def parse_target(spec: str) -> tuple[Path, int | None]:
    """FILE or FILE:LINE (1-based; the file name may itself contain colons)."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit() and head:
        if int(tail) < 1:
            raise UsageError(f"LINE is 1-based, got {tail} in {spec!r}")
        return Path(head), int(tail)
    return Path(spec), None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mellum-lsp fix", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "target", metavar="FILE[:LINE]", help="the file, and the 1-based line of the problem to fix"
    )
    p.add_argument("--apply", action="store_true", help="write the fix to the file (after showing it)")
    p.add_argument("--json", action="store_true", help='print {"diagnostic", "diff", "valid", ...}')
    p.add_argument("--model", metavar="DIR", help="model folder (default: the embedded model)")
    p.add_argument("--chat-model", metavar="DIR", help="an instruct model folder: fixes go through chat")
    p.add_argument("--backend", choices=["auto", "torch", "ort"], default="auto")
    p.add_argument("--engine", metavar="SOCKET", help="use the engine listening on this socket")
    p.add_argument(
        "--mode", choices=["auto", "chat", "fim"], default="auto", help="chat or fill-in-the-middle"
    )
    p.add_argument(
        "--candidates", type=int, default=GenerateOptions.candidates, help="answers to try at most"
    )
    p.add_argument("--deadline-ms", type=float, default=GenerateOptions.deadline_ms)
    return p


async def run(a: argparse.Namespace) -> tuple[FixOutcome, Path, str]:
    path, line = parse_target(a.target)
    try:
        text = path.read_bytes().decode("utf-8")  # line ends as they are
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from None
    try:
        options = GenerateOptions(mode=a.mode, candidates=a.candidates, deadline_ms=a.deadline_ms)
    except ValueError as e:
        raise UsageError(str(e)) from None
    args = ["--chat-model", a.chat_model] if a.chat_model else []
    if line is not None and line > text.count("\n") + 1:
        raise UsageError(f"line {line} is past the end of {path} ({text.count(chr(10)) + 1} lines)")
    if not supports(language_of(None, str(path), text)):
        raise UsageError(f"{path}: no grammar for this file's language")
    t0 = time.monotonic()
    async with open_engine(a.engine, a.model, a.backend, args) as engine:
        start_ms = (time.monotonic() - t0) * 1e3
        outcome = await fix_text(engine, text, str(path), line=line, options=options)
    outcome.timing["engine_start_ms"] = round(start_ms, 3)
    return outcome, path, text


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        outcome, path, text = asyncio.run(run(a))
    except UsageError as e:
        print(f"mellum-lsp fix: {e}", file=sys.stderr)
        return 2
    except (EngineError, ConnectionError, OSError) as e:
        print(f"mellum-lsp fix: engine: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(outcome.to_json()))
    elif outcome.problem is None:
        print(f"mellum-lsp fix: {_nothing(outcome, path, parse_target(a.target)[1])}", file=sys.stderr)
    elif outcome.valid:
        sys.stdout.write(outcome.diff)
    else:
        p = outcome.problem
        print(f"{path}:{p.start_point[0] + 1}:{p.start_point[1] + 1}: {p.message}", file=sys.stderr)
        print(f"mellum-lsp fix: {outcome.result.reason if outcome.result else 'no fix'}", file=sys.stderr)
    if outcome.valid and a.apply and outcome.result is not None and outcome.result.new_text is not None:
        sys.stdout.flush()
        path.write_text(outcome.result.new_text, encoding="utf-8", newline="")
        if not a.json:
            print(f"mellum-lsp fix: applied to {path}", file=sys.stderr)
    if outcome.problem is None:
        return 1 if outcome.problems else 0
    return 0 if outcome.valid else 1


def _nothing(outcome: FixOutcome, path: Path, line: int | None) -> str:
    if not outcome.problems:
        return f"no syntax problem in {path}"
    first = outcome.problems[0]
    return f"no syntax problem on line {line} of {path}; the first is on line {first.start_point[0] + 1}: {first.message}"
