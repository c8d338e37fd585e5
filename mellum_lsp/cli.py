"""The ``mellum-lsp`` command: one entry point for the server, the engine and the tools.

mellum-lsp serve [--tcp PORT] [--engine SOCKET|URL]   the language server (stdio by default)
mellum-lsp engine [--socket PATH] [--http HOST:PORT]  the model engine process
mellum-lsp complete FILE:LINE:COL [--model DIR] [--json]
mellum-lsp fix FILE[:LINE] [--apply] [--json]          the validated fix of a syntax error, as a diff
mellum-lsp chat "question" [--model DIR] [--json]     ask the chat model (the answer streams)
mellum-lsp doctor                                     check what editors need; print their set-up
mellum-lsp demo                                       replay typing through server and engine
mellum-lsp stats                                      local acceptance counters
mellum-lsp export --model DIR --out DIR [...]         ONNX export (needs mellum-lsp[export])
mellum-lsp bench engine|backends|lsp|index|chat|fix|peers|scale|soak [--json]   benchmarks
"""

from __future__ import annotations

import importlib
import os
import sys

# "module:function": one of mellum_lsp's own commands, called in this process.
# "-m module args": another entry point, run as `python -m module args ...` in place of this
# process (os.execv): none of its modules is imported here; signals and exit code are its own.
COMMANDS = {
    "serve": "mellum_lsp.serve:main",
    "engine": "-m engine serve",
    "complete": "mellum_lsp.complete_cli:main",
    "fix": "mellum_lsp.fix_cli:main",
    "chat": "-m engine chat",
    "doctor": "mellum_lsp.doctor:main",
    "demo": "mellum_lsp.demo:main",
    "stats": "mellum_lsp.stats:main",
    "export": "-m export",
}
BENCHES = {
    "engine": "-m benchmarks.bench_engine",
    "backends": "-m benchmarks.bench_backends",
    "lsp": "-m benchmarks.bench_lsp",
    "index": "-m benchmarks.bench_index",
    "chat": "-m benchmarks.bench_chat",
    "fix": "-m benchmarks.bench_fix",
    "peers": "-m benchmarks.bench_peers",
    "scale": "-m benchmarks.bench_scale",
    "soak": "-m benchmarks.bench_soak",
}


def _call(target: str, argv: list[str]) -> int:
    module, func = target.split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        print(f"mellum-lsp: {module} is not available ({e})", file=sys.stderr)
        return 2
    return int(getattr(mod, func)(argv) or 0)


def _exec(program: str, argv: list[str]) -> int:
    """Become `python -m module args ARGV` (this interpreter); returns only if that fails."""
    command = [sys.executable, *program.split(), *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, command)
    except OSError as e:
        print(f"mellum-lsp: could not run {' '.join(command)}: {e}", file=sys.stderr)
    return 2


def _run(target: str, argv: list[str]) -> int:
    return _exec(target, argv) if target.startswith("-m ") else _call(target, argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        if not rest or rest[0] not in BENCHES:
            print(f"usage: mellum-lsp bench {{{','.join(BENCHES)}}} [--json]", file=sys.stderr)
            return 2
        return _run(BENCHES[rest[0]], rest[1:])
    if command not in COMMANDS:
        print(
            f"mellum-lsp: unknown command {command!r}; expected one of {', '.join([*COMMANDS, 'bench'])}\n\n"
            f"{__doc__}",
            file=sys.stderr,
        )
        return 2
    return _run(COMMANDS[command], rest)


if __name__ == "__main__":
    sys.exit(main())
