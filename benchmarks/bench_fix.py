"""Syntax fixes through the code-action path, on breakages of code the model never saw.

    mellum-lsp bench fix [--model DIR] [--cases 60] [--seed 0] [--json]

Cases: lines of the embedded model's held-out standard-library files (`HELDOUT`, the
`tools/corpus.py` split) broken one way each — a block header's `:` removed, a line's last `)` or
`]` removed, a `,` between arguments or items removed, a one-line string's closing quote removed,
a stray `)` added — spread evenly over the kinds, chosen with a seeded generator among the lines
where the breakage makes the file fail to compile. Each case goes through `fix_cli.fix_text`, the
"Fix with Mellum" path: the published diagnostic, its quickfix, `edits.generate.generate_edit`
against an engine child over stdio (the embedded model unless `--model`).

`fixed_share`: cases where an edit was offered and the file then compiles; `exact_share`: where the
offered edit restores the original text; `invalid_offered`: edits offered after which the file
does not compile (checked here with `compile()`, independently of the validator; must be 0);
`p50_ms`/`p90_ms`: the time of the edit (all candidates until the first valid one, or all).
`--json` prints one object: `{"cases", "fixed_share", "exact_share", "invalid_offered", "p50_ms",
"p90_ms", "candidates_mean", "by_kind", ...}`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import sys
import sysconfig
import tokenize
from dataclasses import dataclass
from pathlib import Path

from mellum_lsp.edits import diagnostic_problems, python_compile_problem
from mellum_lsp.edits.generate import GenerateOptions
from mellum_lsp.fix_cli import fix_text, open_engine

# Held out of the embedded model's training (tools/corpus.py: split_files of the 3.11 stdlib, seed
# 20250101; a test checks it).
HELDOUT = (
    "_collections_abc.py", "asyncio/taskgroups.py", "cProfile.py", "codeop.py", "decimal.py", "difflib.py",
    "distutils/__init__.py", "distutils/archive_util.py", "distutils/command/register.py",
    "distutils/command/upload.py", "distutils/dep_util.py", "distutils/filelist.py", "distutils/msvccompiler.py",
    "encodings/aliases.py", "encodings/base64_codec.py", "encodings/cp1250.py", "encodings/cp869.py",
    "encodings/cp874.py", "encodings/iso8859_10.py", "encodings/mac_turkish.py", "encodings/palmos.py",
    "encodings/quopri_codec.py", "encodings/shift_jis_2004.py", "encodings/utf_16_be.py", "idlelib/debugobj_r.py",
    "idlelib/run.py", "idlelib/window.py", "importlib/resources/__init__.py", "json/scanner.py",
    "lib2to3/fixes/fix_intern.py", "lib2to3/fixes/fix_ne.py", "multiprocessing/dummy/connection.py",
    "multiprocessing/resource_sharer.py", "pathlib.py", "posixpath.py", "py_compile.py", "re/_casefix.py",
    "runpy.py", "socket.py", "sre_parse.py", "string.py", "timeit.py", "tkinter/commondialog.py",
    "urllib/__init__.py", "xml/etree/ElementPath.py",
)  # fmt: skip
KINDS = ("colon", "close_paren", "close_bracket", "comma", "quote", "extra_paren")
BLOCK_KEYWORDS = (
    "def",
    "class",
    "if",
    "elif",
    "else",
    "for",
    "while",
    "with",
    "try",
    "except",
    "finally",
    "async",
)


@dataclass(frozen=True)
class Case:
    path: str  # relative to the stdlib
    kind: str
    line: int  # 0-based line broken
    source: str
    broken: str


def _edit(source: str, line_starts: list[int], row: int, col: int, remove: int, insert: str = "") -> str:
    """`source` with `remove` characters at (1-based row, col) replaced by `insert`."""
    at = line_starts[row - 1] + col
    return source[:at] + insert + source[at + remove :]


def _sites(source: str) -> dict[str, list[tuple[int, int, int, str]]]:
    """Where each kind of breakage can go: (1-based row, column, characters removed, inserted)."""
    sites: dict[str, list[tuple[int, int, int, str]]] = {k: [] for k in KINDS}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return sites
    lines: dict[int, list[tokenize.TokenInfo]] = {}
    for t in tokens:
        if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            lines.setdefault(t.start[0], []).append(t)
    for row, toks in lines.items():
        if any(t.start[0] != t.end[0] for t in toks):
            continue  # a token spanning lines (a docstring): leave the line alone
        last, first = toks[-1], toks[0]
        if last.string == ":" and first.string in BLOCK_KEYWORDS and first.start[0] == row:
            sites["colon"].append((row, last.start[1], 1, ""))
        opens = sum(t.string in "([{" and t.type == tokenize.OP for t in toks)
        closes = sum(t.string in ")]}" and t.type == tokenize.OP for t in toks)
        if opens == closes and opens:
            if last.string == ")":
                sites["close_paren"].append((row, last.start[1], 1, ""))
                sites["extra_paren"].append((row, last.end[1], 0, ")"))
            if last.string == "]":
                sites["close_bracket"].append((row, last.start[1], 1, ""))
            for i, t in enumerate(toks[1:-1], 1):
                if (
                    t.string == ","
                    and toks[i + 1].string not in ")]}"
                    and toks[i + 1].start == (row, t.end[1] + 1)
                ):
                    sites["comma"].append((row, t.start[1], 1, ""))
        for t in toks:
            s = t.string
            if (
                t.type == tokenize.STRING
                and len(s) >= 3
                and s[0] in "'\""
                and s[-1] == s[0]
                and s[:3] != s[0] * 3
            ):
                sites["quote"].append((row, t.end[1] - 1, 1, ""))
    return sites


def make_cases(root: Path, n: int, seed: int) -> list[Case]:
    """`n` breakages spread evenly over `KINDS` (see the module docstring)."""
    rng = random.Random(seed)
    pool: dict[str, list[tuple[str, tuple[int, int, int, str]]]] = {k: [] for k in KINDS}
    sources: dict[str, str] = {}
    for rel in HELDOUT:
        path = root / rel
        if not path.is_file():
            continue
        sources[rel] = source = path.read_text(encoding="utf-8")
        for kind, sites in _sites(source).items():
            pool[kind] += [(rel, site) for site in sites]
    cases: list[Case] = []
    per_kind = {k: n // len(KINDS) + (i < n % len(KINDS)) for i, k in enumerate(KINDS)}
    for kind in KINDS:
        candidates = pool[kind]
        rng.shuffle(candidates)
        taken = 0
        for rel, (row, col, remove, insert) in candidates:
            if taken == per_kind[kind]:
                break
            source = sources[rel]
            starts = [0]
            for line in source.splitlines(keepends=True):
                starts.append(starts[-1] + len(line))
            broken = _edit(source, starts, row, col, remove, insert)
            if python_compile_problem(broken, rel) is None or not diagnostic_problems(broken, "python", rel):
                continue  # still valid Python (a trailing comma, say): not a breakage
            cases.append(Case(rel, kind, row - 1, source, broken))
            taken += 1
    return cases


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(cases: list[Case], model: str | None, backend: str, options: GenerateOptions) -> dict:
    rows = []
    async with open_engine(None, model, backend) as engine:
        for i, case in enumerate(cases):
            outcome = await fix_text(
                engine, case.broken, case.path, options=options, document=f"bench:{i}/{case.path}"
            )
            result = outcome.result
            offered = result is not None and result.ok and result.new_text is not None
            compiles = offered and python_compile_problem(result.new_text, case.path) is None
            rows.append({
                "path": case.path, "kind": case.kind, "line": case.line + 1, "offered": offered,
                "fixed": compiles, "exact": offered and result.new_text == case.source,
                "invalid": offered and not compiles, "ms": result.timing.get("total_ms", 0.0) if result else 0.0,
                "candidates": result.candidates_tried if result else 0, "via": result.via if result else "",
                "reason": result.reason if result else "no problem found",
            })  # fmt: skip
            mark = "fixed" if compiles else "INVALID" if offered else "-"
            print(f"[{i + 1}/{len(cases)}] {case.kind:<13} {case.path}:{case.line + 1} {mark} "
                  f"({rows[-1]['ms']:.0f} ms, {rows[-1]['candidates']} candidates)", file=sys.stderr)  # fmt: skip
        info = engine.info
    return summary(rows) | {"model": info.get("model"), "rows": rows}


def summary(rows: list[dict]) -> dict:
    n = len(rows) or 1
    times = [r["ms"] for r in rows]
    by_kind = {}
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        if mine:
            by_kind[kind] = {"cases": len(mine), "fixed": sum(r["fixed"] for r in mine),
                             "exact": sum(r["exact"] for r in mine)}  # fmt: skip
    return {
        "cases": len(rows),
        "fixed_share": round(sum(r["fixed"] for r in rows) / n, 4),
        "exact_share": round(sum(r["exact"] for r in rows) / n, 4),
        "invalid_offered": sum(r["invalid"] for r in rows),
        "p50_ms": round(_pct(times, 0.5), 1),
        "p90_ms": round(_pct(times, 0.9), 1),
        "fixed_p50_ms": round(_pct([r["ms"] for r in rows if r["fixed"]], 0.5), 1),
        "candidates_mean": round(statistics.fmean([r["candidates"] for r in rows]), 2) if rows else 0.0,
        "by_kind": by_kind,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mellum-lsp bench fix", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", metavar="DIR", help="model folder (default: the embedded model)")
    ap.add_argument("--backend", choices=["auto", "torch", "ort"], default="auto")
    ap.add_argument("--cases", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--candidates", type=int, default=GenerateOptions.candidates)
    ap.add_argument("--mode", choices=["auto", "chat", "fim"], default="auto")
    ap.add_argument(
        "--stdlib", metavar="DIR", default=sysconfig.get_paths()["stdlib"], help="where HELDOUT lives"
    )
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    a = ap.parse_args(argv)
    cases = make_cases(Path(a.stdlib), a.cases, a.seed)
    if not cases:
        print(f"mellum-lsp bench fix: no held-out files under {a.stdlib}", file=sys.stderr)
        return 2
    options = GenerateOptions(mode=a.mode, candidates=a.candidates)
    result = asyncio.run(run(cases, a.model, a.backend, options))
    table = {k: v for k, v in result.items() if k not in ("rows", "by_kind")}
    for key, value in table.items():
        print(f"{key:<18}{value}")
    for kind, row in result["by_kind"].items():
        print(f"  {kind:<16}{row['fixed']}/{row['cases']} fixed, {row['exact']} exact")
    if a.json:
        print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
