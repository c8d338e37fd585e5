"""Benchmark of the repository index and the context builder on a synthetic repository.

    python benchmarks/bench_index.py --files 10000 --json

Generates a mixed-language repository (Python, TypeScript, JavaScript, Go, Rust, Java, C) of
2-8 KB files made from templated functions and classes with varied identifiers, then times the
full index build, the incremental update of one file, `build_context` at several budgets (cold:
no cache) and a keystroke inside a line with a `ContextCache`. Prints a table, and with --json a
JSON object {files, build_s, files_per_s, update_ms, context_ms, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mellum_lsp.context import ContextCache, IndexConfig, RepoIndex, build_context  # noqa: E402

VERBS = """get set load save parse render build compute update delete create find merge split validate
normalize encode decode fetch send receive open close start stop reset apply filter map reduce sort
index search insert remove resolve register dispatch handle format convert scan flush emit collect
track schedule cancel retry measure compare""".split()
NOUNS = """user account order invoice payment customer product item cart session token request
response header body record entry table column row cache buffer queue stream packet message event
listener handler config setting option profile address region country currency price discount tax
report summary metric counter timer window frame layer node edge graph tree path route module
package client server socket channel worker task job batch chunk block page document file
folder image color shape point vector matrix tensor model layout widget""".split()
TYPES = {"python": ["int", "str", "float", "bytes", "list[int]", "dict[str, int]"],
         "ts": ["number", "string", "boolean", "string[]", "Record<string, number>"],
         "go": ["int", "string", "float64", "[]byte", "map[string]int"],
         "rust": ["i64", "String", "f64", "Vec<u8>", "usize"],
         "java": ["int", "String", "double", "long", "List<String>"],
         "c": ["int", "double", "size_t", "char *", "uint32_t"]}  # fmt: skip


def _words(rng: random.Random, k: int) -> list[str]:
    return [rng.choice(NOUNS) for _ in range(k)]


def snake(parts: list[str]) -> str:
    return "_".join(parts)


def camel(parts: list[str]) -> str:
    return parts[0] + "".join(p.title() for p in parts[1:])


def pascal(parts: list[str]) -> str:
    return "".join(p.title() for p in parts)


def _py_function(rng: random.Random) -> str:
    fn = snake([rng.choice(VERBS), *_words(rng, rng.randint(1, 2))])
    a, b, v = snake(_words(rng, 1)), snake(_words(rng, 1)) + "_count", snake(_words(rng, 2))
    helper = snake([rng.choice(VERBS), rng.choice(NOUNS)])
    t = rng.choice(TYPES["python"])
    return f'''
def {fn}({a}: {t}, {b}: int = {rng.randint(1, 99)}) -> {t}:
    """{rng.choice(VERBS).title()} the {rng.choice(NOUNS)} for a {rng.choice(NOUNS)}."""
    {v} = {helper}({a}, {b})
    if {v} is None:
        raise ValueError("missing {rng.choice(NOUNS)}: %s" % ({b},))
    for index in range({b}):
        {v} = {snake([rng.choice(VERBS), rng.choice(NOUNS)])}({v}, index)
        if index % {rng.randint(2, 9)} == 0:
            {v} = {v}
    return {v}
'''


def _py_class(rng: random.Random) -> str:
    name = pascal(_words(rng, 2))
    fields = _words(rng, 3)
    methods = "".join(
        f"""
    def {snake([rng.choice(VERBS), f])}(self, value: {rng.choice(TYPES["python"])}) -> None:
        self.{f} = value
        self._{snake([rng.choice(NOUNS), "count"])} += 1
"""
        for f in fields
    )
    init = "\n".join(f"        self.{f} = {f}" for f in fields)
    return f'''
class {name}:
    """A {fields[0]} with a {fields[1]}."""

    def __init__(self, {", ".join(fields)}):
{init}
{methods}'''


def _ts_function(rng: random.Random) -> str:
    fn = camel([rng.choice(VERBS), *_words(rng, rng.randint(1, 2))])
    a, v = camel(_words(rng, 1)), camel(_words(rng, 2))
    t = rng.choice(TYPES["ts"])
    return f"""
export function {fn}({a}: {t}, limit: number = {rng.randint(1, 99)}): {t} {{
  let {v} = {camel([rng.choice(VERBS), rng.choice(NOUNS)])}({a}, limit);
  for (let i = 0; i < limit; i++) {{
    if ({v} === undefined) {{
      throw new Error("missing {rng.choice(NOUNS)}");
    }}
    {v} = {camel([rng.choice(VERBS), rng.choice(NOUNS)])}({v}, i);
  }}
  return {v};
}}
"""


def _ts_class(rng: random.Random) -> str:
    name = pascal(_words(rng, 2))
    fields = _words(rng, 3)
    methods = "".join(
        f"""
  {camel([rng.choice(VERBS), f])}(value: {rng.choice(TYPES["ts"])}): void {{
    this.{f} = value;
    this.{camel([rng.choice(NOUNS), "count"])} += 1;
  }}
"""
        for f in fields
    )
    props = "\n".join(f"  {f}: unknown;" for f in fields)
    return f"""
export interface {name}Options {{
{props}
}}

export class {name} {{
{props}
{methods}}}
"""


def _js_function(rng: random.Random) -> str:
    fn = camel([rng.choice(VERBS), *_words(rng, rng.randint(1, 2))])
    a, v = camel(_words(rng, 1)), camel(_words(rng, 2))
    return f"""
/**
 * {rng.choice(VERBS).title()} the {rng.choice(NOUNS)} of a {rng.choice(NOUNS)}.
 */
export function {fn}({a}, limit = {rng.randint(1, 99)}) {{
  let {v} = {camel([rng.choice(VERBS), rng.choice(NOUNS)])}({a}, limit);
  for (let i = 0; i < limit; i++) {{
    if ({v} === undefined) {{
      throw new Error(`missing {rng.choice(NOUNS)} ${{i}}`);
    }}
    {v} = {camel([rng.choice(VERBS), rng.choice(NOUNS)])}({v}, i);
  }}
  return {v};
}}
"""


def _js_class(rng: random.Random) -> str:
    name = pascal(_words(rng, 2))
    fields = _words(rng, 3)
    methods = "".join(
        f"""
  {camel([rng.choice(VERBS), f])}(value) {{
    this.{f} = value;
    this.{camel([rng.choice(NOUNS), "count"])} += 1;
  }}
"""
        for f in fields
    )
    init = "\n".join(f"    this.{f} = {f};" for f in fields)
    return f"""
export class {name} {{
  constructor({", ".join(fields)}) {{
{init}
  }}
{methods}}}
"""


def _go_function(rng: random.Random) -> str:
    fn = pascal([rng.choice(VERBS), *_words(rng, rng.randint(1, 2))])
    a, v = camel(_words(rng, 1)), camel(_words(rng, 2))
    t = rng.choice(TYPES["go"])
    return f"""
// {fn} {rng.choice(VERBS)}s the {rng.choice(NOUNS)}.
func {fn}({a} {t}, limit int) ({t}, error) {{
	{v} := {camel([rng.choice(VERBS), rng.choice(NOUNS)])}({a}, limit)
	for i := 0; i < limit; i++ {{
		if i%{rng.randint(2, 9)} == 0 {{
			return {v}, fmt.Errorf("bad {rng.choice(NOUNS)} %d", i)
		}}
	}}
	return {v}, nil
}}
"""


def _go_type(rng: random.Random) -> str:
    name = pascal(_words(rng, 2))
    fields = "\n".join(f"\t{pascal([f])} {rng.choice(TYPES['go'])}" for f in _words(rng, 4))
    return f"""
type {name} struct {{
{fields}
}}

func (s *{name}) {pascal([rng.choice(VERBS), rng.choice(NOUNS)])}() int {{
	return len(s.{pascal([rng.choice(NOUNS)])}) + {rng.randint(1, 9)}
}}
"""


def _rust_function(rng: random.Random) -> str:
    fn = snake([rng.choice(VERBS), *_words(rng, rng.randint(1, 2))])
    a, v = snake(_words(rng, 1)), snake(_words(rng, 2))
    t = rng.choice(TYPES["rust"])
    return f"""
/// {rng.choice(VERBS).title()} the {rng.choice(NOUNS)}.
pub fn {fn}({a}: {t}, limit: usize) -> Result<{t}, String> {{
    let mut {v} = {snake([rng.choice(VERBS), rng.choice(NOUNS)])}(&{a}, limit);
    for i in 0..limit {{
        if i % {rng.randint(2, 9)} == 0 {{
            return Err(format!("bad {rng.choice(NOUNS)} {{}}", i));
        }}
    }}
    Ok({v})
}}
"""


def _rust_type(rng: random.Random) -> str:
    name = pascal(_words(rng, 2))
    fields = _words(rng, 3)
    body = "\n".join(f"    pub {f}: {rng.choice(TYPES['rust'])}," for f in fields)
    return f"""
#[derive(Debug, Clone)]
pub struct {name} {{
{body}
}}

impl {name} {{
    pub fn {snake([rng.choice(VERBS), fields[0]])}(&self) -> usize {{
        self.{fields[1]}.len() + {rng.randint(1, 9)}
    }}
}}
"""


def _java_method(rng: random.Random) -> str:
    fn = camel([rng.choice(VERBS), *_words(rng, rng.randint(1, 2))])
    a, v = camel(_words(rng, 1)), camel(_words(rng, 2))
    t = rng.choice(TYPES["java"])
    return f"""
    public {t} {fn}({t} {a}, int limit) {{
        {t} {v} = {camel([rng.choice(VERBS), rng.choice(NOUNS)])}({a}, limit);
        for (int i = 0; i < limit; i++) {{
            if (i % {rng.randint(2, 9)} == 0) {{
                throw new IllegalStateException("bad {rng.choice(NOUNS)} " + i);
            }}
        }}
        return {v};
    }}
"""


def _c_function(rng: random.Random) -> str:
    fn = snake([rng.choice(VERBS), *_words(rng, rng.randint(1, 2))])
    a, v = snake(_words(rng, 1)), snake(_words(rng, 2))
    t = rng.choice(TYPES["c"])
    return f"""
{t} {fn}({t} {a}, int limit) {{
    {t} {v} = {snake([rng.choice(VERBS), rng.choice(NOUNS)])}({a}, limit);
    for (int i = 0; i < limit; i++) {{
        if (i % {rng.randint(2, 9)} == 0) {{
            return {v};
        }}
    }}
    return {v};
}}
"""


LANG_MIX = [("python", 30), ("typescript", 20), ("javascript", 10), ("go", 15), ("rust", 10), ("java", 10), ("c", 5)]  # fmt: skip


def _fill(rng: random.Random, head: str, parts, tail: str = "") -> str:
    """`head`, then pieces until the file has 2-8 KB, then `tail`."""
    target = rng.randint(2048, 8192)
    out = [head]
    size = len(head) + len(tail)
    while size < target:
        piece = rng.choice(parts)(rng)
        out.append(piece)
        size += len(piece)
    out.append(tail)
    return "".join(out)


def _sibling_module(path: str) -> tuple[str, str]:
    return os.path.basename(os.path.dirname(path)), os.path.basename(path).rsplit(".", 1)[0]


def generate_repo(root: str, n_files: int, seed: int = 0) -> list[str]:
    """Write `n_files` synthetic source files under `root`; returns their relative paths."""
    rng = random.Random(seed)
    langs = [lang for lang, w in LANG_MIX for _ in range(w)]
    paths: list[str] = []
    by_lang: dict[str, list[str]] = {}
    with open(os.path.join(root, "go.mod"), "w") as f:
        f.write("module example.com/bench\n\ngo 1.22\n")
    for i in range(n_files):
        lang = rng.choice(langs)
        pkg = f"pkg{i % 97:02d}"
        siblings = rng.sample(by_lang.get(lang, []), min(2, len(by_lang.get(lang, []))))
        if lang == "python":
            rel = f"py/{pkg}/mod_{i}.py"
            imports = ["import os", *("from py.{}.{} import *".format(*_sibling_module(p)) for p in siblings)]
            text = _fill(rng, "\n".join(imports) + "\n", [_py_function, _py_function, _py_class])
        elif lang in ("typescript", "javascript"):
            rel = f"web/{pkg}/mod_{i}" + (".ts" if lang == "typescript" else ".js")
            imports = [
                'import * as m{} from "../{}/{}";'.format(j, *_sibling_module(p))
                for j, p in enumerate(siblings)
            ]
            if lang == "typescript":
                parts = [_ts_function, _ts_function, _ts_class]
            else:
                parts = [_js_function, _js_function, _js_class]
            text = _fill(rng, "\n".join(imports) + "\n", parts)
        elif lang == "go":
            rel = f"go/{pkg}/file_{i}.go"
            head = f'package {pkg}\n\nimport (\n\t"fmt"\n\t"example.com/bench/go/pkg{rng.randint(0, 96):02d}"\n)\n'
            text = _fill(rng, head, [_go_function, _go_function, _go_type])
        elif lang == "rust":
            rel = f"rs/src/{pkg}/m{i}.rs"
            head = "use std::collections::HashMap;\nuse crate::util::helpers;\n"
            text = _fill(rng, head, [_rust_function, _rust_type])
        elif lang == "java":
            cls = pascal(_words(rng, 2)) + str(i)
            rel = f"java/src/main/java/com/bench/{pkg}/{cls}.java"
            head = f"package com.bench.{pkg};\n\nimport java.util.List;\n\npublic class {cls} {{\n"
            text = _fill(rng, head, [_java_method], "}\n")
        else:
            rel = f"c/{pkg}/unit_{i}.c"
            text = _fill(rng, f'#include <stdio.h>\n#include "unit_{i}.h"\n', [_c_function])
        full = os.path.join(root, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)
        paths.append(rel)
        by_lang.setdefault(lang, []).append(rel)
    return paths


def _offset_of_line(lines: list[str], line: int, column: int) -> int:
    return sum(len(x) + 1 for x in lines[:line]) + column


def run(n_files: int, workers: int | None, seed: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="mellum-bench-") as root:
        t0 = time.perf_counter()
        paths = generate_repo(root, n_files, seed)
        gen_s = time.perf_counter() - t0
        total_bytes = sum(os.path.getsize(os.path.join(root, p)) for p in paths)

        index = RepoIndex(root, IndexConfig(max_files=max(n_files * 2, 50_000)))
        stats = index.build(workers=workers)

        doc = next(p for p in paths if p.endswith(".py"))
        with open(os.path.join(root, doc)) as f:
            text = f.read()
        update_times = []
        for k in range(20):
            edited = text.replace("index", f"index{k}", 1) + f"\n# edit {k}\n"
            t0 = time.perf_counter()
            index.update_file(doc, edited)
            update_times.append(time.perf_counter() - t0)
        index.update_file(doc, text)

        rng = random.Random(seed + 1)
        lines = text.split("\n")
        context_ms: dict[str, float] = {}
        context_chunks: dict[str, int] = {}
        for budget in (2048, 8192, 32768, 131072):
            times = []
            for _ in range(5):
                line = rng.randrange(len(lines) // 4, len(lines))
                offset = _offset_of_line(lines, line, len(lines[line]) // 2)
                t0 = time.perf_counter()
                chunks = build_context(index, doc, text, offset, budget)
                times.append(time.perf_counter() - t0)
            context_ms[str(budget)] = round(statistics.median(times) * 1000, 2)
            context_chunks[str(budget)] = len(chunks)

        # typing inside a line with a ContextCache: the per-keystroke cost once the selection is made
        cache = ContextCache()
        line = len(lines) // 2
        offset = _offset_of_line(lines, line, len(lines[line]))
        build_context(index, doc, text, offset, 32768, cache=cache)
        keystroke = []
        for i in range(1, 21):
            typed = text[:offset] + "x" * i + text[offset:]
            t0 = time.perf_counter()
            build_context(index, doc, typed, offset + i, 32768, cache=cache)
            keystroke.append(time.perf_counter() - t0)

    return {
        "files": stats.files,
        "bytes": total_bytes,
        "windows": stats.windows,
        "definitions": stats.definitions,
        "generate_s": round(gen_s, 2),
        "build_s": round(stats.seconds, 3),
        "files_per_s": round(stats.files / stats.seconds, 1),
        "workers": stats.workers,
        "update_ms": round(statistics.median(update_times) * 1000, 2),
        "context_ms": context_ms,
        "context_chunks": context_chunks,
        "keystroke_cached_ms": round(statistics.median(keystroke) * 1000, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mellum-lsp bench index", description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=None, help="index build processes (default: auto)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="also print the result as one JSON object")
    args = ap.parse_args(argv)
    result = run(args.files, args.workers, args.seed)
    rows = [
        ("files", f"{result['files']:,}"),
        ("source bytes", f"{result['bytes']:,}"),
        ("windows", f"{result['windows']:,}"),
        ("definitions", f"{result['definitions']:,}"),
        ("build workers", str(result["workers"])),
        ("full build (s)", f"{result['build_s']:.2f}"),
        ("files/s", f"{result['files_per_s']:,.0f}"),
        ("update one file (ms)", f"{result['update_ms']:.2f}"),
        *(
            (f"context {int(b) // 1024}K (ms)", f"{ms:.2f}  ({result['context_chunks'][b]} chunks)")
            for b, ms in result["context_ms"].items()
        ),
        ("keystroke, cached (ms)", f"{result['keystroke_cached_ms']:.3f}"),
        ("peak RSS (MB)", f"{result['peak_rss_mb']:.1f}"),
    ]
    for label, value in rows:
        print(f"{label:<24}{value:>24}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
