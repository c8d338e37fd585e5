"""RepoIndex: full build, incremental updates equal to a rebuild, thread-safety (mellum_lsp.context.index)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from mellum_lsp.context import IndexConfig, RepoIndex

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "repo"


@pytest.fixture(scope="module")
def index() -> RepoIndex:
    idx = RepoIndex(str(FIXTURE))
    idx.build(workers=1)
    return idx


def test_build_indexes_supported_files(index: RepoIndex) -> None:
    paths = index.paths()
    assert "pyproj/src/shop/models.py" in paths and "web/src/widget.tsx" in paths
    assert "assets/blob.h" not in paths  # binary
    assert "keep.log" not in paths and "goapp/go.mod" not in paths  # not source files
    assert index.get("web/src/widget.tsx").language == "tsx"
    assert index.get(str(FIXTURE / "goapp" / "main.go")).path == "goapp/main.go"
    [(path, d)] = index.definitions_named("round_cents")
    assert path == "pyproj/src/shop/utils.py" and d.kind == "function" and d.start_line == 0


def test_search_finds_the_relevant_file(index: RepoIndex) -> None:
    hits = index.search("v := vec_dot(a, b)", 3)
    assert hits[0].doc in ("clib/src/vec.c", "clib/include/vec.h")
    hits = index.search("Circle::new(radius).area()", 3, exclude_path="rustcrate/src/lib.rs")
    assert hits[0].doc == "rustcrate/src/geometry/shapes.rs"


def test_relpath_forms(index: RepoIndex) -> None:
    assert index.relpath(str(FIXTURE / "a" / "b.py")) == "a/b.py"
    assert index.relpath((FIXTURE / "a b.py").as_uri()) == "a b.py"
    assert index.relpath("a\\b.py") == "a/b.py"
    assert index.relpath("/elsewhere/x.py") is None
    assert index.relpath("../x.py") is None


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(FIXTURE, root)
    return root


def test_update_and_remove(tmp_path: Path) -> None:
    idx = RepoIndex(str(_copy(tmp_path)))
    idx.build(workers=1)
    version = idx.version
    assert not idx.update_file("pyproj/src/shop/utils.py", (FIXTURE / "pyproj/src/shop/utils.py").read_text())
    assert idx.version == version  # same text: nothing to do
    assert idx.update_file(
        "pyproj/src/shop/utils.py", "def shipping_fee(weight_grams):\n    return weight_grams // 10\n"
    )
    assert idx.definitions_named("round_cents") == []
    assert [p for p, _ in idx.definitions_named("shipping_fee")] == ["pyproj/src/shop/utils.py"]
    assert idx.search("fee = shipping_fee(weight_grams)", 1)[0].doc == "pyproj/src/shop/utils.py"
    assert idx.version_excluding("pyproj/src/shop/utils.py") == version
    assert idx.version_excluding("other.py") == version + 1
    assert idx.remove_file("pyproj/src/shop/utils.py")
    assert not idx.remove_file("pyproj/src/shop/utils.py")
    assert idx.definitions_named("shipping_fee") == []
    assert idx.search("shipping_fee", 5) == []
    assert "pyproj/src/shop/utils.py" not in idx.resolve_imports("pyproj/src/shop/pricing.py")


def test_update_from_disk_and_skips(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    idx = RepoIndex(str(root), IndexConfig(max_file_bytes=50_000))
    idx.build(workers=1)
    (root / "web/src/extra.ts").write_text("export const answer = 42;\n")
    assert idx.update_file(str(root / "web/src/extra.ts"))  # text None: read from disk
    (root / "web/src/extra.ts").unlink()
    assert idx.update_file(str(root / "web/src/extra.ts")) and "web/src/extra.ts" not in idx
    assert not idx.update_file("debug.log", "x")  # ignored
    assert not idx.update_file("web/src/generated/api.ts", "export const x = 1;")  # ignored directory
    assert not idx.update_file("README.md", "# hi")  # no language
    assert not idx.update_file("/elsewhere/x.py", "x = 1")  # outside the workspace
    assert not idx.update_file("bin.c", "int x;\0\0")  # binary
    big = "x = 1\n" * 20_000  # bigger than max_file_bytes, generated rather than committed
    (root / "big.py").write_text(big)
    assert not idx.update_file("big.py", big)
    idx.build(workers=1)
    assert "big.py" not in idx


def test_go_mod_changes_resolution(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    idx = RepoIndex(str(root))
    idx.build(workers=1)
    assert idx.resolve_imports("goapp/main.go") == ("goapp/store/store.go",)
    idx.update_file("goapp/go.mod", "module example.com/renamed\n")
    assert idx.resolve_imports("goapp/main.go") == ()
    idx.remove_file("goapp/go.mod")
    assert idx.resolve_imports("goapp/main.go") == ()


def test_build_replays_updates_made_while_building(tmp_path: Path) -> None:
    root = _copy(tmp_path)

    class Racing(RepoIndex):
        def _analyze_all(self, paths, workers):
            result = super()._analyze_all(paths, workers)
            self.update_file("pyproj/src/shop/utils.py", "def late_arrival():\n    pass\n")
            self.remove_file("web/src/api.js")
            return result

    idx = Racing(str(root))
    idx.build(workers=1)
    assert [p for p, _ in idx.definitions_named("late_arrival")] == ["pyproj/src/shop/utils.py"]
    assert "web/src/api.js" not in idx


def _snapshot(idx: RepoIndex, queries: list[str]):
    entries = {p: (e.language, e.hash, e.definitions, e.imports) for p in idx.paths() if (e := idx.get(p))}
    names = sorted({d.name for e in entries.values() for d in e[2]})
    return (
        entries,
        {n: idx.definitions_named(n) for n in names},
        {p: idx.resolve_imports(p) for p in idx.paths()},
        idx.retrieval_stats(),
        [idx.window_scores(q) for q in queries],
        [idx.search(q, 5) for q in queries],
    )


NAMES = ["load_user", "saveOrder", "parse_config", "render", "Invoice", "total_cents", "fetchCart"]
python_file = st.builds(
    lambda imports, funcs, body: (
        "".join(f"import m{i}\n" for i in imports)
        + "".join(f"\n\ndef {f}(value):\n    return {b}(value)\n" for f, b in zip(funcs, body, strict=False))
    ),
    st.lists(st.integers(0, 4), max_size=2),
    st.lists(st.sampled_from(NAMES), max_size=4),
    st.lists(st.sampled_from(NAMES), min_size=4, max_size=4),
)
edits = st.lists(st.tuples(st.sampled_from(["write", "delete"]), st.integers(0, 4), python_file), max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.lists(python_file, min_size=5, max_size=5), ops=edits)
def test_incremental_updates_equal_a_full_rebuild(tmp_path_factory, initial: list[str], ops) -> None:
    root = tmp_path_factory.mktemp("ws")
    for i, text in enumerate(initial):
        (root / f"m{i}.py").write_text(text)
    idx = RepoIndex(str(root))
    idx.build(workers=1)
    for op, i, text in ops:
        path = root / f"m{i}.py"
        if op == "write":
            path.write_text(text)
            idx.update_file(f"m{i}.py", text)
        else:
            path.unlink(missing_ok=True)
            idx.remove_file(f"m{i}.py")
    fresh = RepoIndex(str(root))
    fresh.build(workers=1)
    queries = ["value = load_user(value)", "saveOrder parse_config", "Invoice total_cents fetchCart"]
    assert _snapshot(idx, queries) == _snapshot(fresh, queries)


def test_parallel_build_equals_serial(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i in range(520):
        (tmp_path / f"f{i}.py").write_text(f"def func_{i}(x):\n    return helper_{i % 7}(x)\n")
    serial, parallel = RepoIndex(str(tmp_path)), RepoIndex(str(tmp_path))
    serial.build(workers=1)
    stats = parallel.build(workers=2)
    assert (stats.files, stats.workers) == (520, 2)
    assert "worker processes failed" not in caplog.text
    assert _snapshot(parallel, ["helper_3", "func_12"]) == _snapshot(serial, ["helper_3", "func_12"])


def test_concurrent_updates_and_reads(tmp_path: Path) -> None:
    idx = RepoIndex(str(_copy(tmp_path)))
    idx.build(workers=1)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(40):
                idx.update_file(f"gen/w{k}.py", f"def writer_{k}_{i}(x):\n    return x + {i}\n")
                if i % 5 == 0:
                    idx.remove_file(f"gen/w{k}.py")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(80):
                idx.search("writer x return", 5)
                idx.definitions_named("writer_0_1")
                idx.resolve_imports("pyproj/src/shop/pricing.py")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)] + [
        threading.Thread(target=reader) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {p for p in idx.paths() if p.startswith("gen/")} == {"gen/w0.py", "gen/w1.py", "gen/w2.py"}
