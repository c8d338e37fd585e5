"""Engine benchmarks, each measured side by side in one run (the machine is shared and noisy).

    mellum-lsp bench engine [--model DIR] [--json] [--contexts 2048,8192,32000] [--quick]

- keystroke: typing 50 characters into a file with N tokens of repository context before it.
  Per keystroke: time to first token and to a full single-line completion (stop at newline),
  warm (the engine's prefix cache) vs cold (an empty cache for every keystroke; cold runs on a
  subset of the keystrokes at large N, interleaved with the warm ones).
- decode: greedy tokens/s of our engine (default backend and speculation) vs transformers'
  ``generate`` on the same checkpoint and prompt (skipped, with a note in the output, when
  PyTorch or transformers is not installed: a plain install still gets every other figure).
- mtp: MTP speculation on vs off on the same prompt: tokens/s, acceptance, identical output.
- kv: KV bytes the engine holds at 32K tokens vs the theoretical minimum (full layers x all
  tokens + sliding layers x window, the MTP layer included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import sysconfig
import time
from pathlib import Path

from engine.backends import load_backend
from engine.cache import PrefixStore
from engine.jobs import Job
from engine.protocol import CompleteParams, ContextChunk, Sampling
from engine.service import Engine, EngineConfig
from engine.speculative import NO_SPECULATION, SpecConfig, greedy_decode
from engine.tokenizer import Tokenizer

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CONTEXT_FILES = ["argparse.py", "textwrap.py", "dataclasses.py", "typing.py", "inspect.py", "pathlib.py",
                 "configparser.py", "logging/__init__.py", "subprocess.py", "tarfile.py", "zipfile.py",
                 "email/message.py", "http/client.py", "difflib.py", "pydoc.py", "shutil.py", "ast.py"]  # fmt: skip
CURRENT = "json/encoder.py"


def context_chunks(tok: Tokenizer, tokens: int) -> list[ContextChunk]:
    """Repository context of about ``tokens`` tokens, from stdlib files."""
    chunks, total = [], 0
    for name in CONTEXT_FILES:
        text = (STDLIB / name).read_text()
        ids = tok.encode(text)
        room = tokens - total
        if room <= 0:
            break
        if len(ids) > room:
            text = tok.decode(ids[:room])
        chunks.append(ContextChunk(name, text))
        total += min(len(ids), room)
    return chunks


def keystrokes(n: int = 50, before: int = 3000, after: int = 2000) -> list[tuple[str, str]]:
    """(prefix, suffix) after each of n typed characters, typing out real lines of the current file
    (about ``before``/``after`` characters of the file around the cursor, ~1.4K tokens)."""
    text = (STDLIB / CURRENT).read_text()
    start = text.index("    def encode(self, o):")
    typed = text[start : start + n]
    rest = text[start + n :]
    head = text[max(0, start - before) : start]
    return [(head + typed[:i], rest[:after]) for i in range(1, n + 1)]


def run_job(engine: Engine, params: CompleteParams, job_id: int) -> dict:
    job = Job(
        job_id, "complete", params, emit=lambda p: None, finish=lambda r, e: None, document=params.document
    )
    return engine.execute(job)


def bench_keystroke(backend, tok, contexts: list[int], cold_every: int, max_tokens: int) -> list[dict]:
    rows = []
    for n in contexts:
        file_tokens = len(tok.encode(keystrokes()[0][0])) + len(tok.encode(keystrokes()[0][1]))
        chunks = context_chunks(tok, max(0, n - file_tokens))
        warm = Engine(backend, tok, EngineConfig(cache_mb=4096))
        cold = Engine(backend, tok, EngineConfig(cache_mb=4096))
        states = keystrokes()
        w_first, w_full, c_first, c_full, reused = [], [], [], [], []
        prompt_tokens = 0
        # prime the warm engine with the file as it was before typing
        run_job(warm, CompleteParams(states[0][0][:-1], states[0][1], tuple(chunks), CURRENT, "doc",
                                     Sampling(max_tokens=max_tokens, stop=("\n",))), 0)  # fmt: skip
        for i, (prefix, suffix) in enumerate(states):
            params = CompleteParams(
                prefix, suffix, tuple(chunks), CURRENT, "doc", Sampling(max_tokens=max_tokens, stop=("\n",))
            )
            r = run_job(warm, params, i + 1)
            w_first.append(r["timing"]["first_token_ms"] or r["timing"]["total_ms"])
            w_full.append(r["timing"]["total_ms"])
            reused.append(r["cache"]["reused_tokens"] / r["cache"]["prompt_tokens"])
            prompt_tokens = r["cache"]["prompt_tokens"]
            if i % cold_every == 0:
                cold.store = PrefixStore(backend, cold.store.budget, cold.config.margin)  # no cache
                r = run_job(cold, params, 1000 + i)
                assert r["cache"]["reused_tokens"] == 0
                c_first.append(r["timing"]["first_token_ms"] or r["timing"]["total_ms"])
                c_full.append(r["timing"]["total_ms"])
        rows.append({
            "context_tokens": n,
            "prompt_tokens": prompt_tokens,
            "warm_first_token_ms": statistics.median(w_first),
            "cold_first_token_ms": statistics.median(c_first),
            "warm_full_ms": statistics.median(w_full),
            "cold_full_ms": statistics.median(c_full),
            "reused_share": statistics.median(reused),
            "keystrokes": len(states),
            "cold_samples": len(c_first),
        })  # fmt: skip
        print(f"  keystroke @ {n}: warm {rows[-1]['warm_first_token_ms']:.1f} ms, cold {rows[-1]['cold_first_token_ms']:.1f} ms",
              file=sys.stderr)  # fmt: skip
    return rows


def decode_prompt(tok: Tokenizer) -> list[int]:
    return tok.encode((STDLIB / "textwrap.py").read_text()[:1500])


def ours_decode(backend, prompt: list[int], n: int, spec: SpecConfig) -> tuple[list[int], float, object]:
    seq = backend.new_sequence()
    logits = backend.forward(seq, prompt, logits_to_keep=1)[-1]
    t0 = time.perf_counter()
    ids, _, stats = greedy_decode(backend, seq, logits, n, spec, on_tokens=lambda new: False)
    return ids, len(ids) / (time.perf_counter() - t0), stats


_HF = {}


def transformers_missing() -> str | None:
    """Why transformers' ``generate`` cannot run here (a note for the output), or None when it can."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return (
            f"transformers comparison skipped: {e} (install torch==2.13.0 and transformers==5.23.0, "
            "e.g. pip install 'mellum-lsp[test]')"
        )
    return None


def _hf_model(model_dir: str):
    import torch
    from transformers import MellumForCausalLM

    if model_dir not in _HF:
        _HF[model_dir] = MellumForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return _HF[model_dir]


def transformers_decode(
    model_dir: str, prompt: list[int], n: int, threads: int | None
) -> tuple[list[int], float]:
    import torch

    model = _hf_model(model_dir)
    if threads:
        torch.set_num_threads(threads)
    x = torch.tensor([prompt])
    with torch.no_grad():
        out = model(x, use_cache=True)  # prefill, outside the timing as for ours
        past = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        ids = [int(token)]
        t0 = time.perf_counter()
        full = torch.cat([x, token], dim=1)
        gen = model.generate(
            full, past_key_values=past, max_new_tokens=n - 1, min_new_tokens=n - 1, do_sample=False
        )
        elapsed = time.perf_counter() - t0
    ids += gen[0, full.shape[1] :].tolist()
    return ids, (n - 1) / elapsed


def bench_kv(backend, tokens: int) -> dict:
    c = backend.config
    seq = backend.new_sequence()
    chunk = 2048
    for i in range(0, tokens, chunk):
        backend.forward(seq, [7 + (j % 50) for j in range(i, min(tokens, i + chunk))])
    backend.compact(seq)
    itemsize = 4
    per_pos = 2 * c.num_kv_heads * c.head_dim * itemsize
    windows = [c.window_of(t) for t in c.layer_types]
    if c.mtp is not None:
        windows.append(c.window_of(c.mtp.layer_type))
    minimum = sum(tokens if w is None else min(w, tokens) for w in windows) * per_pos
    return {"tokens": tokens, "bytes": backend.nbytes(seq), "min_bytes": minimum,
            "ratio": backend.nbytes(seq) / minimum}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mellum-lsp bench engine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", help="model folder (default: the embedded model)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--contexts", default="2048,8192,32000")
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--hf-threads", type=int, default=1, help="torch threads for transformers' generate")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    if a.model is None:
        from engine.embedded import embedded_model_dir

        a.model = str(embedded_model_dir())
    contexts = [int(x) for x in a.contexts.split(",")]
    if a.quick:
        contexts, a.decode_tokens = [512], 24
    backend = load_backend(a.model, a.backend, threads=a.threads)
    tok = Tokenizer.from_folder(a.model)
    out: dict = {"model": a.model, "backend": backend.name, "notes": []}
    missing = transformers_missing()
    if missing:
        out["notes"].append(missing)
        print(missing, file=sys.stderr)

    print("keystroke latency ...", file=sys.stderr)
    out["keystroke"] = bench_keystroke(backend, tok, contexts, cold_every=5 if max(contexts) <= 8192 else 10,
                                       max_tokens=48)  # fmt: skip

    print("decode throughput and MTP (interleaved rounds, medians) ...", file=sys.stderr)
    prompt = decode_prompt(tok)
    rounds: dict[str, list[float]] = {"plain": [], "spec": [], "mtp": [], "hf": []}
    outputs: dict[str, list[int]] = {}
    acceptance: dict[str, float] = {}
    for _ in range(a.rounds):
        for name, spec in (
            ("plain", NO_SPECULATION),
            ("spec", SpecConfig()),
            ("mtp", SpecConfig(mtp_drafts=2, lookup=False)),
        ):
            ids, rate, stats = ours_decode(backend, prompt, a.decode_tokens, spec)
            rounds[name].append(rate)
            outputs[name] = ids
            acceptance[name] = stats.acceptance
        if not missing:
            ids, rate = transformers_decode(a.model, prompt, a.decode_tokens, a.hf_threads)
            rounds["hf"].append(rate)
            outputs["hf"] = ids
    med = {k: statistics.median(v) if v else None for k, v in rounds.items()}
    out["decode"] = {"ours_tok_s": med["spec"], "ours_plain_tok_s": med["plain"], "transformers_tok_s": med["hf"],
                     "identical_to_transformers": None if missing else outputs["plain"] == outputs["hf"],
                     "tokens": a.decode_tokens, "rounds": rounds}  # fmt: skip
    out["mtp"] = {"on_tok_s": med["mtp"], "off_tok_s": med["plain"], "acceptance": acceptance["mtp"],
                  "identical": outputs["mtp"] == outputs["plain"], "speedup": med["mtp"] / med["plain"]}  # fmt: skip
    out["speculation"] = {
        "lookup+mtp_acceptance": acceptance["spec"],
        "identical": outputs["spec"] == outputs["plain"],
    }

    print("KV bytes ...", file=sys.stderr)
    out["kv"] = bench_kv(backend, 2048 if a.quick else 32768)

    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"engine benchmark: {a.model} ({backend.name})")
        print(
            f"{'context':>8} {'prompt':>7} {'warm 1st':>9} {'cold 1st':>9} {'x':>6} {'warm full':>10} {'cold full':>10} {'reused':>7}"
        )
        for r in out["keystroke"]:
            print(f"{r['context_tokens']:>8} {r['prompt_tokens']:>7} {r['warm_first_token_ms']:>7.1f}ms "
                  f"{r['cold_first_token_ms']:>7.1f}ms {r['cold_first_token_ms'] / r['warm_first_token_ms']:>5.1f}x "
                  f"{r['warm_full_ms']:>8.1f}ms {r['cold_full_ms']:>8.1f}ms {r['reused_share']:>6.1%}")  # fmt: skip
        d = out["decode"]
        if d["transformers_tok_s"] is None:
            print(f"decode: ours {d['ours_tok_s']:.1f} tok/s (plain {d['ours_plain_tok_s']:.1f}); {missing}")
        else:
            print(f"decode: ours {d['ours_tok_s']:.1f} tok/s (plain {d['ours_plain_tok_s']:.1f}), transformers "
                  f"{d['transformers_tok_s']:.1f} tok/s -> {d['ours_tok_s'] / d['transformers_tok_s']:.2f}x")  # fmt: skip
        m = out["mtp"]
        print(f"mtp: on {m['on_tok_s']:.1f} tok/s, off {m['off_tok_s']:.1f} tok/s -> {m['speedup']:.2f}x, "
              f"acceptance {m['acceptance']:.1%}, identical {m['identical']}")  # fmt: skip
        k = out["kv"]
        print(f"kv at {k['tokens']} tokens: {k['bytes'] / 2**20:.1f} MiB vs minimum {k['min_bytes'] / 2**20:.1f} MiB "
              f"-> {k['ratio']:.3f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
