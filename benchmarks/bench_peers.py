"""Peer benchmark: our engine against llama.cpp on the same Mellum model, side by side in one run.

    mellum-lsp bench peers [--model DIR] [--json] [--threads 1,2] [--contexts 2048,8192]
                           [--rounds 3] [--keystrokes 20] [--decode-tokens 128] [--quick]

Needs the ``peers`` extra (llama-cpp-python 0.3.36, gguf). ``benchmarks.gguf_export`` writes the
model folder's real weights as GGUFs of llama.cpp's native ``mellum`` architecture (Q8_0 and
Q4_0; F32 for the agreement check), llama.cpp runs them through its C API with ``swa_full`` off,
one sequence, n_batch 2048 / n_ubatch 512 (llama-server's defaults), flash attention off and on
(its best per row counts). Both engines get token ids, never text: the rows time model work.

- agreement: top-1 of llama.cpp's logits vs ours, position by position, over files held out of
  the embedded model's training (``HELDOUT``), on the ``exact`` GGUF layout (gguf_export).
  llama.cpp 0.3.36's mellum graph rotates the sliding layers with the full layers' rope theta
  (it never reads ``rope.freq_base_swa``), so it computes another function than Mellum's
  (sliding theta 10,000): the control row compares it with our PyTorch reference given that same
  theta (needs torch; skipped with a note otherwise), which isolates the conversion itself.
- decode: greedy tokens/s after a held-out prompt: ours plain and with our speculation (prompt
  lookup + MTP), llama.cpp plain. Each side produces ``--decode-tokens`` tokens.
- cold prefill: an empty cache, N tokens of repository text in, the last position's logits out
  (ours in the engine's 512-token chunks).
- warm keystroke: the cache holds the N tokens; a keystroke re-tokenises the tail: roll back one
  token, run two (the changed last token and a new one), take the argmax. Median of
  ``--keystrokes`` keystrokes; a check that the warm logits equal a cold run's is reported.
- rss: peak resident memory of a process that loads one engine and prefills the largest N.
- overheads: what our decode step is made of (time inside ``session.run`` vs the Python around
  it), and our Engine's full keystroke path vs the bare backend -- what deliverable 2 attacks.

Timing uses the ``timing`` layout (gguf_export: per-token expert work as the model's; the dense
layer 0 is cheaper for llama.cpp than for us, so the comparison leans its way). Candidates are
interleaved round by round and every figure is a median; the machine is shared, so treat
differences under ~15 % as noise. Offers ``LlamaModel``, ``LlamaContext``, ``Ours``, ``agreement``,
``measure``, ``step_overheads`` and ``main``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.bench_engine import CONTEXT_FILES, STDLIB
from benchmarks.gguf_export import export_gguf
from engine.backends import load_backend
from engine.backends.base import Backend
from engine.speculative import NO_SPECULATION, SpecConfig, greedy_decode
from engine.tokenizer import Tokenizer

# Held out of the embedded model's training (tools/corpus.py split, seed 20250101; a test checks it).
HELDOUT = ("posixpath.py", "string.py", "runpy.py", "timeit.py")
PREFILL_CHUNK = 512  # as EngineConfig.prefill_chunk
PEERS_MISSING = "the peer benchmark needs the peers extra: pip install 'mellum-lsp[peers]' ({})"


# -- llama.cpp through its C API -----------------------------------------------------------------


def _llama():
    import logging

    try:
        import llama_cpp
    except ImportError as e:
        raise RuntimeError(PEERS_MISSING.format(e)) from None
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # its log callback prints below ERROR
    return llama_cpp


class LlamaModel:
    """A GGUF loaded by llama.cpp (CPU only); contexts are made from it.

    ``extra_bufts`` (llama.cpp's "extra buffer types") is off by default: on x86 they are the AMX
    kernels and the Q4_0 repacking. A ``GGML_NATIVE`` build on this VM compiles AMX in (the CPU
    advertises it) and its Q8_0 matmul dies with SIGILL on any batch of more than one token (the VM
    does not enable AMX tile state). x86 has no Q8_0 repacking, so Q8_0 loses nothing by this;
    Q4_0 loses its 8x8 repacked kernels."""

    def __init__(self, path: str | Path, extra_bufts: bool = False) -> None:
        self.lib = lib = _llama()
        params = lib.llama_model_default_params()
        params.n_gpu_layers = 0
        params.use_extra_bufts = extra_bufts
        self.ptr = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.ptr:
            raise RuntimeError(f"llama.cpp could not load {path} (run with LLAMA_LOG to see why)")
        self.vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.ptr))
        self.path = str(path)

    def close(self) -> None:
        if self.ptr:
            self.lib.llama_model_free(self.ptr)
            self.ptr = None


class LlamaContext:
    """One sequence's KV state in llama.cpp: ``forward`` appends ids and returns logits, ``truncate``
    rolls back, ``clear`` empties it -- the verbs ``Ours`` offers too."""

    def __init__(self, model: LlamaModel, threads: int, flash_attn: bool, n_ctx: int,
                 n_batch: int = 2048, n_ubatch: int = 512) -> None:  # fmt: skip
        self.lib = lib = model.lib
        p = lib.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = n_ctx, n_batch, n_ubatch, 1
        p.n_threads = p.n_threads_batch = threads
        p.flash_attn_type = (
            lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        p.swa_full = False  # keep sliding layers at window size, as our cache does
        p.no_perf = True
        self.ctx = lib.llama_init_from_model(model.ptr, p)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context (n_ctx {n_ctx}) for {model.path}")
        self.mem = lib.llama_get_memory(self.ctx)
        self.vocab, self.held = model.vocab, 0
        self.n_batch = n_batch = lib.llama_n_batch(self.ctx)  # llama.cpp caps it at n_ctx
        self.name = f"llama.cpp fa={'on' if flash_attn else 'off'}"
        self.batch = lib.llama_batch_init(n_batch, 0, 1)
        self._token = np.ctypeslib.as_array(self.batch.token, shape=(n_batch,))
        self._pos = np.ctypeslib.as_array(self.batch.pos, shape=(n_batch,))
        self._logits = np.ctypeslib.as_array(self.batch.logits, shape=(n_batch,))
        np.ctypeslib.as_array(self.batch.n_seq_id, shape=(n_batch,))[:] = 1
        for i in range(n_batch):
            self.batch.seq_id[i][0] = 0

    def clear(self) -> None:
        self.lib.llama_memory_clear(self.mem, True)
        self.held = 0

    def truncate(self, n: int) -> None:
        if not self.lib.llama_memory_seq_rm(self.mem, 0, n, -1):
            raise RuntimeError(f"llama.cpp refused to roll back from {self.held} to {n} tokens")
        self.held = n

    def forward(self, ids: list[int], keep: int = 1) -> np.ndarray:
        """Append ``ids``; the logits (keep, vocab) of the last ``keep`` positions (keep <= n_batch)."""
        out = None
        for i in range(0, len(ids), self.n_batch):
            part = ids[i : i + self.n_batch]
            s = len(part)
            want = min(s, max(0, keep - (len(ids) - i - s)))  # positions of this part that are kept
            self._token[:s] = part
            self._pos[:s] = np.arange(self.held, self.held + s)
            self._logits[:s] = 0
            self._logits[s - max(want, 1) : s] = 1
            self.batch.n_tokens = s
            rc = self.lib.llama_decode(self.ctx, self.batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} on {s} tokens at position {self.held}")
            self.held += s
            if want:
                got = np.ctypeslib.as_array(
                    self.lib.llama_get_logits(self.ctx), shape=(max(want, 1), self.vocab)
                )
                out = got.copy() if out is None else np.concatenate([out, got])
        return out

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_batch_free(self.batch)
            self.lib.llama_free(self.ctx)
            self.ctx = None


# -- our engine, the same verbs --------------------------------------------------------------------


class Ours:
    """Our backend with one sequence, prefilling in the engine's chunks."""

    def __init__(self, backend: Backend) -> None:
        self.backend, self.name = backend, "ours"
        self.seq = backend.new_sequence()

    @property
    def held(self) -> int:
        return len(self.seq.ids)

    def clear(self) -> None:
        self.seq = self.backend.new_sequence()

    def truncate(self, n: int) -> None:
        self.backend.truncate(self.seq, n)

    def forward(self, ids: list[int], keep: int = 1) -> np.ndarray:
        if keep <= 0 or len(ids) <= PREFILL_CHUNK:
            return self.backend.forward(self.seq, ids, logits_to_keep=keep)
        for i in range(0, len(ids) - PREFILL_CHUNK, PREFILL_CHUNK):
            self.backend.forward(self.seq, ids[i : i + PREFILL_CHUNK], logits_to_keep=1)
        rest = len(ids) - (len(ids) - 1) // PREFILL_CHUNK * PREFILL_CHUNK
        return self.backend.forward(self.seq, ids[-rest:], logits_to_keep=min(keep, rest))


# -- inputs ----------------------------------------------------------------------------------------


def heldout_windows(tok: Tokenizer, tokens: int) -> list[list[int]]:
    """The first ``tokens`` ids of each held-out file, laid out as in training (``<filename>path\\n...``)."""
    return [
        [tok.fim.file, *tok.encode(f"{name}\n{(STDLIB / name).read_text()}")][:tokens] for name in HELDOUT
    ]


def context_stream(tok: Tokenizer, tokens: int) -> list[int]:
    """``tokens`` ids of repository text (stdlib files as ``<filename>`` blocks)."""
    ids: list[int] = []
    for name in CONTEXT_FILES:
        ids += [tok.fim.file, *tok.encode(f"{name}\n{(STDLIB / name).read_text()}")]
        if len(ids) >= tokens:
            return ids[:tokens]
    raise ValueError(f"the context files hold {len(ids)} tokens, fewer than the {tokens} asked for")


# -- measurements ------------------------------------------------------------------------------------


def agreement(ours: Ours, peer: LlamaContext, windows: list[list[int]]) -> dict:
    """Share of positions where llama.cpp's top-1 token equals ours."""
    same = total = 0
    diffs = []
    for ids in windows:
        ours.clear()
        peer.clear()
        a = ours.forward(ids, keep=0)
        b = peer.forward(ids, keep=len(ids))
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(ids)
        diffs.append(float(np.median(np.abs(a - b).max(-1))))
    return {"top1": same / total, "positions": total, "median_max_abs_logit_diff": statistics.median(diffs)}


def same_theta_reference(model_dir: str, work: Path) -> Path:
    """A copy of ``model_dir`` (config rewritten, weights linked) whose sliding layers use the full
    layers' rope theta, as llama.cpp 0.3.36's mellum graph does; without the MTP layer."""
    folder = work / "same-theta-reference"
    folder.mkdir(exist_ok=True)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    rope = config["rope_parameters"]
    rope["sliding_attention"] = {"rope_type": "default", "rope_theta": rope["full_attention"]["rope_theta"]}
    for key in ("num_nextn_predict_layers", "mtp_layer_types", "mtp_mlp_layer_types"):
        config.pop(key, None)
    (folder / "config.json").write_text(json.dumps(config))
    for f in Path(model_dir).iterdir():
        if f.suffix == ".safetensors" or f.name.startswith("tokenizer"):
            target = folder / f.name
            if not target.exists():
                target.symlink_to(f.resolve())
    return folder


def _greedy(runner, logits: np.ndarray, n: int) -> list[int]:
    out = [int(np.argmax(logits))]
    while len(out) < n:
        out.append(int(np.argmax(runner.forward([out[-1]])[-1])))
    return out


def decode_rate(
    runner, prompt: list[int], n: int, spec: SpecConfig = NO_SPECULATION
) -> tuple[float, list[int], float]:
    """(tokens/s, tokens, acceptance) of ``n`` greedy tokens after ``prompt`` (prefill not timed); ours
    through the engine's ``greedy_decode`` with ``spec``, llama.cpp in a plain loop."""
    runner.clear()
    logits = runner.forward(prompt)[-1]
    t0 = time.perf_counter()
    if isinstance(runner, Ours):
        ids, _, stats = greedy_decode(
            runner.backend, runner.seq, logits, n, spec, on_tokens=lambda new: False
        )
        acceptance = stats.acceptance
    else:
        ids, acceptance = _greedy(runner, logits, n), 0.0
    return len(ids) / (time.perf_counter() - t0), ids, acceptance


def cold_prefill_ms(runner, ids: list[int]) -> float:
    runner.clear()
    t0 = time.perf_counter()
    runner.forward(ids)
    return (time.perf_counter() - t0) * 1e3


def warm_keystrokes_ms(runner, stream: list[int], n: int, keystrokes: int) -> tuple[list[float], np.ndarray]:
    """Per keystroke (the runner holds stream[:n]): roll back one token, run two, argmax. Returns the
    times and the last keystroke's logits."""
    times, logits = [], None
    for k in range(keystrokes):
        t0 = time.perf_counter()
        runner.truncate(n - 1 + k)
        logits = runner.forward(stream[n - 1 + k : n + 1 + k])[-1]
        int(np.argmax(logits))
        times.append((time.perf_counter() - t0) * 1e3)
    return times, logits


def measure(cands: dict, stream: list[int], prompt: list[int], contexts: list[int], rounds: int,
            keystrokes: int, decode_tokens: int, long_rounds: int) -> dict:  # fmt: skip
    """Every row for every candidate, interleaved round by round; medians plus the raw samples."""
    samples: dict[str, dict] = {
        name: {"decode": [], "decode_spec": [], "cold": {}, "warm": {}} for name in cands
    }
    outputs: dict[str, list[int]] = {}
    acceptance = 0.0
    checks: dict[str, dict] = {}
    for r in range(rounds):
        for name, runner in cands.items():
            rate, ids, _ = decode_rate(runner, prompt, decode_tokens)
            samples[name]["decode"].append(rate)
            outputs[name] = ids
            if isinstance(runner, Ours):
                rate, ids, acceptance = decode_rate(runner, prompt, decode_tokens, SpecConfig())
                samples[name]["decode_spec"].append(rate)
                outputs[name + " spec"] = ids
        for n in contexts:
            if n > 8192 and r >= long_rounds:
                continue
            for name, runner in cands.items():
                samples[name]["cold"].setdefault(n, []).append(cold_prefill_ms(runner, stream[:n]))
                times, logits = warm_keystrokes_ms(runner, stream, n, keystrokes)
                samples[name]["warm"].setdefault(n, []).extend(times)
                if r == 0 and n == contexts[0]:  # the warm state must compute what a cold run does
                    runner.clear()
                    cold = runner.forward(stream[: n + keystrokes])[-1]
                    checks[name] = {"warm_equals_cold_top1": int(np.argmax(logits)) == int(np.argmax(cold)),
                                    "max_abs_logit_diff": float(np.abs(logits - cold).max())}  # fmt: skip
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    rows = {}
    for name, s in samples.items():
        rows[name] = {
            "decode_tok_s": statistics.median(s["decode"]),
            "cold_prefill_ms": {str(n): statistics.median(v) for n, v in s["cold"].items()},
            "warm_keystroke_ms": {str(n): statistics.median(v) for n, v in s["warm"].items()},
            "check": checks.get(name),
            "samples": {
                "decode_tok_s": s["decode"],
                "cold_prefill_ms": {str(n): v for n, v in s["cold"].items()},
            },
        }
        if s["decode_spec"]:
            rows[name]["decode_spec_tok_s"] = statistics.median(s["decode_spec"])
            rows[name]["spec_acceptance"] = acceptance
            rows[name]["spec_identical_to_plain"] = outputs[name + " spec"] == outputs[name]
            rows[name]["samples"]["decode_spec_tok_s"] = s["decode_spec"]
    ref = outputs.get("ours", [])
    for name in cands:
        if name != "ours":
            same = next(
                (i for i, (a, b) in enumerate(zip(ref, outputs[name], strict=False)) if a != b), len(ref)
            )
            rows[name]["greedy_tokens_equal_to_ours"] = same
    return rows


def best_of(rows: list[dict]) -> dict:
    """llama.cpp's best per row over its settings (fastest decode, lowest times)."""

    def lowest(key):
        return {n: min(r[key][n] for r in rows) for n in rows[0][key]}

    return {"decode_tok_s": max(r["decode_tok_s"] for r in rows),
            "cold_prefill_ms": lowest("cold_prefill_ms"), "warm_keystroke_ms": lowest("warm_keystroke_ms")}  # fmt: skip


def ratios(ours: dict, peer: dict) -> dict:
    """ours / llama.cpp: above 1 is better for us on decode, below 1 is better for us on times."""
    return {
        "decode_spec": ours["decode_spec_tok_s"] / peer["decode_tok_s"],
        "decode_plain": ours["decode_tok_s"] / peer["decode_tok_s"],
        "warm_keystroke": {n: ours["warm_keystroke_ms"][n] / v for n, v in peer["warm_keystroke_ms"].items()},
        "cold_prefill": {n: ours["cold_prefill_ms"][n] / v for n, v in peer["cold_prefill_ms"].items()},
    }


def _timed(fn: Callable, into: list[float]) -> Callable:
    def run(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - t0)

    return run


def step_overheads(ours: Ours, peer: LlamaContext, prompt: list[int], n: int, rounds: int) -> dict:
    """Our decode step split into time inside ONNX Runtime's ``run_with_iobinding`` and the Python
    around it (the engine's loop, IO binding, KV bookkeeping), next to llama.cpp's whole step."""
    sessions = [g.session for g in (ours.backend.main, getattr(ours.backend, "mtp", None)) if g is not None]
    out = {}
    for label, spec in (("plain", NO_SPECULATION), ("spec", SpecConfig())):
        inside: list[float] = []
        per_step, per_run = [], []
        for _ in range(rounds):
            inside.clear()
            for s in sessions:  # an instance attribute shadows the method for this probe only
                s.run_with_iobinding = _timed(type(s).run_with_iobinding.__get__(s), inside)
            try:
                ours.clear()
                logits = ours.forward(prompt)[-1]
                inside.clear()
                t0 = time.perf_counter()
                ids, _, stats = greedy_decode(
                    ours.backend, ours.seq, logits, n, spec, on_tokens=lambda new: False
                )
                total = time.perf_counter() - t0
            finally:
                for s in sessions:
                    del s.run_with_iobinding
            steps = stats.steps if spec.enabled else len(ids) - 1
            per_step.append(total / steps * 1e3)
            per_run.append(sum(inside) / len(inside) * 1e3)
            out[label] = {"steps": steps, "tokens": len(ids), "session_runs_per_step": len(inside) / steps}
        ort_ms = statistics.median(per_run) * out[label]["session_runs_per_step"]
        step_ms = statistics.median(per_step)
        out[label] |= {"step_ms": step_ms, "inside_ort_ms": ort_ms, "python_ms": step_ms - ort_ms,
                       "python_share": (step_ms - ort_ms) / step_ms}  # fmt: skip
    times = []
    for _ in range(rounds):
        peer.clear()
        peer.forward(prompt)
        token = 7
        t0 = time.perf_counter()
        for _ in range(n - 1):
            token = int(np.argmax(peer.forward([token])[-1]))
        times.append((time.perf_counter() - t0) / (n - 1) * 1e3)
    out["llama_cpp_step_ms"] = statistics.median(times)
    return out


def engine_path_keystroke(backend: Backend, tok: Tokenizer, n: int, keystrokes: int) -> float:
    """Median ms to the first token of a warm keystroke through ``Engine.execute`` (prompt building,
    tokenising the edited line, the prefix store, healing) -- compare with the bare backend's row."""
    from benchmarks.bench_engine import CURRENT, context_chunks, run_job
    from benchmarks.bench_engine import keystrokes as typing
    from engine.protocol import CompleteParams, Sampling
    from engine.service import Engine, EngineConfig

    states = typing(keystrokes + 1)
    file_tokens = len(tok.encode(states[0][0])) + len(tok.encode(states[0][1]))
    chunks = tuple(context_chunks(tok, max(0, n - file_tokens)))
    engine = Engine(backend, tok, EngineConfig(cache_mb=4096))
    times = []
    for i, (prefix, suffix) in enumerate(states):
        params = CompleteParams(prefix, suffix, chunks, CURRENT, "doc", Sampling(max_tokens=1))
        t0 = time.perf_counter()
        run_job(engine, params, i)
        if i:  # the first one primes the cache
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# -- resident memory in a fresh process -------------------------------------------------------------


def _rss_mb() -> dict:
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def probe(kind: str, model: str, gguf: str, tokens: int, threads: int) -> dict:
    """Load one engine in this process, prefill ``tokens``: resident memory before and at peak."""
    tok = Tokenizer.from_folder(model)
    stream = context_stream(tok, tokens)
    if kind == "llama":
        _llama()
    base = _rss_mb()["VmRSS"]
    if kind == "ours":
        runner = Ours(load_backend(model, "ort", threads=threads))
    else:
        runner = LlamaContext(LlamaModel(gguf), threads, flash_attn=False, n_ctx=tokens + 64)
    runner.forward(stream)
    now = _rss_mb()
    return {
        "base_mb": base,
        "rss_mb": now["VmRSS"],
        "peak_mb": now["VmHWM"],
        "engine_mb": now["VmHWM"] - base,
    }


def rss(model: str, gguf: str, tokens: int, threads: int) -> dict:
    out = {}
    for kind in ("ours", "llama"):
        cmd = [sys.executable, "-m", "benchmarks.bench_peers", "--probe", kind, "--model", model, "--gguf", gguf,
               "--contexts", str(tokens), "--threads", str(threads)]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
        if r.returncode:
            raise RuntimeError(f"the {kind} memory probe failed: {r.stderr[-2000:]}")
        out["ours" if kind == "ours" else "llama_cpp"] = json.loads(r.stdout)
    out["tokens"] = tokens
    return out


# -- the run --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mellum-lsp bench peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--model", help="model folder with an ONNX export and safetensors (default: the embedded model)"
    )
    p.add_argument("--threads", default="1,2", help="thread counts, each run for both engines")
    p.add_argument("--contexts", default="2048,8192")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--long-rounds", type=int, default=1, help="rounds for contexts above 8192")
    p.add_argument("--keystrokes", type=int, default=20)
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--agreement-tokens", type=int, default=1024, help="ids per held-out file")
    p.add_argument("--workdir", help="where the GGUFs go (default: a temporary folder)")
    p.add_argument("--no-rss", action="store_true")
    p.add_argument("--llama-passive-threads", action="store_true",
                   help="OMP_WAIT_POLICY=PASSIVE for llama.cpp's OpenMP threads (as our sessions do not spin); "
                   "helps it with 2+ threads on a busy machine, costs it ~20%% at 1 thread")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--json", action="store_true")
    p.add_argument("--probe", choices=("ours", "llama"), help=argparse.SUPPRESS)
    p.add_argument("--gguf", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.model is None:
        from engine.embedded import embedded_model_dir

        a.model = str(embedded_model_dir())
    threads = [int(x) for x in a.threads.split(",")]
    contexts = [int(x) for x in a.contexts.split(",")]
    if a.probe:
        print(json.dumps(probe(a.probe, a.model, a.gguf, contexts[-1], threads[0])))
        return 0
    if a.quick:
        threads, contexts, a.rounds, a.keystrokes = threads[:1], [512], 1, 5
        a.decode_tokens, a.agreement_tokens, a.no_rss = 16, 256, True
    if a.llama_passive_threads:  # read once, when llama.cpp's OpenMP runtime loads
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        _llama()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mellum-peers-") as tmp:
        work = Path(a.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        return _run(a, work, threads, contexts)


def _run(a, work: Path, threads: list[int], contexts: list[int]) -> int:
    t_start = time.perf_counter()
    load = os.getloadavg()
    tok = Tokenizer.from_folder(a.model)
    print("writing GGUFs ...", file=sys.stderr)
    ggufs = {(q, lay): export_gguf(a.model, work / f"model-{q}-{lay}.gguf", q, lay)
             for q, lay in (("f32", "exact"), ("q8_0", "exact"), ("q4_0", "exact"), ("q8_0", "timing"))}  # fmt: skip
    backend = load_backend(a.model, "ort", threads=threads[0])
    out: dict = {
        "model": a.model,
        "gguf": {f"{q}/{lay}": r.__dict__ for (q, lay), r in ggufs.items()},
        "note": "medians of interleaved rounds on a 2-core machine shared with other jobs: "
        "differences under ~15% are within the noise",
        "settings": {
            "contexts": contexts,
            "rounds": a.rounds,
            "keystrokes": a.keystrokes,
            "decode_tokens": a.decode_tokens,
            "llama_cpp": "swa_full=False, n_batch 2048, n_ubatch 512, f16 KV, no extra buffer types (AMX), "
            "best of flash attention off/on per row; timing GGUF layout",
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "llama.cpp default (active)"),
            "ours_kv": f"{backend.main.meta.get('kv_cache')} {backend.kv_dtype}",
        },
    }
    ours = Ours(backend)

    print("agreement (top-1 per position over held-out files) ...", file=sys.stderr)
    windows = heldout_windows(tok, a.agreement_tokens)
    out["agreement"] = {"texts": list(HELDOUT)}
    for q in ("f32", "q8_0", "q4_0"):
        model = LlamaModel(ggufs[(q, "exact")].path)
        ctx = LlamaContext(model, threads[0], flash_attn=False, n_ctx=a.agreement_tokens + 64)
        out["agreement"][q] = agreement(ours, ctx, windows)
        ctx.close()
        model.close()
    out["agreement_top1"] = out["agreement"]["q8_0"]["top1"]
    try:
        reference = Ours(load_backend(same_theta_reference(a.model, work), "torch", threads=threads[0]))
    except RuntimeError as e:  # load_backend's "the torch backend needs PyTorch"
        out["agreement"]["control_same_sliding_theta"] = {"skipped": str(e)}
    else:
        control = {"reference": "our PyTorch backend, fp32, sliding layers given the full layers' rope theta"}
        for q in ("f32", "q8_0"):
            model = LlamaModel(ggufs[(q, "exact")].path)
            ctx = LlamaContext(model, threads[0], flash_attn=False, n_ctx=a.agreement_tokens + 64)
            control[q] = agreement(reference, ctx, windows)
            ctx.close()
            model.close()
        out["agreement"]["control_same_sliding_theta"] = control

    stream = context_stream(tok, max(contexts) + a.keystrokes + 1)
    prompt = heldout_windows(tok, 512)[0]
    model = LlamaModel(ggufs[("q8_0", "timing")].path)
    n_ctx = max(contexts) + a.keystrokes + 64
    out["runs"] = []
    for t in threads:
        print(f"timing at {t} thread(s) ...", file=sys.stderr)
        ours = Ours(backend if t == threads[0] else load_backend(a.model, "ort", threads=t))
        cands = {
            "ours": ours,
            "fa_off": LlamaContext(model, t, False, n_ctx),
            "fa_on": LlamaContext(model, t, True, n_ctx),
        }
        rows = measure(
            cands, stream, prompt, contexts, a.rounds, a.keystrokes, a.decode_tokens, a.long_rounds
        )
        peer = best_of([rows["fa_off"], rows["fa_on"]])
        run = {"threads": t, "ours": rows["ours"], "llama_cpp": {"fa_off": rows["fa_off"], "fa_on": rows["fa_on"],
               "best": peer}, "ratios": ratios(rows["ours"], peer)}  # fmt: skip
        print("  per-step overheads and the engine path ...", file=sys.stderr)
        run["overheads"] = step_overheads(ours, cands["fa_off"], prompt, a.decode_tokens, a.rounds)
        run["overheads"]["engine_path_warm_keystroke_ms"] = {
            str(n): engine_path_keystroke(ours.backend, tok, n, a.keystrokes) for n in contexts if n <= 8192
        }
        for c in cands.values():
            if isinstance(c, LlamaContext):
                c.close()
        out["runs"].append(run)
    model.close()
    out["threads"], out["ratios"] = out["runs"][0]["threads"], out["runs"][0]["ratios"]
    if not a.no_rss:
        print("resident memory ...", file=sys.stderr)
        out["rss"] = rss(a.model, ggufs[("q8_0", "timing")].path, max(contexts), threads[0])
    out["load_average"] = {"start": load, "end": os.getloadavg()}
    out["seconds"] = time.perf_counter() - t_start
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print_table(out)
    return 0


def print_table(out: dict) -> None:
    print(f"peer benchmark: {out['model']}  ({out['note']})")
    ag = out["agreement"]
    print(f"top-1 agreement with llama.cpp over {ag['q8_0']['positions']} held-out positions: "
          f"Q8_0 {ag['q8_0']['top1']:.1%}, Q4_0 {ag['q4_0']['top1']:.1%}, F32 {ag['f32']['top1']:.1%}")  # fmt: skip
    control = ag["control_same_sliding_theta"]
    if "skipped" in control:
        print(f"control with llama.cpp's sliding rope theta: {control['skipped']}")
    else:
        print(f"control (our reference with llama.cpp's sliding rope theta): F32 {control['f32']['top1']:.1%}, "
              f"Q8_0 {control['q8_0']['top1']:.1%}")  # fmt: skip
    for run in out["runs"]:
        o, peer = run["ours"], run["llama_cpp"]
        print(
            f"\n{run['threads']} thread(s)    {'ours':>14} {'llama fa off':>13} {'llama fa on':>12} {'ratio':>7}"
        )
        print(f"decode tok/s     {o['decode_tok_s']:>8.0f} / {o['decode_spec_tok_s']:<5.0f}"
              f"{peer['fa_off']['decode_tok_s']:>13.0f} {peer['fa_on']['decode_tok_s']:>12.0f} "
              f"{run['ratios']['decode_spec']:>7.2f}")  # fmt: skip
        for key, label in (("cold_prefill_ms", "cold prefill"), ("warm_keystroke_ms", "warm keystroke")):
            for n, v in o[key].items():
                r = run["ratios"]["cold_prefill" if key == "cold_prefill_ms" else "warm_keystroke"][n]
                print(f"{label + ' ' + n:<16} {v:>11.2f} ms {peer['fa_off'][key][n]:>10.2f} "
                      f"{peer['fa_on'][key][n]:>12.2f} {r:>7.2f}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
