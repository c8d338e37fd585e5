"""HumanEval infilling (openai/human-eval-infilling, MIT): pass@1 and exact match of any model the
engine serves.

    python tools/eval_humaneval.py --model DIR --data ../shared/benchmarks/human-eval-infilling \
        --benchmark single-line [--limit N] [--json]

Each task's middle is generated greedily through the engine's completion path (its FIM layout,
token healing; single-line: up to the first newline; multi-line and random-span: up to end of
text or ``--max-tokens``), inserted between
prompt and suffix, and the task's tests run with ``check(entry_point)`` in a sandboxed
subprocess: a fresh temporary directory, ``python -I`` (isolated mode), an empty environment,
CPU-time and memory limits, and a wall-clock timeout. Exact match compares whitespace-trimmed
middles.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.backends import load_backend  # noqa: E402
from engine.jobs import Job  # noqa: E402
from engine.protocol import CompleteParams, Sampling  # noqa: E402
from engine.service import Engine, EngineConfig  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402

FILES = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}


def load_tasks(data: Path, benchmark: str) -> list[dict]:
    with gzip.open(data / FILES[benchmark], "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _limits() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_CPU, (10, 10))
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    os.setsid()


def run_tests(program: str, timeout: float = 15.0) -> bool:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "task.py"
        path.write_text(program)
        try:
            p = subprocess.run([sys.executable, "-I", str(path)], cwd=d, env={}, capture_output=True,
                               timeout=timeout, preexec_fn=_limits)  # fmt: skip
        except subprocess.TimeoutExpired:
            return False
        return p.returncode == 0


def generate_middle(
    engine: Engine, prefix: str, suffix: str, single_line: bool, max_tokens: int, i: int
) -> str:
    """The engine's own completion path: prompt layout, token healing, speculation."""
    stop = ("\n",) if single_line else ()
    params = CompleteParams(
        prefix, suffix, (), "solution.py", f"task{i}", Sampling(max_tokens=max_tokens, stop=stop)
    )
    job = Job(i, "complete", params, emit=lambda p: None, finish=lambda r, e: None, document=params.document)
    out = engine.execute(job)["text"]
    return out + "\n" if single_line else out


def evaluate(engine: Engine, tasks: list[dict], single_line: bool, max_tokens: int) -> dict:
    passed = exact = 0
    t0 = time.perf_counter()
    for i, task in enumerate(tasks):
        middle = generate_middle(engine, task["prompt"], task["suffix"], single_line, max_tokens, i)
        exact += middle.strip() == task["canonical_solution"].strip()
        program = (
            task["prompt"]
            + middle
            + task["suffix"]
            + "\n\n"
            + task["test"]
            + f"\n\ncheck({task['entry_point']})\n"
        )
        passed += run_tests(program)
    n = len(tasks)
    return {"tasks": n, "pass@1": passed / n, "exact_match": exact / n, "passed": passed, "exact": exact,
            "seconds": time.perf_counter() - t0}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument(
        "--data", type=Path, required=True, help="folder with the HumanEval-*Infilling*.jsonl.gz files"
    )
    p.add_argument("--benchmark", choices=list(FILES), default="single-line")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N tasks (0 = all)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--backend", default="auto")
    p.add_argument(
        "--sanity", action="store_true", help="score the canonical solutions instead (harness check)"
    )
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    tasks = load_tasks(a.data, a.benchmark)
    if a.limit:
        tasks = tasks[: a.limit]
    if a.sanity:
        ok = sum(run_tests(t["prompt"] + t["canonical_solution"] + t["suffix"] + "\n\n" + t["test"]
                           + f"\n\ncheck({t['entry_point']})\n") for t in tasks)  # fmt: skip
        result = {"tasks": len(tasks), "canonical_pass": ok / len(tasks)}
    else:
        backend = load_backend(a.model, a.backend)
        engine = Engine(backend, Tokenizer.from_folder(a.model), EngineConfig(cache_mb=64))
        result = evaluate(engine, tasks, a.benchmark == "single-line", a.max_tokens)
        result |= {"benchmark": a.benchmark, "model": a.model, "backend": backend.name}
    print(json.dumps(result, indent=2) if a.json else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
