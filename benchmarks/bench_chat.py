"""The engine's chat path: decode speed with and without a constraint, the mask's cost per token,
and how much of a conversation's next turn comes from the cache.

    mellum-lsp bench chat [--model DIR] [--tokens 2000] [--reps 3] [--json]

``tok_s`` / ``constrained_tok_s`` are decode speeds through the engine's own ``chat`` job (the
path the RPC and HTTP servers run, the grammar's mask computed on a second thread while the model
runs): sampled answers (temperature 1) to the same prompt, free and under a JSON Schema,
interleaved, tokens over decode time. ``mask_ms_per_token`` and the speeds of a bare decoding loop
(``loop_*``) come from ``benchmarks.bench_mask``. The reuse figures run a 4-turn
conversation through ``Engine.execute`` (the ``chat`` job the RPC and HTTP servers run), each turn
the previous messages plus the model's answer and a new user message, under one conversation id:
``turn2_reused_share`` is the share of turn 2's prompt tokens taken from the cache, and
``turns_reused_share`` the same over turns 2-4. Prints one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.bench_mask import run as mask_run

QUESTIONS = [
    "Write a function that returns the n-th Fibonacci number.",
    "Now make it iterative.",
    "Add a docstring and type hints.",
    "Write a test for it.",
]


def conversation(model_dir: str | None, max_tokens: int = 48) -> dict:
    from engine.embedded import embedded_model_dir
    from engine.jobs import Job
    from engine.models import ModelSpec
    from engine.protocol import parse_params
    from engine.server import build_parser, load_model

    engine = load_model(ModelSpec(path=model_dir or str(embedded_model_dir())), build_parser().parse_args([]))
    messages = [{"role": "system", "content": "You are a concise Python assistant."}]
    turns = []
    for question in QUESTIONS:
        messages.append({"role": "user", "content": question})
        p = parse_params("chat", {"messages": messages, "max_tokens": max_tokens, "conversation": "bench"})
        result = engine.execute(
            Job(len(turns) + 1, "chat", p, lambda _: None, lambda r, e: None, document=p.document)
        )
        turns.append(result["cache"])
        messages.append({"role": "assistant", "content": result["text"]})
    later = turns[1:]
    return {
        "turn2_reused_share": round(turns[1]["reused_tokens"] / turns[1]["prompt_tokens"], 4),
        "turns_reused_share": round(
            sum(t["reused_tokens"] for t in later) / sum(t["prompt_tokens"] for t in later), 4
        ),
        "turns": turns,
    }


def engine_speeds(model_dir: str | None, tokens: int, reps: int) -> dict:
    """Free and constrained decode tok/s through ``Engine.execute`` (medians of interleaved reps)."""
    import statistics

    from benchmarks.bench_mask import SCHEMA
    from engine.embedded import embedded_model_dir
    from engine.jobs import Job
    from engine.models import ModelSpec
    from engine.protocol import parse_params
    from engine.server import build_parser, load_model

    engine = load_model(ModelSpec(path=model_dir or str(embedded_model_dir())), build_parser().parse_args([]))
    fmt = {"type": "json_schema", "json_schema": {"name": "symbol", "schema": SCHEMA}}

    def speed(constrained: bool) -> float:
        made = seconds = 0.0
        while made < tokens:
            body = {"messages": [{"role": "user", "content": "Describe one symbol as JSON."}], "max_tokens": 96,
                    "temperature": 1.0} | ({"response_format": fmt} if constrained else {})  # fmt: skip
            r = engine.execute(Job(1, "chat", parse_params("chat", body), lambda _: None, lambda r, e: None))
            if r["tokens"] > 1:
                made += r["tokens"] - 1
                seconds += (r["timing"]["total_ms"] - r["timing"]["first_token_ms"]) / 1e3
        return made / seconds

    runs = [(speed(False), speed(True)) for _ in range(reps)]
    free, con = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    return {
        "tok_s": round(free, 1),
        "constrained_tok_s": round(con, 1),
        "constrained_cost": round(1 - con / free, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mellum-lsp bench chat", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: the embedded model)")
    p.add_argument("--tokens", type=int, default=2000, help="tokens decoded per mode for the speeds")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    loop = mask_run(a.model, a.tokens, reps=a.reps)
    result = {"mask_ms_per_token": loop["mask_ms_per_token"], "loop_tok_s": loop["tok_s"],
              "loop_constrained_tok_s": loop["constrained_tok_s"]}  # fmt: skip
    result |= engine_speeds(a.model, a.tokens, a.reps) | conversation(a.model)
    result["targets"] = {"constrained_cost": "<= 0.15", "turn2_reused_share": ">= 0.9"}
    if a.json:
        print(json.dumps(result))
    else:
        for key in ("tok_s", "constrained_tok_s", "mask_ms_per_token", "constrained_cost", "turn2_reused_share",
                    "turns_reused_share"):  # fmt: skip
            print(f"{key:>20}: {result[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
