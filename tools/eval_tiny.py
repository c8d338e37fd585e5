"""Evaluate a model folder on held-out code and tasks (the embedded model's model card figures).

    python tools/eval_tiny.py --model DIR --corpus runs/corpus/manifest.json [M ...] [--fim-cases 500] [--json]
    python tools/eval_tiny.py --model DIR --corpus M1 M2 --tasks /work/data/tasks --only fim cross repair tools

Reports (``--only`` picks some of: perplexity, fim, mtp, cross, repair, tools):
- held-out next-token loss and perplexity on 1024-token windows (and on 4096-token windows, to
  show how it holds beyond the 1024-token training length);
- single-line FIM exact match: the cursor inside a line (after its indentation), the rest of the
  file as suffix, through the engine's completion path (its prompt layout capped at
  ``--fim-context`` tokens, token healing on and off); the expected middle is the rest of that
  line, the model's answer its greedy text up to the first newline or end of text (both with
  trailing whitespace stripped);
- MTP draft acceptance under greedy decoding (one MTP draft per step, prompt lookup off);
- decode speed, tokens/s.
Each corpus manifest (stdlib, PyPI: ``corpus.load_documents``) gets its own loss and FIM figures.
With ``--tasks`` (``tools/tasks.py``'s ``heldout.jsonl``, made from held-out files and packages):
- cross-file identifier exact match (``fim_cross``): the completion starts with the name another
  file of the package defines, with the context chunks the product's builder chose and without
  them; also the exact match of the whole rest of the line;
- repair success on held-out breakages: the code action's chat messages answered greedily and
  applied as the product applies them (``chat_candidate``), and its FIM requests tried in order
  (the first candidate that compiles is the one the product would keep); success when the file
  equals the original (so it parses); per breakage kind too;
- tool-call validity without constraints: the agent's first two steps (the task; then the
  read_file result) answered greedily with free decoding; valid when the answer holds a call of a
  known tool whose arguments fit its schema; and how often it is the expected tool.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import load_documents  # noqa: E402

from engine.backends import load_backend  # noqa: E402
from engine.generate import log_softmax  # noqa: E402
from engine.protocol import CompleteParams, ContextChunk, Sampling, parse_params  # noqa: E402
from engine.service import (  # noqa: E402
    Engine,
    EngineConfig,  # noqa: E402
    Job,
)
from engine.speculative import NO_SPECULATION, SpecConfig, greedy_decode  # noqa: E402
from engine.tokenizer import Tokenizer  # noqa: E402


def heldout_texts(manifest: Path) -> list[tuple[str, str]]:
    return [(d.path, d.text) for d in load_documents(manifest, "heldout")]


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


# --- task evals (tools/tasks.py's held-out samples) --------------------------------------------


def read_tasks(tasks: Path, kinds: tuple[str, ...]) -> list[dict]:
    with (tasks / "heldout.jsonl").open(encoding="utf-8") as f:
        return [s for s in map(json.loads, f) if s["kind"] in kinds]


def _run(engine: Engine, method: str, params: dict, i: int) -> dict:
    p = parse_params(method, params)
    job = Job(
        i, method, p, emit=lambda _: None, finish=lambda r, e: None, document=getattr(p, "document", None)
    )
    return engine.execute(job)


def _starts_with_name(text: str, name: str) -> bool:
    return text.startswith(name) and not (
        text[len(name) : len(name) + 1].isalnum() or text[len(name) : len(name) + 1] == "_"
    )


def cross_file_eval(engine: Engine, samples: list[dict], n: int, max_tokens: int = 48) -> dict:
    """Identifier and line exact match of ``fim_cross`` samples, with and without their context."""
    samples = samples[:n]
    out = {"cases": len(samples)}
    for with_context in (True, False):
        names = lines = 0
        t0 = time.perf_counter()
        for i, s in enumerate(samples):
            context = [ContextChunk(path, text) for path, text in s["context"]] if with_context else []
            params = {"prefix": s["prefix"], "suffix": s["suffix"], "path": s["path"], "max_tokens": max_tokens,
                      "stop": ["\n"], "context": [{"path": c.path, "text": c.text} for c in context],
                      "document": f"cross{i}-{with_context}"}  # fmt: skip
            got = _run(engine, "complete", params, i)["text"]
            names += _starts_with_name(got, s["name"])
            lines += got.rstrip() == s["middle"].rstrip()
        key = "with_context" if with_context else "without_context"
        out[key] = {"identifier_exact_match": names / max(len(samples), 1), "identifier_hits": names,
                    "line_exact_match": lines / max(len(samples), 1), "seconds": time.perf_counter() - t0}  # fmt: skip
    return out


def _breakages(samples: list[dict], n: int) -> list[dict]:
    """Distinct breakages of the repair samples, in file order, kinds interleaved as generated."""
    seen, out = set(), []
    for s in samples:
        key = (s["source"], s["broken"])
        if "broken" in s and key not in seen:
            seen.add(key)
            out.append(s)
    return out[:n]


def _compiles(text: str) -> bool:
    try:
        compile(text, "<repair>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


def repair_eval(engine: Engine, samples: list[dict], n: int, max_tokens: int = 256) -> dict:
    """Repair success through the code action's chat and FIM paths (see the module docstring)."""
    from mellum_lsp.edits import (
        Diagnostic,
        EditFormatError,
        chat_candidate,
        chat_messages,
        fim_candidate,
        fim_plans,
        list_actions,
    )

    cases = _breakages(samples, n)
    by_kind: dict[str, dict[str, int]] = {}
    totals = {"chat": 0, "fim": 0, "either": 0, "chat_parses": 0}
    examples = []
    t0 = time.perf_counter()
    for i, s in enumerate(cases):
        broken, original, d = s["broken"], s["original"], s["diagnostic"]
        diag = Diagnostic(d["start"], d["end"], d["message"])
        actions = list_actions(broken, "python", (d["start"], d["start"]), [diag], only=["quickfix"])
        kind = by_kind.setdefault(s["breakage"], {"cases": 0, "chat": 0, "fim": 0})
        kind["cases"] += 1
        ok_chat = ok_fim = False
        answer = ""
        if actions:
            action = actions[0]
            messages = chat_messages(broken, "python", action, path=s["source"])
            answer = _run(engine, "chat", {"messages": messages, "max_tokens": max_tokens}, i)["text"]
            try:
                candidate = chat_candidate(broken, action, answer)
            except EditFormatError:
                candidate = broken
            ok_chat = candidate == original
            totals["chat_parses"] += candidate != broken and _compiles(candidate)
            for plan in fim_plans(broken, "python", action):
                r = plan.request
                params = {"prefix": r["prefix"], "suffix": r["suffix"], "path": s["source"], "stop": r["stop"],
                          "max_tokens": r["max_tokens"], "document": f"repair{i}"}  # fmt: skip
                candidate = fim_candidate(broken, plan, _run(engine, "complete", params, i)["text"])
                if candidate != broken and (_compiles(candidate) or s["breakage"] not in SYNTAX_KINDS):
                    ok_fim = candidate == original  # the product keeps the first candidate that passes
                    break
        kind["chat"] += ok_chat
        kind["fim"] += ok_fim
        totals["chat"] += ok_chat
        totals["fim"] += ok_fim
        totals["either"] += ok_chat or ok_fim
        if len(examples) < 4:
            examples.append({"breakage": s["breakage"], "message": d["message"], "chat_answer": answer[:300]})
    m = max(len(cases), 1)
    return {"cases": len(cases), "chat_success": totals["chat"] / m, "fim_success": totals["fim"] / m,
            "either_success": totals["either"] / m, "chat_answers_that_parse": totals["chat_parses"] / m,
            "by_breakage": by_kind, "seconds": time.perf_counter() - t0, "examples": examples}  # fmt: skip


SYNTAX_KINDS = frozenset({"missing_colon", "unbalanced_bracket", "missing_comma", "wrong_indentation"})


def _fits(value: object, schema: dict) -> bool:
    """A small JSON Schema check: type, enum, required, properties, additionalProperties, minimum."""
    kind = schema.get("type")
    types = {
        "object": dict,
        "string": str,
        "integer": int,
        "number": (int, float),
        "boolean": bool,
        "array": list,
    }
    if kind in types and (
        not isinstance(value, types[kind]) or (kind in ("integer", "number") and isinstance(value, bool))
    ):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "minimum" in schema and isinstance(value, int | float) and value < schema["minimum"]:
        return False
    if kind == "object":
        props = schema.get("properties", {})
        if any(k not in value for k in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(props):
            return False
        return all(_fits(v, props[k]) for k, v in value.items() if k in props)
    return True


def tool_call_eval(engine: Engine, samples: list[dict], n: int, max_tokens: int = 160) -> dict:
    """Tool calls of the agent's first two steps with free decoding (see the module docstring)."""
    steps = []
    for s in samples:
        m = s["messages"]
        steps.append((m[:2], s["tools"], "read_file"))
        steps.append((m[:4], s["tools"], "propose_edit"))
    steps = steps[:n]
    valid = expected = any_call = 0
    issues: dict[str, int] = {}
    t0 = time.perf_counter()
    for i, (messages, tools, want) in enumerate(steps):
        r = _run(engine, "chat", {"messages": messages, "tools": tools, "max_tokens": max_tokens}, i)
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
        calls = r.get("tool_calls") or []
        any_call += bool(calls)
        ok = False
        if calls:
            fn = calls[0]["function"]
            try:
                args = json.loads(fn["arguments"] or "{}")
            except json.JSONDecodeError:
                args = None
            ok = fn["name"] in schemas and isinstance(args, dict) and _fits(args, schemas[fn["name"]])
            expected += ok and fn["name"] == want
        for issue in r.get("tool_call_issues") or ([] if calls else ["no tool call"]):
            issues[issue[:60]] = issues.get(issue[:60], 0) + 1
        valid += ok
    m = max(len(steps), 1)
    return {"steps": len(steps), "valid": valid / m, "expected_tool": expected / m, "any_call": any_call / m,
            "issues": dict(sorted(issues.items(), key=lambda kv: -kv[1])[:6]), "seconds": time.perf_counter() - t0}  # fmt: skip


EVALS = ("perplexity", "fim", "mtp", "cross", "repair", "tools")


def corpus_evals(a: argparse.Namespace, backend, tok: Tokenizer, docs, only: set[str]) -> dict:
    """Loss, single-line FIM exact match (with and without token healing) and MTP on held-out files."""
    out: dict = {"heldout_files": len(docs)}
    if "perplexity" in only:
        print("perplexity ...", file=sys.stderr)
        out["perplexity_1024"] = perplexity(backend, tok, docs, 1024, a.max_windows)
        out["perplexity_4096"] = perplexity(backend, tok, docs, 4096, max(4, a.max_windows // 4))
    if "fim" in only:
        print("single-line FIM ...", file=sys.stderr)
        cases = fim_cases(docs, a.fim_cases, a.seed)
        for heal in (True, False):
            config = EngineConfig(cache_mb=64, max_context=a.fim_context, token_healing=heal)
            key = "fim_single_line" if heal else "fim_single_line_no_healing"
            out[key] = fim_exact_match(Engine(backend, tok, config), cases, a.fim_context, 48)
    if "mtp" in only:
        print("MTP acceptance ...", file=sys.stderr)
        out["mtp"] = mtp_acceptance(backend, tok, docs, 24, 64, a.seed)
    return out


def task_evals(a: argparse.Namespace, backend, tok: Tokenizer, only: set[str]) -> dict:
    out: dict = {}
    engine = Engine(backend, tok, EngineConfig(cache_mb=256, max_context=a.task_context))
    if "cross" in only:
        print("cross-file identifiers ...", file=sys.stderr)
        out["cross_file"] = cross_file_eval(engine, read_tasks(a.tasks, ("fim_cross",)), a.task_cases)
    if "repair" in only:
        print("repair ...", file=sys.stderr)
        kinds = ("repair_chat", "repair_fim", "agent_repair")
        out["repair"] = repair_eval(engine, read_tasks(a.tasks, kinds), a.task_cases)
    if "tools" in only:
        print("tool calls ...", file=sys.stderr)
        out["tool_calls"] = tool_call_eval(engine, read_tasks(a.tasks, ("agent_repair",)), a.task_cases)
    return out


def summary(out: dict) -> list[str]:
    lines = []
    for name, c in out["corpora"].items():
        if "perplexity_1024" in c:
            p1, p4 = c["perplexity_1024"], c["perplexity_4096"]
            lines.append(f"[{name}] held-out loss {p1['loss']:.3f} (ppl {p1['perplexity']:.2f}) on {p1['tokens']} "
                         f"tokens in 1024-windows; {p4['loss']:.3f} in 4096-windows")  # fmt: skip
        if "fim_single_line" in c:
            f, g = c["fim_single_line"], c["fim_single_line_no_healing"]
            lines.append(f"[{name}] single-line FIM exact match {f['exact_match']:.1%} ({f['hits']}/{f['cases']}); "
                         f"without token healing {g['exact_match']:.1%}")  # fmt: skip
        m = c.get("mtp", {})
        if m.get("available"):
            lines.append(f"[{name}] MTP acceptance {m['acceptance']:.1%}; decode {m['mtp_tok_s']:.0f} tok/s with MTP, "
                         f"{m['plain_tok_s']:.0f} without; identical {m['identical_outputs']}")  # fmt: skip
    if "cross_file" in out:
        x = out["cross_file"]
        w, wo = x["with_context"], x["without_context"]
        lines.append(f"cross-file identifier exact match {w['identifier_exact_match']:.1%} with context, "
                     f"{wo['identifier_exact_match']:.1%} without ({x['cases']} cases; whole line "
                     f"{w['line_exact_match']:.1%} / {wo['line_exact_match']:.1%})")  # fmt: skip
    if "repair" in out:
        r = out["repair"]
        lines.append(f"repair success {r['either_success']:.1%} ({r['cases']} breakages): chat {r['chat_success']:.1%}, "
                     f"FIM {r['fim_success']:.1%}")  # fmt: skip
    if "tool_calls" in out:
        t = out["tool_calls"]
        lines.append(f"tool-call validity without constraints {t['valid']:.1%} ({t['steps']} steps; any call "
                     f"{t['any_call']:.1%}, the expected tool {t['expected_tool']:.1%})")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument(
        "--corpus", type=Path, nargs="+", required=True, help="manifests: the first gives the top-level keys"
    )
    p.add_argument("--tasks", type=Path, default=None, help="tools/tasks.py's output folder (heldout.jsonl)")
    p.add_argument(
        "--only", nargs="+", choices=EVALS, default=None, help="these evals (default: all that apply)"
    )
    p.add_argument("--backend", default="auto")
    p.add_argument("--fim-cases", type=int, default=500)
    p.add_argument("--fim-context", type=int, default=2048)
    p.add_argument("--task-cases", type=int, default=200)
    p.add_argument("--task-context", type=int, default=4096)
    p.add_argument("--max-windows", type=int, default=64)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    only = set(a.only or EVALS)
    if a.tasks is None:
        only -= {"cross", "repair", "tools"}
    backend = load_backend(a.model, a.backend, threads=a.threads)
    tok = Tokenizer.from_folder(a.model)
    out: dict = {"model": a.model, "backend": backend.name, "corpora": {}}
    for k, manifest in enumerate(a.corpus):
        held = load_documents(manifest, "heldout")
        docs = [(d.path, d.text) for d in held]
        source = held[0].source if held else manifest.stem
        result = corpus_evals(a, backend, tok, docs, only)
        out["corpora"][source] = result
        if k == 0:
            out |= result  # the first corpus keeps the keys tools/write_model_card.py reads
    out |= task_evals(a, backend, tok, only)
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print("\n".join(summary(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
