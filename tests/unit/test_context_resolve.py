"""Import resolution to workspace files, per language (mellum_lsp.context.resolve)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mellum_lsp.context import RepoIndex
from mellum_lsp.context.resolve import Layout, go_module_path, resolve_imports
from mellum_lsp.context.symbols import Import

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "repo"


@pytest.fixture(scope="module")
def index() -> RepoIndex:
    idx = RepoIndex(str(FIXTURE))
    idx.build(workers=1)
    return idx


FIXTURE_IMPORTS = [
    # Python: src layout, relative imports, `from . import module`, packages
    ("pyproj/src/shop/pricing.py", ["pyproj/src/shop/utils.py", "pyproj/src/shop/models.py"]),
    ("pyproj/src/shop/sub/tax.py", ["pyproj/src/shop/models.py", "pyproj/src/shop/utils.py"]),
    ("pyproj/scripts/run.py", ["pyproj/src/shop/pricing.py", "pyproj/src/shop/sub/tax.py"]),
    # TypeScript: index.ts of a directory, `./x.js` written for `x.ts`, .tsx and .js files
    (
        "web/src/index.ts",
        ["web/src/cart/index.ts", "web/src/format.ts", "web/src/widget.tsx", "web/src/api.js"],
    ),
    ("web/src/cart/index.ts", ["web/src/format.ts"]),
    ("web/src/widget.tsx", ["web/src/cart/index.ts"]),
    # Go: module path from go.mod, then the package's non-test files
    ("goapp/main.go", ["goapp/store/store.go"]),
    # Rust: `mod x;` (x/mod.rs and x.rs), `use crate::...`, `use super::...`
    (
        "rustcrate/src/lib.rs",
        ["rustcrate/src/geometry/mod.rs", "rustcrate/src/util.rs", "rustcrate/src/geometry/shapes.rs"],
    ),
    ("rustcrate/src/geometry/mod.rs", ["rustcrate/src/geometry/shapes.rs"]),
    ("rustcrate/src/geometry/shapes.rs", ["rustcrate/src/geometry/mod.rs"]),
    # Java: package + class under a source root
    ("java/src/main/java/com/acme/app/App.java", ["java/src/main/java/com/acme/util/Strings.java"]),
    # C: an include dir, then relative to the including file; <stdlib.h> stays unresolved
    ("clib/src/vec.c", ["clib/include/vec.h", "clib/src/internal.h"]),
]


@pytest.mark.parametrize(("path", "expected"), FIXTURE_IMPORTS)
def test_fixture_imports_resolve(index: RepoIndex, path: str, expected: list[str]) -> None:
    assert list(index.resolve_imports(path)) == expected


def _layout(*paths: str, go_modules: dict[str, str] | None = None) -> Layout:
    layout = Layout()
    for p in paths:
        layout.add(p)
    for directory, module in (go_modules or {}).items():
        layout.set_go_module(directory, module)
    return layout


def _resolve(layout: Layout, path: str, language: str, *imports: Import) -> list[str]:
    return list(resolve_imports(layout, path, language, imports))


def test_python_roots_cover_src_layout_and_nested_projects() -> None:
    layout = _layout(
        "src/app/__init__.py", "src/app/core.py", "tools/lib/pkg/__init__.py", "tools/lib/pkg/x.py"
    )
    assert layout.python_roots() == ("", "src", "tools/lib")
    assert _resolve(layout, "tests/test_a.py", "python", Import("app.core")) == ["src/app/core.py"]
    assert _resolve(layout, "main.py", "python", Import("pkg.x", kind="import")) == ["tools/lib/pkg/x.py"]


def test_python_import_forms() -> None:
    layout = _layout(
        "a/__init__.py", "a/b.py", "a/c/__init__.py", "a/c/d.pyi", "ns/mod.py", "script_helper.py"
    )
    assert _resolve(layout, "x.py", "python", Import("a.b.attr")) == ["a/b.py"]  # deepest module that exists
    assert _resolve(layout, "x.py", "python", Import("a.c", ("d", "e"), kind="from")) == [
        "a/c/__init__.py",
        "a/c/d.pyi",
    ]
    assert _resolve(layout, "x.py", "python", Import("a", ("b",), kind="from")) == ["a/b.py"]
    assert _resolve(layout, "x.py", "python", Import("ns.mod")) == ["ns/mod.py"]  # namespace package
    assert _resolve(layout, "a/c/d.pyi", "python", Import("..b", ("f",), kind="from")) == ["a/b.py"]
    assert _resolve(layout, "a/b.py", "python", Import(".", ("c",), kind="from")) == ["a/c/__init__.py"]
    assert _resolve(layout, "a/b.py", "python", Import("....far", ("x",), kind="from")) == []
    assert _resolve(layout, "x.py", "python", Import("numpy")) == []


def test_js_resolution() -> None:
    layout = _layout("src/a.ts", "src/b/index.tsx", "src/c.js", "src/d.d.ts", "src/e.mjs", "lib/f.ts")
    imp = lambda spec: Import(spec)  # noqa: E731
    assert _resolve(layout, "src/main.ts", "typescript", imp("./a")) == ["src/a.ts"]
    assert _resolve(layout, "src/main.ts", "typescript", imp("./a.js")) == ["src/a.ts"]  # ESM-style TS
    assert _resolve(layout, "src/main.ts", "typescript", imp("./b")) == ["src/b/index.tsx"]
    assert _resolve(layout, "src/main.ts", "typescript", imp("./c.js")) == ["src/c.js"]
    assert _resolve(layout, "src/main.ts", "typescript", imp("./d")) == ["src/d.d.ts"]
    assert _resolve(layout, "src/x/y.js", "javascript", imp("../e.mjs")) == ["src/e.mjs"]
    assert _resolve(layout, "src/main.ts", "typescript", imp("/lib/f")) == ["lib/f.ts"]
    assert _resolve(layout, "src/main.ts", "typescript", imp("react")) == []
    assert _resolve(layout, "src/main.ts", "typescript", imp("../../outside")) == []


def test_go_resolution_picks_the_longest_module() -> None:
    layout = _layout(
        "svc/api/handler.go",
        "svc/api/handler_test.go",
        "svc/api/types.go",
        "tools/gen/main.go",
        go_modules={"": "example.com/mono", "tools": "example.com/mono/tools"},
    )
    assert _resolve(layout, "x.go", "go", Import("example.com/mono/svc/api")) == [
        "svc/api/handler.go",
        "svc/api/types.go",
    ]
    assert _resolve(layout, "x.go", "go", Import("example.com/mono/tools/gen")) == ["tools/gen/main.go"]
    assert _resolve(layout, "x.go", "go", Import("github.com/other/lib")) == []
    assert go_module_path('// comment\nmodule "example.com/q"\n\ngo 1.22\n') == "example.com/q"


def test_rust_resolution() -> None:
    layout = _layout("src/main.rs", "src/net.rs", "src/net/http.rs", "src/db/mod.rs", "src/db/pool.rs")
    assert _resolve(layout, "src/main.rs", "rust", Import("net", kind="mod")) == ["src/net.rs"]
    assert _resolve(layout, "src/main.rs", "rust", Import("db", kind="mod")) == ["src/db/mod.rs"]
    assert _resolve(layout, "src/net.rs", "rust", Import("http", kind="mod")) == ["src/net/http.rs"]
    assert _resolve(layout, "src/db/mod.rs", "rust", Import("pool", kind="mod")) == ["src/db/pool.rs"]
    assert _resolve(layout, "src/net/http.rs", "rust", Import("crate::db::pool::Pool", kind="use")) == [
        "src/db/pool.rs"
    ]
    assert _resolve(layout, "src/net/http.rs", "rust", Import("super::Client", kind="use")) == ["src/net.rs"]
    assert _resolve(layout, "src/db/pool.rs", "rust", Import("self::conn", kind="use")) == []
    assert _resolve(layout, "src/main.rs", "rust", Import("std::io", kind="use")) == []


def test_java_resolution() -> None:
    layout = _layout(
        "core/src/main/java/org/x/util/Text.java",
        "core/src/main/java/org/x/util/Nums.java",
        "app/src/main/java/org/x/App.java",
    )
    assert _resolve(layout, "app/src/main/java/org/x/App.java", "java", Import("org.x.util.Text")) == [
        "core/src/main/java/org/x/util/Text.java"
    ]
    assert _resolve(layout, "a.java", "java", Import("org.x.util.Text.Inner")) == [
        "core/src/main/java/org/x/util/Text.java"
    ]
    assert _resolve(layout, "a.java", "java", Import("org.x.util.Nums.max", kind="static")) == [
        "core/src/main/java/org/x/util/Nums.java"
    ]
    assert _resolve(layout, "a.java", "java", Import("org.x.util.*")) == [
        "core/src/main/java/org/x/util/Nums.java",
        "core/src/main/java/org/x/util/Text.java",
    ]
    assert _resolve(layout, "a.java", "java", Import("java.util.List")) == []


def test_c_resolution() -> None:
    layout = _layout("include/lib/api.h", "src/impl.h", "src/impl.c", "third/include/dep.h")
    inc = lambda m, kind="include": Import(m, kind=kind)  # noqa: E731
    assert _resolve(layout, "src/impl.c", "c", inc("impl.h")) == ["src/impl.h"]
    assert _resolve(layout, "src/impl.c", "c", inc("lib/api.h")) == ["include/lib/api.h"]
    assert _resolve(layout, "src/impl.c", "c", inc("dep.h", "system")) == ["third/include/dep.h"]
    assert _resolve(layout, "src/impl.c", "c", inc("impl.h", "system")) == []  # <...> is not relative
    assert list(resolve_imports(layout, "src/impl.c", "c", [inc("impl.h", "system")], ("src",))) == [
        "src/impl.h"
    ]


def test_resolution_cache_follows_the_file_set(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("import b\n")
    idx = RepoIndex(str(tmp_path))
    idx.build(workers=1)
    assert idx.resolve_imports("a.py") == ()
    idx.update_file("b.py", "X = 1\n")
    assert idx.resolve_imports("a.py") == ("b.py",)
    idx.remove_file("b.py")
    assert idx.resolve_imports("a.py") == ()
