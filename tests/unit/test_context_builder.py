"""build_context: budget, order, stability while typing, exclusions (mellum_lsp.context.builder)."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from mellum_lsp.context import (
    ContextCache,
    ContextConfig,
    RecentSnippets,
    RepoIndex,
    build_context,
    estimate_tokens,
)
from mellum_lsp.context.builder import chunk_key

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "repo"
GROUP = {"file": 0, "outline": 0, "definition": 1, "window": 2, "recent_edit": 3, "recent_view": 3}
OVERHEAD = ContextConfig().chunk_overhead_tokens


@pytest.fixture(scope="module")
def index() -> RepoIndex:
    idx = RepoIndex(str(FIXTURE))
    idx.build(workers=1)
    return idx


def _text(rel: str) -> str:
    return (FIXTURE / rel).read_text()


def _offset(text: str, needle: str, delta: int = 0) -> int:
    return text.index(needle) + delta


def _cost(chunks, count=estimate_tokens) -> int:
    return sum(count(c.path) + count(c.text) + OVERHEAD for c in chunks)


def test_imported_files_are_included_and_current_document_is_not(index: RepoIndex) -> None:
    doc = "pyproj/src/shop/pricing.py"
    text = _text(doc)
    chunks = build_context(index, doc, text, _offset(text, "total = "), 4096)
    assert doc not in {c.path for c in chunks}
    whole = {c.path for c in chunks if c.kind == "file"}
    assert whole == {"pyproj/src/shop/models.py", "pyproj/src/shop/utils.py"}
    assert {c.text for c in chunks if c.kind == "file"} == {_text(p) for p in whole}
    assert all(c.key == chunk_key(c.path, c.text) for c in chunks)


def test_every_document_is_excluded_and_paths_are_relative(index: RepoIndex) -> None:
    for doc in index.paths():
        text = _text(doc)
        for offset in (0, len(text) // 2, len(text)):
            for budget in (64, 2048):
                chunks = build_context(index, str(FIXTURE / doc), text, offset, budget)
                assert all(c.path != doc for c in chunks)
                assert all(
                    c.path in index.paths() and not c.path.startswith("/") and "\\" not in c.path
                    for c in chunks
                )


def test_definitions_of_names_near_the_cursor(index: RepoIndex) -> None:
    doc = "pyproj/new_script.py"  # an unsaved buffer: not in the index, imports nothing
    text = "order = Order('c-9')\nprice = apply_discount(order, 5)\n\nprint(\n"
    chunks = build_context(index, doc, text, len(text), 2048)
    defs = {(c.path, c.text.split("\n", 1)[0]) for c in chunks if c.kind == "definition"}
    assert ("pyproj/src/shop/models.py", "@dataclass") in defs
    assert ("pyproj/src/shop/pricing.py", "def apply_discount(order: Order, percent: float) -> int:") in defs


def test_outline_when_an_import_is_too_big(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    body = "".join(f"def helper_{i}(x):\n    y = x + {i}\n    return y * 2\n\n" for i in range(300))
    (root / "big.py").write_text(body)
    (root / "main.py").write_text("import big\n\nbig.helper_1(3)\n")
    idx = RepoIndex(str(root))
    idx.build(workers=1)
    chunks = build_context(idx, "main.py", _read(root / "main.py"), 0, 2048)
    [outline] = [c for c in chunks if c.path == "big.py" and c.kind == "outline"]
    assert outline.text.startswith("def helper_0(x): ...\ndef helper_1(x): ...")


def _read(path: Path) -> str:
    return path.read_text()


def test_order_is_most_stable_first(index: RepoIndex) -> None:
    recent = RecentSnippets()
    recent.record_edit("goapp/store/store.go", _text("goapp/store/store.go"), 14)
    doc = "web/src/index.ts"
    text = _text(doc)
    chunks = build_context(index, doc, text, _offset(text, "cart.addLine"), 8192, recent=recent)
    groups = [GROUP[c.kind] for c in chunks]
    assert groups == sorted(groups)
    assert chunks[-1].kind == "recent_edit" and chunks[-1].path == "goapp/store/store.go"
    for g in (0, 1, 2):
        paths = [c.path for c in chunks if GROUP[c.kind] == g]
        assert paths == sorted(paths)


def test_recent_snippets_of_the_current_document_are_skipped(index: RepoIndex) -> None:
    doc = "web/src/index.ts"
    text = _text(doc)
    recent = RecentSnippets()
    recent.record_view("goapp/main.go", _text("goapp/main.go"), 0, 6)
    recent.record_edit(str(FIXTURE / doc), text, 3)  # the newest, but it is the document itself
    chunks = build_context(index, doc, text, 10, 4096, recent=recent)
    assert [(c.path, c.kind) for c in chunks if c.kind.startswith("recent")] == [
        ("goapp/main.go", "recent_view")
    ]
    assert all(c.path != doc for c in chunks)


def _counters():
    return {
        "estimate": None,
        "chars": len,
        "words": lambda s: len(s.split()) + 1,
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    budget=st.integers(1, 20_000),
    doc=st.sampled_from(
        ["pyproj/src/shop/pricing.py", "web/src/index.ts", "rustcrate/src/lib.rs", "clib/src/vec.c"]
    ),
    where=st.floats(0, 1),
    counter=st.sampled_from(sorted(_counters())),
)
def test_budget_is_never_exceeded(
    index: RepoIndex, budget: int, doc: str, where: float, counter: str
) -> None:
    count = _counters()[counter]
    text = _text(doc)
    recent = RecentSnippets()
    recent.record_edit(
        "java/src/main/java/com/acme/app/App.java", _text("java/src/main/java/com/acme/app/App.java"), 5
    )
    chunks = build_context(index, doc, text, int(where * len(text)), budget, count, recent=recent)
    assert _cost(chunks, count or estimate_tokens) <= budget
    assert len({c.key for c in chunks}) == len(chunks)


def _synthetic_workspace(root: Path, n_files: int) -> None:
    rng = random.Random(7)
    words = "user order invoice cart price tax total item line customer account session token cache".split()
    for i in range(n_files):
        lines = [f"from pkg.mod_{(i + 1) % n_files} import *", ""]
        for j in range(rng.randint(5, 12)):
            a, b = rng.sample(words, 2)
            lines += [
                f"def {a}_{b}_{i}_{j}({a}, {b}):",
                f"    {a}_total = {a} + {b}",
                f"    return {a}_total * {j}",
                "",
            ]
        (root / "pkg").mkdir(exist_ok=True)
        (root / "pkg" / f"mod_{i}.py").write_text("\n".join(lines))
    (root / "pkg" / "__init__.py").write_text("")


def test_budget_of_128k_tokens(tmp_path: Path) -> None:
    _synthetic_workspace(tmp_path, 1200)
    idx = RepoIndex(str(tmp_path))
    idx.build(workers=1)
    doc = "pkg/mod_3.py"
    text = (tmp_path / doc).read_text()
    t0 = time.perf_counter()
    chunks = build_context(idx, doc, text, len(text) // 2, 131_072)
    elapsed = time.perf_counter() - t0
    assert 100_000 < _cost(chunks) <= 131_072  # fills the budget without exceeding it
    assert elapsed < 5.0
    assert chunks[0].kind == "file" and chunks[0].path == "pkg/mod_4.py"
    assert doc not in {c.path for c in chunks}


def _type_within_line(text: str, offset: int, typed: str):
    for i in range(1, len(typed) + 1):
        yield text[:offset] + typed[:i] + text[offset:], offset + i


def test_chunks_stable_while_typing_within_a_line(index: RepoIndex) -> None:
    doc = "web/src/index.ts"
    text = _text(doc)
    offset = _offset(text, "cart.addLine(line);", len("cart."))
    first = build_context(index, doc, text, offset, 8192)
    for new_text, new_offset in _type_within_line(text, offset, "removeLine(x, y"):
        assert build_context(index, doc, new_text, new_offset, 8192) == first


def test_cache_keeps_the_selection_while_the_index_follows_the_buffer(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(FIXTURE, root)
    idx = RepoIndex(str(root))
    idx.build(workers=1)
    cache = ContextCache()
    doc = "pyproj/src/shop/pricing.py"
    text = _text(doc)
    offset = _offset(text, "total = order.", len("total = order."))
    first = build_context(idx, doc, text, offset, 2048, cache=cache)
    assert cache.misses == 1
    for new_text, new_offset in _type_within_line(text, offset, "items_total_price(discounted"):
        idx.update_file(doc, new_text)  # didChange re-indexes the document on every keystroke
        assert build_context(idx, doc, new_text, new_offset, 2048, cache=cache) == first
    assert cache.misses == 1 and cache.hits == len("items_total_price(discounted")

    # a new line within the region keeps the selection too
    newline_text = new_text[:new_offset] + "\n    " + new_text[new_offset:]
    assert build_context(idx, doc, newline_text, new_offset + 5, 2048, cache=cache) == first

    # a new import changes it (now shop/sub/tax.py is imported whole)
    imported = "from .sub import tax\n" + newline_text
    changed = build_context(idx, doc, imported, new_offset + 5 + 21, 2048, cache=cache)
    assert "pyproj/src/shop/sub/tax.py" in {c.path for c in changed if c.kind == "file"}
    assert cache.misses == 2

    # another file changing invalidates it
    idx.update_file("web/src/format.ts", "export const changed = 1;\n")
    build_context(idx, doc, imported, new_offset + 26, 2048, cache=cache)
    assert cache.misses == 3


def test_cache_recomputes_when_the_cursor_leaves_its_region(tmp_path: Path) -> None:
    _synthetic_workspace(tmp_path, 30)
    idx = RepoIndex(str(tmp_path))
    idx.build(workers=1)
    cache = ContextCache()
    doc = "pkg/mod_5.py"
    text = (tmp_path / doc).read_text()
    lines = text.split("\n")
    at = lambda line: sum(len(x) + 1 for x in lines[:line])  # noqa: E731
    build_context(idx, doc, text, at(2), 2048, cache=cache)
    build_context(idx, doc, text, at(2 + ContextConfig().region_lines), 2048, cache=cache)
    assert (cache.hits, cache.misses) == (1, 1)
    far = build_context(idx, doc, text, at(len(lines) - 2), 2048, cache=cache)
    assert cache.misses == 2
    assert far == build_context(idx, doc, text, at(len(lines) - 2), 2048)  # the cache never changes results


def test_small_and_empty_budgets(index: RepoIndex) -> None:
    doc = "pyproj/src/shop/pricing.py"
    text = _text(doc)
    assert build_context(index, doc, text, 10, 0) == []
    assert build_context(index, doc, text, 10, 5) == []
    outside = build_context(index, "/elsewhere/x.py", "total_price_cents()\n\n", 0, 1024)
    assert all(c.path in index.paths() for c in outside)
