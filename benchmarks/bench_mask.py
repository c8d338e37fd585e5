"""The cost of constrained decoding: decode speed with and without a JSON Schema mask.

    python -m benchmarks.bench_mask [--model DIR] [--tokens 2000] [--threads 1] [--reps 3]

Samples (temperature 1.0) answers to a chat prompt under a JSON Schema constraint
(``engine.chat.constrain``) until ``--tokens`` tokens, then the same number of answers of the
same lengths freely (so both decode over the same context sizes); repeated ``--reps`` times,
interleaved, medians reported. Prints one JSON object: ``tok_s``, ``constrained_tok_s``,
``mask_ms_per_token`` (mask + applying it to the logits + advancing the grammar),
``constrained_cost`` (1 - constrained_tok_s / tok_s; the issue's target is at most 0.15) and the
settings. ``run`` returns the same dict for ``mellum-lsp bench chat``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z_]{1,12}$"},
        "kind": {"enum": ["function", "class", "module"]},
        "lines": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": 9999},
            "maxItems": 4,
        },
        "meta": {
            "type": "object",
            "properties": {
                "public": {"type": "boolean"},
                "score": {"type": "integer", "minimum": 0, "maximum": 100},
            },
            "required": ["public", "score"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "kind", "lines", "meta"],
    "additionalProperties": False,
}
MAX_ANSWER = 96


def run(
    model_dir: str | Path | None = None, tokens: int = 2000, threads: int = 1, reps: int = 3, seed: int = 0
) -> dict:
    from engine.backends import load_backend
    from engine.chat.constrain import Constraint
    from engine.chat.template import ChatTemplate
    from engine.embedded import embedded_model_dir
    from engine.generate import Sampler, SamplingParams
    from engine.tokenizer import Tokenizer

    model_dir = Path(model_dir) if model_dir else embedded_model_dir()
    backend = load_backend(model_dir, "auto", threads=threads)
    tok = Tokenizer.from_folder(model_dir)
    messages = [{"role": "user", "content": f"Describe one symbol as JSON: {json.dumps(SCHEMA)}"}]
    base = backend.new_sequence()
    first = backend.forward(base, ChatTemplate.from_folder(model_dir).encode(tok, messages))[-1]
    sampler = Sampler(SamplingParams(temperature=1.0, seed=seed))
    vocab = backend.config.vocab_size
    Constraint.json_schema(tok, SCHEMA, vocab_size=vocab)  # builds the grammar tokenizer once

    def constrained() -> tuple[list[int], float, float]:
        """Answers under the schema until ``tokens``; their lengths, the seconds, the mask seconds."""
        lengths, mask_s, t0 = [], 0.0, time.perf_counter()
        while sum(lengths) < tokens:
            seq, logits, c = backend.fork(base), first, Constraint.json_schema(tok, SCHEMA, vocab_size=vocab)
            for n in range(1, MAX_ANSWER + 1):
                t1 = time.perf_counter()
                logits = c.allow(logits)
                mask_s += time.perf_counter() - t1
                token = sampler(logits)
                if token in tok.eos_ids or n == MAX_ANSWER:
                    break
                t1 = time.perf_counter()
                c.advance(token)
                mask_s += time.perf_counter() - t1
                logits = backend.forward(seq, [token])[-1]
            lengths.append(n)
        return lengths, time.perf_counter() - t0, mask_s

    def free(lengths: list[int]) -> float:
        """Free sampling of answers of the same lengths (same context sizes, same forwards)."""
        t0 = time.perf_counter()
        for length in lengths:
            seq, logits = backend.fork(base), first
            for n in range(1, length + 1):
                token = sampler(logits)
                if n < length:
                    logits = backend.forward(seq, [token])[-1]
        return time.perf_counter() - t0

    runs = []
    for _ in range(reps):  # interleaved, medians: the machine's load changes from second to second
        lengths, con_s, mask_s = constrained()
        runs.append((sum(lengths) / free(lengths), sum(lengths) / con_s, 1000 * mask_s / sum(lengths)))
    tok_s, con_tok_s, mask_ms = (statistics.median(r[i] for r in runs) for i in range(3))
    return {
        "tok_s": round(tok_s, 1),
        "constrained_tok_s": round(con_tok_s, 1),
        "mask_ms_per_token": round(mask_ms, 4),
        "constrained_cost": round(1 - con_tok_s / tok_s, 3),
        "tokens": tokens,
        "reps": reps,
        "vocab_size": vocab,
        "backend": backend.name,
        "threads": threads,
        "model": str(model_dir),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_mask", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: the embedded model)")
    p.add_argument("--tokens", type=int, default=2000, help="tokens to decode per mode")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (medians are reported)")
    a = p.parse_args(argv)
    print(json.dumps(run(a.model, a.tokens, a.threads, a.reps)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
