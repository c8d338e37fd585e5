"""Soak: many keystrokes over several documents and editor windows through the real language
servers and one shared engine, watching whether anything grows.

    mellum-lsp bench soak [--keystrokes 100000] [--windows 2] [--documents 3] [--json]
    python -m benchmarks.bench_soak --keystrokes 2000 --json          (the CI's short run)

Each window is a `mellum-lsp serve` process driven over stdio by this process as its LSP client;
the windows share one engine (the embedded model unless `--model`), started by the first server
that needs it on a private socket of this run. A window types the text of Python sources (the
sample project and stdlib modules) one character at a time into its documents, with backspaces,
jumps to other lines, switches between documents and, when a document grows past `--doc-chars`,
a deletion of its first half; after every keystroke it sends `didChange` and asks for
`textDocument/inlineCompletion`, and waits for the answer (latency: request to answer). The
windows type at the same time. Debounce is 0 and `--max-tokens` small, so the run measures the
server and engine, not the model's decoding.

Every `--sample-every` keystrokes the engine's and servers' resident memory, file descriptors and
threads are read from /proc, the engine's asyncio tasks and KV-cache bytes from its `stats`, the
servers' tasks from `mellum/status` (when it reports them). The first `--warmup` keystrokes fill
caches and pools; growth is measured from the end of the warm-up. At the end every window's
documents are compared with the server's copies (`mellum/document`).

`--json` prints {"keystrokes", "rss_start_mb", "rss_end_mb" (the engine), "cache_mb_max",
"open_fds_end", "p99_ms", ..., "servers": [...], "targets": {...}}; the exit code is 1 when a
target is missed (RSS growth over 5 % after warm-up, cache over its budget, growth in fds, tasks
or threads, an error answer, a document out of sync).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import shutil
import socket as socketlib
import statistics
import struct
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.rpc import EngineClient

SAMPLES = Path(__file__).resolve().parents[1] / "mellum_lsp" / "samples"
STDLIB_SOURCES = ("textwrap.py", "heapq.py", "bisect.py", "fnmatch.py", "colorsys.py", "shlex.py", "glob.py")


# ---- what is typed -------------------------------------------------------------------------------
def corpus() -> str:
    """The text the windows type: the sample project and some stdlib modules (nothing downloaded)."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(SAMPLES.rglob("*.py"))]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts += [
        (stdlib / name).read_text(encoding="utf-8") for name in STDLIB_SOURCES if (stdlib / name).is_file()
    ]
    return "\n\n".join(texts)


def position(text: str, offset: int) -> dict[str, int]:
    """The LSP position (UTF-16 code units) of a code-point offset."""
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    chunk = text[start:offset]
    return {"line": line, "character": len(chunk) + sum(1 for c in chunk if c > "\uffff")}


@dataclass
class Doc:
    uri: str
    text: str = ""
    cursor: int = 0
    version: int = 1


@dataclass
class Typist:
    """What one window types next: characters of the corpus, backspaces, jumps, document switches."""

    docs: list[Doc]
    source: str
    rng: random.Random
    doc_chars: int
    at: int = 0  # position in the source
    current: int = 0
    since_switch: int = 0

    def next_edit(self) -> tuple[Doc, dict, dict]:
        """Apply the next keystroke to the client's copy; (doc, change, cursor position)."""
        self.since_switch += 1
        if self.since_switch > self.rng.randint(150, 600):
            self.current, self.since_switch = self.rng.randrange(len(self.docs)), 0
        doc = self.docs[self.current]
        roll = self.rng.random()
        if len(doc.text) > self.doc_chars:  # keep documents bounded: drop the first half of the lines
            cut = doc.text.find("\n", len(doc.text) // 2) + 1 or len(doc.text) // 2
            change = {"range": {"start": position(doc.text, 0), "end": position(doc.text, cut)}, "text": ""}
            doc.text, doc.cursor = doc.text[cut:], max(0, doc.cursor - cut)
        elif roll < 0.05 and doc.cursor > 0:  # backspace
            start = doc.cursor - 1
            change = {
                "range": {"start": position(doc.text, start), "end": position(doc.text, doc.cursor)},
                "text": "",
            }
            doc.text, doc.cursor = doc.text[:start] + doc.text[doc.cursor :], start
        else:
            if roll < 0.08 and "\n" in doc.text:  # jump to the end of another line, then type there
                ends = [m.start() for m in re.finditer("\n", doc.text)]
                doc.cursor = self.rng.choice(ends)
            ch = self.source[self.at % len(self.source)]
            self.at += 1
            at = position(doc.text, doc.cursor)
            change = {"range": {"start": at, "end": at}, "text": ch}
            doc.text = doc.text[: doc.cursor] + ch + doc.text[doc.cursor :]
            doc.cursor += len(ch)
        doc.version += 1
        return doc, change, position(doc.text, doc.cursor)


# ---- one editor window ---------------------------------------------------------------------------
class Window:
    """A `mellum-lsp serve` process and this process as its LSP client over stdio."""

    def __init__(self, index: int, root: Path, settings: dict, env: dict, log: Path) -> None:
        self.index, self.root, self.settings, self.env, self.log = index, root, settings, env, log
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self.messages: list[str] = []  # window/showMessage texts
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.log, "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "mellum_lsp.cli", "serve", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=err, env=self.env, limit=2**24,
            )  # fmt: skip
        self._reader = asyncio.ensure_future(self._read())
        caps = {"textDocument": {"inlineCompletion": {}, "synchronization": {"didSave": True}},
                "workspace": {"configuration": True}, "window": {"workDoneProgress": True}}  # fmt: skip
        await self.request("initialize", {"processId": os.getpid(), "rootUri": self.root.as_uri(), "capabilities": caps,
                                          "workspaceFolders": [{"uri": self.root.as_uri(), "name": "soak"}],
                                          "initializationOptions": {"mellum": self.settings}})  # fmt: skip
        self.notify("initialized", {})
        await self.request("mellum/status", {"waitForIndex": True})

    def _write(self, msg: dict) -> None:
        body = json.dumps(msg).encode()
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def notify(self, method: str, params: Any) -> None:
        self._write({"jsonrpc": "2.0", "method": method, "params": params})

    async def request(self, method: str, params: Any, timeout: float = 300.0) -> Any:
        rid = next(self._ids)
        future = self._pending[rid] = asyncio.get_running_loop().create_future()
        self._write({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        await self.proc.stdin.drain()
        msg = await asyncio.wait_for(future, timeout)
        if "error" in msg:
            raise RuntimeError(f"window {self.index}: {method} failed: {msg['error']}")
        return msg.get("result")

    async def _read(self) -> None:
        out = self.proc.stdout
        while True:
            length = None
            while (line := await out.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if not line or length is None:
                break
            msg = json.loads(await out.readexactly(length))
            if "method" in msg and "id" in msg:  # the server's request: answer as an editor would
                result = (
                    [self.settings] * len(msg["params"]["items"])
                    if msg["method"] == "workspace/configuration"
                    else None
                )
                self._write({"jsonrpc": "2.0", "id": msg["id"], "result": result})
            elif "method" in msg:
                if msg["method"] == "window/showMessage":
                    self.messages.append(msg["params"]["message"])
            elif (future := self._pending.pop(msg.get("id"), None)) is not None and not future.done():
                future.set_result(msg)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RuntimeError(f"window {self.index}: the server's output ended"))

    async def stop(self) -> int:
        with contextlib.suppress(Exception):
            await self.request("shutdown", None, timeout=30)
            self.notify("exit", None)
            await self.proc.stdin.drain()
        try:
            return await asyncio.wait_for(self.proc.wait(), 30)
        except asyncio.TimeoutError:
            self.proc.kill()
            return await self.proc.wait()


# ---- measuring -----------------------------------------------------------------------------------
def proc_counts(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {"rss_mb": int(re.search(r"VmRSS:\s+(\d+)", status)[1]) / 1024,
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": int(re.search(r"Threads:\s+(\d+)", status)[1])}  # fmt: skip


def peer_pid(path: Path) -> int:
    with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as s:
        s.connect(str(path))
        creds = s.getsockopt(socketlib.SOL_SOCKET, socketlib.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclass
class Run:
    keystrokes: int = 0
    latencies: list[float] = field(default_factory=list)  # after the warm-up
    errors: list[str] = field(default_factory=list)
    suggestions: int = 0
    samples: list[dict] = field(default_factory=list)


async def sample(run: Run, windows: list[Window], stats_client: EngineClient, engine_pid: int) -> dict:
    stats = await stats_client.request("stats")
    servers = []
    for w in windows:
        status = await w.request("mellum/status", {})
        servers.append(proc_counts(w.proc.pid) | {"tasks": status.get("tasks")})
    s = {"keystrokes": run.keystrokes, "engine": proc_counts(engine_pid) | {"tasks": stats.get("tasks")},
         "cache_mb": stats["cache"]["bytes"] / 2**20, "cache_budget_mb": stats["cache"]["budget_bytes"] / 2**20,
         "cache_entries": stats["cache"]["entries"], "servers": servers}  # fmt: skip
    run.samples.append(s)
    return s


async def type_in(w: Window, typist: Typist, run: Run, quota: int, warmup: int, on_key) -> None:
    for _ in range(quota):
        doc, change, at = typist.next_edit()
        w.notify("textDocument/didChange", {"textDocument": {"uri": doc.uri, "version": doc.version},
                                            "contentChanges": [change]})  # fmt: skip
        t0 = time.perf_counter()
        try:
            result = await w.request("textDocument/inlineCompletion", {"textDocument": {"uri": doc.uri}, "position": at,
                                                                       "context": {"triggerKind": 2}})  # fmt: skip
            run.suggestions += bool(result and result.get("items"))
        except RuntimeError as e:
            run.errors.append(str(e)[:300])
        ms = (time.perf_counter() - t0) * 1e3
        run.keystrokes += 1
        if run.keystrokes > warmup:
            run.latencies.append(ms)
        await on_key()


async def soak(a: argparse.Namespace, work: Path) -> dict:
    root = work / "ws"
    shutil.copytree(SAMPLES, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".git").mkdir()
    (root / "soak").mkdir()
    private = Path(tempfile.mkdtemp(prefix="mlsp-soak-"))  # short: socket paths are limited to ~100 bytes
    os.chmod(private, 0o700)
    sock = private / "e.sock"
    env = dict(os.environ, XDG_STATE_HOME=str(work / "state"), XDG_RUNTIME_DIR=str(private))
    settings: dict[str, Any] = {
        "engine": {"socket": str(sock), "idleExitS": 30, "args": ["--cache-mb", f"{a.cache_mb:g}"]},
        "completion": {"debounceMs": 0, "maxTokens": a.max_tokens, "prefillOnOpen": True},
        "context": {"budgetTokens": a.context_tokens},
        "telemetry": {"enabled": True},
    }
    if a.model:
        settings["model"] = {"path": a.model, "backend": a.backend}
    elif a.backend != "auto":
        settings["model"] = {"backend": a.backend}
    source = corpus()
    windows = [Window(i, root, settings, env, work / f"server-{i}.log") for i in range(a.windows)]
    run = Run()
    stats_client = None
    engine_pid = None
    t_start = time.monotonic()
    try:
        await asyncio.gather(*(w.start() for w in windows))
        typists = []
        for w in windows:
            docs = [Doc((root / "soak" / f"w{w.index}_d{d}.py").as_uri()) for d in range(a.documents)]
            for doc in docs:
                w.notify("textDocument/didOpen", {"textDocument": {"uri": doc.uri, "languageId": "python",
                                                                   "version": doc.version, "text": ""}})  # fmt: skip
            typists.append(Typist(docs, source, random.Random(a.seed + w.index), a.doc_chars,
                                  at=w.index * len(source) // max(1, a.windows)))  # fmt: skip
        await windows[0].request("mellum/engineStats", {})  # the first window starts the shared engine
        engine_pid = peer_pid(sock)
        stats_client = await EngineClient.connect(sock)
        quotas = [a.keystrokes // a.windows + (i < a.keystrokes % a.windows) for i in range(a.windows)]
        marks = {"next": a.sample_every}
        sampling = asyncio.Lock()

        async def on_key() -> None:
            if run.keystrokes >= marks["next"] or run.keystrokes == a.warmup:
                marks["next"] = run.keystrokes + a.sample_every
                async with sampling:
                    s = await sample(run, windows, stats_client, engine_pid)
                if a.progress:
                    e = s["engine"]
                    print(f"{s['keystrokes']:>7} keys  engine {e['rss_mb']:.0f} MB {e['fds']} fds {e['threads']} threads "
                          f"{e['tasks']} tasks  cache {s['cache_mb']:.0f}/{s['cache_budget_mb']:.0f} MB  "
                          f"servers {[round(x['rss_mb']) for x in s['servers']]} MB  "
                          f"p99 {percentile(run.latencies[-5000:], 0.99):.1f} ms", file=sys.stderr, flush=True)  # fmt: skip

        await asyncio.gather(
            *(
                type_in(w, t, run, q, a.warmup, on_key)
                for w, t, q in zip(windows, typists, quotas, strict=True)
            )
        )
        await asyncio.sleep(0.5)  # background work (indexing of edits, counters) settles
        final = await sample(run, windows, stats_client, engine_pid)
        desynced = []
        for w, t in zip(windows, typists, strict=True):
            for doc in t.docs:
                held = await w.request("mellum/document", {"uri": doc.uri})
                if held["text"] != doc.text or held["version"] != doc.version:
                    desynced.append(doc.uri)
    finally:
        duration = time.monotonic() - t_start
        codes = [await w.stop() for w in windows if w.proc is not None]
        if stats_client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stats_client.request("shutdown"), 10)
            await stats_client.close()
        engine_exited = engine_pid is None or await _gone(engine_pid, 15)
        shutil.rmtree(private, ignore_errors=True)
    warm = next((s for s in run.samples if s["keystrokes"] >= a.warmup), run.samples[0])
    return report(a, run, warm, final, duration, desynced, codes, engine_exited, windows)


async def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True  # a zombie of its own parent: exited
        except (FileNotFoundError, IndexError):
            return True
        await asyncio.sleep(0.1)
    return False


def report(a, run: Run, warm: dict, final: dict, duration: float, desynced: list, codes: list,
           engine_exited: bool, windows: list[Window]) -> dict:  # fmt: skip
    e0, e1 = warm["engine"], final["engine"]
    growth = (e1["rss_mb"] - e0["rss_mb"]) / e0["rss_mb"]
    server_growth = [
        (s1["rss_mb"] - s0["rss_mb"]) / s0["rss_mb"]
        for s0, s1 in zip(warm["servers"], final["servers"], strict=True)
    ]
    cache_max = max(s["cache_mb"] for s in run.samples)
    tasks_known = all(s.get("tasks") is not None for s in (*warm["servers"], *final["servers"]))
    targets = {
        "engine_rss_growth_le_5pct": growth <= 0.05,
        "servers_rss_growth_le_5pct": all(g <= 0.05 for g in server_growth),
        "cache_within_budget": cache_max <= final["cache_budget_mb"],
        "fds_flat": e1["fds"] <= e0["fds"] and all(s1["fds"] <= s0["fds"] for s0, s1 in zip(warm["servers"], final["servers"], strict=True)),
        "threads_flat": e1["threads"] <= e0["threads"] and all(s1["threads"] <= s0["threads"] for s0, s1 in zip(warm["servers"], final["servers"], strict=True)),
        "tasks_flat": e1["tasks"] <= e0["tasks"] and (not tasks_known or all(s1["tasks"] <= s0["tasks"] for s0, s1 in zip(warm["servers"], final["servers"], strict=True))),
        "no_errors": not run.errors,
        "documents_in_sync": not desynced,
        "clean_exit": all(c == 0 for c in codes) and engine_exited,
    }  # fmt: skip
    return {
        "keystrokes": run.keystrokes,
        "windows": a.windows,
        "documents": a.windows * a.documents,
        "warmup": a.warmup,
        "duration_s": round(duration, 1),
        "keystrokes_per_s": round(run.keystrokes / duration, 1),
        "rss_start_mb": round(e0["rss_mb"], 1),
        "rss_end_mb": round(e1["rss_mb"], 1),
        "rss_growth": round(growth, 4),
        "cache_mb_max": round(cache_max, 1),
        "cache_budget_mb": round(final["cache_budget_mb"], 1),
        "open_fds_start": e0["fds"],
        "open_fds_end": e1["fds"],
        "threads_start": e0["threads"],
        "threads_end": e1["threads"],
        "tasks_start": e0["tasks"],
        "tasks_end": e1["tasks"],
        "p50_ms": round(statistics.median(run.latencies), 2) if run.latencies else None,
        "p99_ms": round(percentile(run.latencies, 0.99), 2),
        "p999_ms": round(percentile(run.latencies, 0.999), 2),
        "max_ms": round(max(run.latencies, default=0.0), 2),
        "suggestions": run.suggestions,
        "errors": len(run.errors),
        "first_errors": run.errors[:3],
        "desynced": desynced,
        "servers": [
            {
                "rss_start_mb": round(s0["rss_mb"], 1),
                "rss_end_mb": round(s1["rss_mb"], 1),
                "rss_growth": round(g, 4),
                "fds_start": s0["fds"],
                "fds_end": s1["fds"],
                "threads_start": s0["threads"],
                "threads_end": s1["threads"],
                "tasks_start": s0.get("tasks"),
                "tasks_end": s1.get("tasks"),
                "exit_code": c,
                "messages": w.messages[:3],
            }
            for s0, s1, g, c, w in zip(
                warm["servers"], final["servers"], server_growth, codes, windows, strict=True
            )
        ],  # fmt: skip
        "engine_exited": engine_exited,
        "targets": targets,
        "ok": all(targets.values()),
        "samples": run.samples if a.samples else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mellum-lsp bench soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--keystrokes", type=int, default=100_000)
    p.add_argument(
        "--windows", type=int, default=2, help="language servers (editor windows) sharing the engine"
    )
    p.add_argument("--documents", type=int, default=3, help="documents typed into per window")
    p.add_argument(
        "--warmup", type=int, default=None, help="keystrokes before the baseline (default 10%%, at most 5000)"
    )
    p.add_argument("--sample-every", type=int, default=None, help="keystrokes between samples (default 2%%)")
    p.add_argument("--max-tokens", type=int, default=4, help="tokens per suggestion")
    p.add_argument("--context-tokens", type=int, default=1024, help="repository-context budget")
    p.add_argument(
        "--doc-chars", type=int, default=3000, help="a document's first half is deleted past this size"
    )
    p.add_argument("--cache-mb", type=float, default=64.0, help="the engine's KV-cache budget")
    p.add_argument("--model", metavar="DIR", help="model folder (default: the embedded model)")
    p.add_argument("--backend", choices=["auto", "torch", "ort"], default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", action="store_true", help="include every sample in the JSON")
    p.add_argument("--progress", action="store_true", help="print each sample to stderr")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.keystrokes < 10 or a.windows < 1 or a.documents < 1:
        p.error("--keystrokes must be at least 10, --windows and --documents at least 1")
    a.warmup = min(a.warmup if a.warmup is not None else min(5000, a.keystrokes // 10), a.keystrokes - 1)
    a.sample_every = a.sample_every or max(50, a.keystrokes // 50)
    work = Path(tempfile.mkdtemp(prefix="mellum-soak-"))
    try:
        out = asyncio.run(soak(a, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            if k not in ("samples", "servers"):
                print(f"{k:>20}: {v}")
        for i, s in enumerate(out["servers"]):
            print(f"{'server ' + str(i):>20}: {s}")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
