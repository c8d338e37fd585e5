"""End-to-end keystroke latency through the language server, warm cache vs cold.

    mellum-lsp bench lsp [--model DIR] [--sizes 2048,8192] [--keys 12] [--json]

Builds a synthetic Python workspace (modules of functions imported by the file being edited) and
starts two engines side by side: a normal one (warm: its KV prefix cache is kept between
keystrokes) and one with `--cache-mb 0` (cold: every request prefills the whole prompt). Two
language servers, one per engine, are driven over stdio by this process as their LSP client.
For each prompt size, a line is typed one character at a time; after every keystroke both
servers get the same `didChange` and `textDocument/inlineCompletion`, one after the other
(never at once: the cores are shared). Latency is from sending the request to its answer.
The repository-context budget is calibrated with the model's tokenizer so that the prompt
reaches the requested size. Typed-along serving is off and the debounce is 0, so every warm
keystroke goes to the engine; the first warm keystroke (which fills the cache) is excluded.

`--json` prints {"keystroke": [{"context_tokens", "warm_p50_ms", "warm_p95_ms", "cold_p50_ms",
"cold_p95_ms", "speedup_p50", "reused_share", "rpc_bytes_per_keystroke", ...}], ...}. The default
sizes end at the largest context the model allows; the cold server is measured only up to
`--cold-max` tokens (a cold keystroke at 32K takes seconds on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lsprotocol import types

from mellum_lsp.context import estimate_tokens
from mellum_lsp.demo import make_client, plain

VERBS = "get load save parse build compute update find merge split check apply filter sort fetch send".split()
NOUNS = """order invoice payment customer product item cart session token record entry table row cache
queue stream message event config price discount tax report summary metric counter node path""".split()
TYPED = "    subtotal = compute_order_total(order, discount_rate) + shipping_fee\n"


def synthetic_workspace(root: Path, modules: int = 40, seed: int = 0) -> Path:
    """`pkg/m<i>.py` modules of small functions, and `pkg/main.py` importing them all."""
    rng = random.Random(seed)
    pkg = root / "pkg"
    pkg.mkdir(parents=True)
    (root / ".git").mkdir()
    (pkg / "__init__.py").write_text("")
    names = []
    for i in range(modules):
        lines = [f'"""Module {i}: helpers for {rng.choice(NOUNS)}s."""', ""]
        for j in range(12):
            name = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}_{i}_{j}"
            a, b = rng.sample(NOUNS, 2)
            names.append((i, name))
            lines += [
                f"def {name}({a}: int, {b}: float = {rng.randint(1, 9)}.0) -> float:",
                f'    """{rng.choice(VERBS).title()} the {a} with the {b}."""',
                f"    total = {a} * {b} + {rng.randint(0, 99)}",
                f"    if total > {rng.randint(100, 999)}:",
                f"        total -= {a} // {rng.randint(2, 9)}",
                "    return total",
                "",
            ]
        (pkg / f"m{i}.py").write_text("\n".join(lines) + "\n")
    imports = "".join(f"from .m{i} import *\n" for i in range(modules))
    calls = "".join(f"    value += {name}(order.quantity)\n" for _, name in rng.sample(names, 6))
    main = (
        f'"""Order totals."""\n\n{imports}\n\ndef compute_order_total(order, discount_rate: float) -> float:\n'
        f"    value = 0.0\n{calls}    return value * (1 - discount_rate)\n\n\n"
        "def shipping(order, discount_rate: float, shipping_fee: float) -> float:\n"
    )
    (pkg / "main.py").write_text(main)
    return pkg / "main.py"


class EngineProc:
    def __init__(self, model: str, socket: Path, extra: list[str]) -> None:
        cmd = [sys.executable, "-m", "engine", "serve", "--model", model, "--socket", str(socket),
               "--idle-exit", "300", *extra]  # fmt: skip
        self.socket = socket
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        for line in self.proc.stderr:
            if line.startswith("ready "):
                break
        else:
            raise RuntimeError(f"engine {' '.join(cmd)} did not start (exit code {self.proc.wait()})")
        self.proc.stderr.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Server:
    """A language server driven over stdio, with the settings it is asked for."""

    def __init__(self, label: str, root: Path, settings: dict) -> None:
        self.label, self.root, self.settings = label, root, settings
        self.client = make_client(lambda text: None, lambda: self.settings)
        self.version = 1

    async def start(self) -> None:
        await self.client.start_io(sys.executable, "-m", "mellum_lsp.cli", "serve")
        caps = types.ClientCapabilities(
            window=types.WindowClientCapabilities(work_done_progress=True),
            workspace=types.WorkspaceClientCapabilities(configuration=True),
            text_document=types.TextDocumentClientCapabilities(inline_completion=types.InlineCompletionClientCapabilities()),
        )  # fmt: skip
        await self.client.initialize_async(types.InitializeParams(
            capabilities=caps, root_uri=self.root.as_uri(), initialization_options={"mellum": self.settings},
            workspace_folders=[types.WorkspaceFolder(uri=self.root.as_uri(), name="bench")]))  # fmt: skip
        self.client.initialized(types.InitializedParams())
        await self.client.protocol.send_request_async("mellum/status", {"waitForIndex": True})

    def open(self, uri: str, text: str) -> None:
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(uri=uri, language_id="python", version=1, text=text)))  # fmt: skip

    def insert(self, uri: str, line: int, character: int, text: str) -> None:
        self.version += 1
        at = types.Position(line=line, character=character)
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.version),
            content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at), text=text)]))  # fmt: skip

    async def complete(self, uri: str, line: int, character: int) -> tuple[float, dict]:
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=character),
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))  # fmt: skip
        t0 = time.perf_counter()
        await self.client.text_document_inline_completion_async(params)
        ms = (time.perf_counter() - t0) * 1e3
        return ms, plain(
            await self.client.protocol.send_request_async("mellum/lastCompletion", {"uri": uri})
        ) or {}

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.shutdown_async(None), 20)
            self.client.exit(None)
        await self.client.stop()


def largest_context(model: str | None) -> int:
    """The model's context length (its config's max_position_embeddings)."""
    if model is None:
        from engine.embedded import embedded_model_dir

        model = str(embedded_model_dir())
    return int(json.loads((Path(model) / "config.json").read_text())["max_position_embeddings"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def calibrate(model: str, workspace: Path) -> float:
    """Model tokens per `estimate_tokens` unit on this workspace's text (the builder counts with
    the estimate)."""
    from engine.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(model)
    sample = "".join(p.read_text() for p in sorted(workspace.glob("pkg/m*.py"))[:8])
    return len(tok.encode(sample)) / estimate_tokens(sample)


async def measure_size(size: int, a, root: Path, target: Path, ratio: float, sockets: dict) -> dict:
    text = target.read_text()
    uri = target.as_uri()
    file_tokens = round(estimate_tokens(text) * ratio)
    budget = max(0, int((size - file_tokens - 64) / ratio))
    base = {"completion": {"debounceMs": 0, "maxTokens": a.max_tokens, "typedAlong": False, "deadlineMs": 0,
                           "multiline": False},
            "context": {"budgetTokens": budget}, "model": {"path": a.model}}  # fmt: skip
    kinds = sockets if size <= a.cold_max else {"warm": sockets["warm"]}
    servers = {k: Server(k, root, base | {"engine": {"socket": str(s)}}) for k, s in kinds.items()}
    rows: dict[str, list[tuple[float, dict]]] = {"warm": [], "cold": []}
    try:
        for server in servers.values():
            await server.start()
            server.open(uri, text)
        line, col = text.count("\n"), 0
        for ch in TYPED[: a.keys + 1]:
            for server in servers.values():
                server.insert(uri, line, col, ch)
            line, col = (line + 1, 0) if ch == "\n" else (line, col + 1)
            for kind, server in servers.items():
                rows[kind].append(await server.complete(uri, line, col))
    finally:
        for server in servers.values():
            await server.stop()
    warm = rows["warm"][1:]  # the first keystroke filled the cache
    cold = rows["cold"]

    def share(samples) -> float:
        caches = [m.get("cache") or {} for _, m in samples]
        prompt = sum(c.get("prompt_tokens", 0) for c in caches)
        return sum(c.get("reused_tokens", 0) for c in caches) / prompt if prompt else 0.0

    warm_ms = [ms for ms, _ in warm]
    cold_ms = [ms for ms, _ in cold]
    wire = [m["rpc_bytes"] for _, m in warm if m.get("rpc_bytes")]
    prompt_tokens = [((m.get("cache") or {}).get("prompt_tokens") or 0) for _, m in warm + cold]
    served: dict[str, int] = {}
    for _, m in warm:
        served[m.get("served", "?")] = served.get(m.get("served", "?"), 0) + 1
    return {
        "context_tokens": round(statistics.median(prompt_tokens)),
        "requested_tokens": size,
        "budget_tokens": budget,
        "context_chunks": round(
            statistics.median([(m.get("context") or {}).get("chunks", 0) for _, m in warm])
        ),
        "warm_p50_ms": round(statistics.median(warm_ms), 2),
        "warm_p95_ms": round(percentile(warm_ms, 0.95), 2),
        "warm_model_p50_ms": round(statistics.median([ms for ms, m in warm if m.get("served") == "model"] or [0]), 2),
        "cold_p50_ms": round(statistics.median(cold_ms), 2) if cold_ms else None,
        "cold_p95_ms": round(percentile(cold_ms, 0.95), 2) if cold_ms else None,
        "first_keystroke_ms": round(rows["warm"][0][0], 2),
        "speedup_p50": round(statistics.median(cold_ms) / statistics.median(warm_ms), 2) if cold_ms else None,
        "reused_share": round(share(warm), 4),
        "rpc_bytes_per_keystroke": round(statistics.median(wire)) if wire else None,
        "cold_reused_share": round(share(cold), 4),
        "keystrokes": len(warm),
        "warm_served": served,
    }


async def run(a: argparse.Namespace) -> dict:
    if a.model is None:
        from engine.embedded import embedded_model_dir

        a.model = str(embedded_model_dir())
    work = Path(tempfile.mkdtemp(prefix="mlsp-bench-"))
    os.chmod(work, 0o700)
    engines: dict[str, EngineProc] = {}
    try:
        target = synthetic_workspace(work / "ws", modules=a.modules)
        ratio = calibrate(a.model, work / "ws")
        backend = ["--backend", a.backend]
        engines["warm"] = EngineProc(a.model, work / "warm.sock", backend)
        engines["cold"] = EngineProc(a.model, work / "cold.sock", [*backend, "--cache-mb", "0"])
        sockets = {k: e.socket for k, e in engines.items()}
        rows = [await measure_size(size, a, work / "ws", target, ratio, sockets) for size in a.sizes]
    finally:
        for e in engines.values():
            e.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"keystroke": rows, "model": a.model, "backend": a.backend, "max_tokens": a.max_tokens,
            "target": "warm p50 >= 10x faster than cold at 8K"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mellum-lsp bench lsp", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: the embedded model)")
    p.add_argument("--backend", choices=["auto", "torch", "ort"], default="auto")
    p.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="prompt sizes in tokens (default: 2048, 8192 and the largest the model allows)",
    )
    p.add_argument("--cold-max", type=int, default=8192, help="largest size also measured cold")  # fmt: skip
    p.add_argument("--keys", type=int, default=12, help="keystrokes per size (after the first)")
    p.add_argument("--max-tokens", type=int, default=8, help="tokens generated per suggestion")
    p.add_argument("--modules", type=int, default=40, help="modules in the synthetic workspace")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.sizes is None:
        a.sizes = [2048, 8192, largest_context(a.model) - a.max_tokens - 256]
    result = asyncio.run(run(a))
    if a.json:
        print(json.dumps(result))
        return 0
    print(
        f"keystroke latency through the LSP ({result['backend']} backend, {a.max_tokens} tokens per suggestion)"
    )
    print(
        f"{'prompt':>8} {'warm p50':>9} {'warm p95':>9} {'cold p50':>9} {'cold p95':>9} {'speedup':>8} {'reused':>7}"
        f" {'bytes/key':>9}"
    )
    for r in result["keystroke"]:
        cold = (f"{r['cold_p50_ms']:>7.1f}ms {r['cold_p95_ms']:>7.1f}ms {r['speedup_p50']:>7.1f}x"
                if r["cold_p50_ms"] is not None else f"{'-':>9} {'-':>9} {'-':>8}")  # fmt: skip
        print(f"{r['context_tokens']:>8} {r['warm_p50_ms']:>7.1f}ms {r['warm_p95_ms']:>7.1f}ms {cold} "
              f"{r['reused_share']:>6.1%} {r['rpc_bytes_per_keystroke'] or 0:>9}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
