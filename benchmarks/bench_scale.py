"""A real-scale model on ONNX Runtime CPU: speed, memory and the machine's roofline, in one run.

    python -m benchmarks.bench_scale --model DIR [--json] [--threads N] [--contexts 4096,32768]

For a folder written by ``mellum-lsp export`` (typically ``--random-config mellum2-12b --quant
int4``). Prints (``--json``: as JSON) ``weights_gb`` (model.onnx's weights on disk), ``rss_gb``
(this process's resident memory, both graphs loaded and run; ``details.memory_gb`` adds the peak
during loading and the anonymous part), ``prefill_tok_s``,
``decode_tok_s`` (greedy, one token per step), ``keystroke_ms`` (per context: a warm keystroke --
roll back the last token and run two, as a retokenised word end -- over a cache holding that many
positions), ``roofline_tok_s`` (the read bandwidth measured here over the bytes a decoded token
touches: the active weights at their quantised size plus the KV it reads) and
``mtp_draft_cost_ratio`` (one MTP draft over one decoding step).

Random weights make the values meaningless and the speed real: the caches behind the keystroke
timings are filled with random rows instead of a prefill, which on a 12B-shaped model at 32K
tokens would take longer than the whole run. MTP acceptance cannot be measured on random weights;
combine the cost ratio with the embedded model's acceptance (``mellum-lsp bench engine``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from engine.backends import default_threads
from engine.backends.ort_backend import OrtBackend, OrtState
from engine.backends.ort_kv import PagedGroup

_ONNX_BYTES = {1: 4, 10: 2, 2: 1, 3: 1, 7: 8, 6: 4, 9: 1}  # float, float16, uint8, int8, int64, int32, bool


def read_bandwidth(threads: int, gb: float = 0.5, rounds: int = 7) -> float:
    """Bytes per second ``threads`` numpy sums read from memory (the best of ``rounds``)."""
    a = np.ones(int(gb * 2**30) // 4, np.float32)
    parts = np.array_split(a, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(rounds):
            t0 = time.perf_counter()
            list(pool.map(np.sum, parts))
            best = max(best, a.nbytes / (time.perf_counter() - t0))
    return best


def _initializer_bytes(path: Path) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {t.name: int(np.prod(t.dims)) * _ONNX_BYTES.get(t.data_type, 4) for t in graph.initializer}


def bytes_per_token(model_dir: Path, backend: OrtBackend, context: int) -> dict[str, float]:
    """What one decoded token reads: every weight, but of the experts only top_k / E, of the
    embedding one row; plus the KV cache of ``context`` positions."""
    import onnx

    c = backend.config
    sizes = _initializer_bytes(model_dir / "model.onnx")
    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False).graph
    experts, table = set(), set()
    for node in graph.node:
        if node.op_type == "QMoE":
            experts |= {node.input[i] for i in (2, 3, 5, 6) if len(node.input) > i and node.input[i]}
        if node.op_type == "GatherBlockQuantized":
            table.add(node.input[0])
    dense = sum(b for n, b in sizes.items() if n not in experts and n not in table)
    expert = sum(sizes[n] for n in experts) * c.moe.top_k / c.moe.num_experts
    row = sum(sizes[n] for n in table) / c.vocab_size
    kv_item = np.dtype(backend.main.kv_dtype).itemsize
    per_row = 2 * c.num_kv_heads * c.head_dim
    kv = len(c.full_layers) * context * per_row * kv_item
    kv += (
        len(c.sliding_layers)
        * min(context, c.sliding_window)
        * per_row
        * np.dtype(backend.main.dtype).itemsize
    )
    return {"weights": dense + expert + row, "kv": float(kv), "total": dense + expert + row + kv}


def synthetic_sequence(backend: OrtBackend, n: int, seed: int = 0, chunk: int = 2048):
    """A sequence holding ``n`` positions of random KV rows and hidden states (no forward runs)."""
    rng = np.random.default_rng(seed)
    seq = backend.new_sequence()
    st: OrtState = seq.state
    c = backend.config
    for start in range(0, n, chunk):
        t = min(chunk, n - start)
        for group in st.groups.values():
            layers = group.shape[0] if isinstance(group, PagedGroup) else group.a.shape[0]
            rows = rng.standard_normal((layers, 2, 1, c.num_kv_heads, t, c.head_dim), np.float32)
            group.reserve(t)
            group.store(rows.astype(group.dtype))  # a window group trims as it goes
        if st.pending is not None:
            st.pending.append(
                start, rng.standard_normal((t, c.hidden_size), np.float32).astype(st.pending.a.dtype)
            )
            window = c.window_of(c.mtp.layer_type)
            if window is not None:
                st.pending.bound(window + st.mtp.margin)
    seq.ids.extend(rng.integers(10, min(c.vocab_size, 8000), n).tolist())
    return seq


def memory() -> dict[str, float]:
    """This process's resident memory in GB: now (``rss``), its peak (``peak``), and the anonymous
    part (``anon``: what is not pages of mapped files, which the kernel can drop and read again)."""
    keys = {"VmRSS": "rss", "VmHWM": "peak", "RssAnon": "anon"}
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in keys:
                out[keys[key]] = int(line.split()[1]) * 1024 / 1e9
    except OSError:  # not Linux: the peak only
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        out = {"rss": peak / 1e9, "peak": peak / 1e9}
    return {k: round(v, 3) for k, v in out.items()}


def keystroke_ms(backend: OrtBackend, context: int, rounds: int = 5) -> float:
    """Median of warm keystrokes over a cache of ``context`` positions: roll the last token back and
    run two (the retokenised end of a word and the new character); the first token is then known."""
    seq = synthetic_sequence(backend, context)
    rng = np.random.default_rng(1)
    times = []
    for _ in range(rounds + 1):
        backend.truncate(seq, len(seq.ids) - 1)
        t0 = time.perf_counter()
        backend.forward(seq, rng.integers(10, 8000, 2).tolist(), logits_to_keep=1)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[1:])  # the first one binds the buffers


def run(model_dir: Path, threads: int, contexts: list[int], prompt: int, decode: int) -> dict:
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    backend = OrtBackend.load(model_dir, threads=threads)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = rng.integers(10, min(backend.config.vocab_size, 8000), prompt).tolist()
    seq = backend.new_sequence()
    t0 = time.perf_counter()
    for i in range(0, prompt, 512):  # the engine's prefill chunk
        logits = backend.forward(seq, ids[i : i + 512])
    prefill_s = time.perf_counter() - t0
    token, steps = int(logits[-1].argmax()), []
    for _ in range(decode):
        t0 = time.perf_counter()
        token = int(backend.forward(seq, [token])[-1].argmax())
        steps.append(time.perf_counter() - t0)
    step_s = statistics.median(steps[1:])
    mtp = None
    if backend.has_mtp:
        per_call = backend.mtp.drafts
        calls = []
        for _ in range(4):
            t0 = time.perf_counter()
            drafts = backend.draft(seq, token, per_call)
            calls.append(time.perf_counter() - t0)
            token = int(backend.forward(seq, [token])[-1].argmax())
        mtp = {"drafts_per_call": len(drafts), "call_ms": statistics.median(calls[1:]) * 1e3}
        mtp["draft_cost_ratio"] = statistics.median(calls[1:]) / len(drafts) / step_s
    keystrokes = {str(n): round(keystroke_ms(backend, n), 1) for n in contexts}
    mem = memory()  # before the bandwidth test's own array
    bandwidth = read_bandwidth(threads)
    touched = bytes_per_token(model_dir, backend, prompt + decode)
    weights = sum(p.stat().st_size for p in model_dir.glob("model.onnx*"))
    out = {
        "weights_gb": round(weights / 1e9, 3),
        "rss_gb": mem["rss"],
        "decode_tok_s": round(1 / step_s, 2),
        "prefill_tok_s": round(prompt / prefill_s, 1),
        "keystroke_ms": keystrokes,
        "roofline_tok_s": round(bandwidth / touched["total"], 2),
        "mtp_draft_cost_ratio": round(mtp["draft_cost_ratio"], 3) if mtp else None,
        "details": {
            "threads": threads,
            "kv_dtype": backend.kv_dtype,
            "load_s": round(load_s, 1),
            "memory_gb": mem,
            "prompt_tokens": prompt,
            "decode_tokens": decode,
            "read_bandwidth_gb_s": round(bandwidth / 1e9, 1),
            "bytes_per_token_gb": {k: round(v / 1e9, 4) for k, v in touched.items()},
            "roofline_fraction": round((1 / step_s) / (bandwidth / touched["total"]), 3),
            "keystroke_32k_over_4k": (
                round(keystrokes["32768"] / keystrokes["4096"], 2)
                if {"4096", "32768"} <= set(keystrokes)
                else None
            ),
            "mtp": mtp,
            "mtp_weights_gb": round(sum(p.stat().st_size for p in model_dir.glob("mtp.onnx*")) / 1e9, 3),
            "run_s": None,
        },
    }
    out["details"]["run_s"] = round(time.perf_counter() - t_start, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mellum-lsp bench scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="an exported folder (e.g. --random-config mellum2-12b)")
    p.add_argument("--threads", type=int, default=None, help="default: the engine's (all cores but one)")
    p.add_argument("--contexts", default="4096,32768", help="cache sizes of the keystroke timings")
    p.add_argument("--prompt", type=int, default=1024, help="prefill length")
    p.add_argument("--decode", type=int, default=24, help="greedy tokens timed")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    model_dir = Path(a.model)
    if not (model_dir / "model.onnx").is_file():
        print(f"error: no model.onnx in {model_dir}: export one with `mellum-lsp export`", file=sys.stderr)
        return 2
    out = run(
        model_dir, a.threads or default_threads(), [int(x) for x in a.contexts.split(",")], a.prompt, a.decode
    )
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        d = out["details"]
        print(
            f"{model_dir}: weights {out['weights_gb']} GB, peak RSS {out['rss_gb']} GB, {d['threads']} thread(s)"
        )
        print(f"prefill {out['prefill_tok_s']} tok/s, decode {out['decode_tok_s']} tok/s "
              f"({d['roofline_fraction']:.0%} of the roofline {out['roofline_tok_s']} tok/s at "
              f"{d['read_bandwidth_gb_s']} GB/s over {d['bytes_per_token_gb']['total']} GB/token)")  # fmt: skip
        print(f"warm keystroke: {out['keystroke_ms']} ms; MTP draft / step: {out['mtp_draft_cost_ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
