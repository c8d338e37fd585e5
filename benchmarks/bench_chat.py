"""The engine's chat path: decode speed with and without a constraint, the mask's cost per token,
and how much of a conversation's next turn comes from the cache.

    mellum-lsp bench chat [--model DIR] [--tokens 2000] [--reps 3] [--json]

Speeds and the mask cost come from ``benchmarks.bench_mask`` (sampled answers under a JSON Schema
and free answers of the same lengths, interleaved, medians). The reuse figures run a 4-turn
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mellum-lsp bench chat", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model folder (default: the embedded model)")
    p.add_argument("--tokens", type=int, default=2000, help="tokens decoded per mode for the speeds")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    result = mask_run(a.model, a.tokens, reps=a.reps) | conversation(a.model)
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
