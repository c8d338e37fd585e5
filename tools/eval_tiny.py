"""Evaluate a model folder on the held-out stdlib files (the embedded model's model card figures).

    python tools/eval_tiny.py --model DIR --corpus runs/corpus/manifest.json [--fim-cases 500] [--json]

Reports:
- held-out next-token loss and perplexity on 1024-token windows (and on 4096-token windows, to
  show how it holds beyond the 1024-token training length);
- single-line FIM exact match: the cursor inside a line (after its indentation), the rest of the
  file as suffix, through the engine's completion path (its prompt layout capped at
  ``--fim-context`` tokens, token healing on and off); the expected middle is the rest of that
  line, the model's answer its greedy text up to the first newline or end of text (both with
  trailing whitespace stripped);
- MTP draft acceptance under greedy decoding (one MTP draft per step, prompt lookup off);
- decode speed, tokens/s.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.backends import load_backend  # noqa: E402
from engine.generate import log_softmax  # noqa: E402
from engine.protocol import CompleteParams, Sampling  # noqa: E402
from engine.service import (  # noqa: E402
    Engine,
    EngineConfig,  # noqa: E402
    Job,
)
from engine.speculative import NO_SPECULATION, SpecConfig, greedy_decode  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402


def heldout_texts(manifest: Path) -> list[tuple[str, str]]:
    m = json.loads(manifest.read_text())
    root = Path(m["stdlib_root"])
    return [(rel, (root / rel).read_text(encoding="utf-8")) for rel in m["heldout"]]


def perplexity(backend, tok: Tokenizer, docs, window: int, max_windows: int) -> dict:
    stream: list[int] = []
    for path, text in docs:
        stream += [tok.fim.file, *tok.encode(f"{path}\n{text}"), tok.fim.eot]
    nll, count = 0.0, 0
    windows = 0
    for start in range(0, len(stream) - window - 1, window):
        if windows >= max_windows:
            break
        ids = stream[start : start + window + 1]
        seq = backend.new_sequence()
        logits = backend.forward(seq, ids[:-1], logits_to_keep=window)
        lp = log_softmax(logits)
        nll -= float(lp[np.arange(window), ids[1:]].sum())
        count += window
        windows += 1
    loss = nll / max(count, 1)
    return {"window": window, "windows": windows, "tokens": count, "loss": loss, "perplexity": math.exp(loss)}


def fim_cases(docs, n: int, seed: int) -> list[tuple[str, str, str, str]]:
    """(path, prefix, middle, suffix): the cursor inside a line, the middle the rest of the line."""
    rng = np.random.default_rng(seed)
    candidates = []
    for path, text in docs:
        offset = 0
        for line in text.splitlines(keepends=True):
            body = line.rstrip("\r\n")
            indent = len(body) - len(body.lstrip())
            if len(body.strip()) >= 8 and not body.lstrip().startswith("#"):
                candidates.append((path, text, offset, indent, len(body)))
            offset += len(line)
    picks = rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)
    cases = []
    for i in sorted(picks):
        path, text, start, indent, length = candidates[i]
        col = int(rng.integers(indent + 1, length))  # at least one character typed on the line
        a, b = start + col, start + length
        cases.append((path, text[:a], text[a:b], text[b:]))
    return cases


def fim_exact_match(engine: Engine, cases, context: int, max_tokens: int) -> dict:
    """Through the engine's own completion path (prompt layout, token healing, speculation)."""
    hits, lengths, t0 = 0, [], time.perf_counter()
    examples = []
    for i, (path, prefix, middle, suffix) in enumerate(cases):
        params = CompleteParams(
            prefix, suffix, (), path, f"case{i}", Sampling(max_tokens=max_tokens, stop=("\n",))
        )
        job = Job(
            i, "complete", params, emit=lambda p: None, finish=lambda r, e: None, document=params.document
        )
        got = engine.execute(job)["text"]
        ok = got.rstrip() == middle.rstrip()
        hits += ok
        lengths.append(len(middle))
        if len(examples) < 8:
            examples.append({"prefix_tail": prefix[-40:], "expected": middle, "got": got, "match": ok})
    return {"cases": len(cases), "exact_match": hits / len(cases), "hits": hits, "context_tokens": context,
            "token_healing": engine.config.token_healing, "mean_middle_chars": statistics.mean(lengths),
            "seconds": time.perf_counter() - t0, "examples": examples}  # fmt: skip


def mtp_acceptance(backend, tok, docs, prompts: int, new_tokens: int, seed: int) -> dict:
    if not backend.has_mtp:
        return {"available": False}
    rng = np.random.default_rng(seed)
    drafted = accepted = 0
    on_rates, off_rates, identical = [], [], 0
    for _ in range(prompts):
        path, text = docs[int(rng.integers(len(docs)))]
        ids = tok.encode(text)
        if len(ids) < 600:
            continue
        start = int(rng.integers(0, len(ids) - 520))
        prompt = ids[start : start + 512]
        outs = []
        for spec in (SpecConfig(mtp_drafts=1, lookup=False), NO_SPECULATION):
            seq = backend.new_sequence()
            logits = backend.forward(seq, prompt, logits_to_keep=1)[-1]
            t = time.perf_counter()
            out, _, st = greedy_decode(backend, seq, logits, new_tokens, spec, lambda new: False)
            (on_rates if spec.mtp_drafts else off_rates).append(len(out) / (time.perf_counter() - t))
            if spec.mtp_drafts:
                drafted += st.drafted
                accepted += st.accepted
            outs.append(out)
        identical += outs[0] == outs[1]
    n = len(on_rates)
    return {"available": True, "prompts": n, "drafted": drafted, "accepted": accepted,
            "acceptance": accepted / max(drafted, 1), "identical_outputs": f"{identical}/{n}",
            "mtp_tok_s": statistics.median(on_rates), "plain_tok_s": statistics.median(off_rates)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--backend", default="auto")
    p.add_argument("--fim-cases", type=int, default=500)
    p.add_argument("--fim-context", type=int, default=2048)
    p.add_argument("--max-windows", type=int, default=64)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    backend = load_backend(a.model, a.backend, threads=a.threads)
    tok = Tokenizer.from_folder(a.model)
    docs = heldout_texts(a.corpus)
    out = {"model": a.model, "backend": backend.name, "heldout_files": len(docs)}
    print("perplexity ...", file=sys.stderr)
    out["perplexity_1024"] = perplexity(backend, tok, docs, 1024, a.max_windows)
    out["perplexity_4096"] = perplexity(backend, tok, docs, 4096, max(4, a.max_windows // 4))
    print("single-line FIM ...", file=sys.stderr)
    cases = fim_cases(docs, a.fim_cases, a.seed)
    for heal in (True, False):
        engine = Engine(
            backend, tok, EngineConfig(cache_mb=64, max_context=a.fim_context, token_healing=heal)
        )
        key = "fim_single_line" if heal else "fim_single_line_no_healing"
        out[key] = fim_exact_match(engine, cases, a.fim_context, 48)
    print("MTP acceptance ...", file=sys.stderr)
    out["mtp"] = mtp_acceptance(backend, tok, docs, 24, 64, a.seed)
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        p1, p4, f, m = out["perplexity_1024"], out["perplexity_4096"], out["fim_single_line"], out["mtp"]
        print(f"held-out loss {p1['loss']:.3f} (ppl {p1['perplexity']:.2f}) on {p1['tokens']} tokens in 1024-windows;"
              f" {p4['loss']:.3f} (ppl {p4['perplexity']:.2f}) in 4096-windows")  # fmt: skip
        g = out["fim_single_line_no_healing"]
        print(f"single-line FIM exact match {f['exact_match']:.1%} ({f['hits']}/{f['cases']}); "
              f"without token healing {g['exact_match']:.1%}")  # fmt: skip
        if m.get("available"):
            print(f"MTP acceptance {m['acceptance']:.1%}; decode {m['mtp_tok_s']:.0f} tok/s with MTP, "
                  f"{m['plain_tok_s']:.0f} without; identical {m['identical_outputs']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
