"""The ``mellum-lsp`` command: one entry point for the server, the engine and the tools.

mellum-lsp serve [--tcp PORT] [--engine SOCKET|URL]   the language server (stdio by default)
mellum-lsp engine [--socket PATH] [--http HOST:PORT]  the model engine process
mellum-lsp complete FILE:LINE:COL [--model DIR] [--json]
mellum-lsp demo                                       replay typing through server and engine
mellum-lsp stats                                      local acceptance counters
mellum-lsp export --model DIR --out DIR [...]         ONNX export (needs mellum-lsp[export])
mellum-lsp bench engine|backends|lsp|index [--json]   benchmarks
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "serve": ("mellum_lsp.server", "main"),
    "engine": ("engine.server", "main"),
    "complete": ("mellum_lsp.complete_cli", "main"),
    "demo": ("mellum_lsp.demo", "main"),
    "stats": ("mellum_lsp.stats", "main"),
    "export": ("export.cli", "main"),
}
BENCHES = {
    "engine": ("benchmarks.bench_engine", "main"),
    "backends": ("benchmarks.bench_backends", "main"),
    "lsp": ("benchmarks.bench_lsp", "main"),
    "index": ("benchmarks.bench_index", "main"),
}


def _run(target: tuple[str, str], argv: list[str]) -> int:
    module, func = target
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        print(f"mellum-lsp: {module} is not available ({e})", file=sys.stderr)
        return 2
    return int(getattr(mod, func)(argv) or 0)


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
            f"mellum-lsp: unknown command {command!r}; expected one of {', '.join([*COMMANDS, 'bench'])}",
            file=sys.stderr,
        )
        return 2
    return _run(COMMANDS[command], rest)


if __name__ == "__main__":
    sys.exit(main())
