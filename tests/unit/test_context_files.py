"""gitignore semantics, workspace walking and safe reading (mellum_lsp.context.files)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mellum_lsp.context.files import (
    IgnorePattern,
    IgnoreRules,
    WalkConfig,
    is_binary_text,
    match_patterns,
    parse_gitignore,
    read_source,
    walk_files,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "repo"

# (patterns, path relative to the .gitignore, is_dir, expected: True ignored / False re-included / None no match)
GITIGNORE_TABLE = [
    ("*.log", "a.log", False, True),
    ("*.log", "deep/er/a.log", False, True),
    ("*.log", "a.logx", False, None),
    ("/a.log", "a.log", False, True),
    ("/a.log", "sub/a.log", False, None),  # leading slash anchors
    ("doc/*.txt", "doc/a.txt", False, True),
    ("doc/*.txt", "x/doc/a.txt", False, None),  # a middle slash anchors too
    ("doc/*.txt", "doc/x/a.txt", False, None),  # `*` does not cross `/`
    ("build/", "build", True, True),
    ("build/", "build", False, None),  # directory-only
    ("build/", "src/build", True, True),
    ("**/foo", "foo", False, True),
    ("**/foo", "a/b/foo", False, True),
    ("foo/**", "foo/a/b", False, True),
    ("foo/**", "foo", True, None),
    ("a/**/b", "a/b", False, True),
    ("a/**/b", "a/x/y/b", False, True),
    ("a/**/b", "a/xb", False, None),
    ("***.py", "x.py", False, True),  # other runs of asterisks are a plain `*`
    ("a?c", "abc", False, True),
    ("a?c", "a/c", False, None),
    ("[abc].py", "b.py", False, True),
    ("[!abc].py", "b.py", False, None),
    ("[!abc].py", "d.py", False, True),
    ("secret[0-9].txt", "secret7.txt", False, True),
    ("\\#hash", "#hash", False, True),
    ("# comment", "# comment", False, None),
    ("\\!bang", "!bang", False, True),
    ("trailing   ", "trailing", False, True),
    ("keep\\ ", "keep ", False, True),
    ("*.log\n!keep.log", "keep.log", False, False),  # negation re-includes
    ("*.log\n!keep.log", "other.log", False, True),
    ("!keep.log\n*.log", "keep.log", False, True),  # the last match wins
    ("", "anything", False, None),
]


@pytest.mark.parametrize(("patterns", "path", "is_dir", "expected"), GITIGNORE_TABLE)
def test_gitignore_semantics(patterns: str, path: str, is_dir: bool, expected: bool | None) -> None:
    assert match_patterns(parse_gitignore(patterns), path, is_dir) is expected


def test_blank_and_comment_lines_are_not_patterns() -> None:
    assert IgnorePattern.parse("") is None
    assert IgnorePattern.parse("   ") is None
    assert IgnorePattern.parse("# note") is None
    assert IgnorePattern.parse("/") is None


def _workspace(tmp_path: Path) -> Path:
    """A copy of the fixture plus the files git must not see (they cannot be committed)."""
    root = tmp_path / "repo"
    shutil.copytree(FIXTURE, root)
    extra = {
        "debug.log": "x",
        "web/keep.log": "kept: negation applies at every level",
        "dist/bundle.js": "x",  # /dist/ is anchored at the root ...
        "web/dist/app.js": "x",  # ... so a nested dist/ stays
        "pyproj/build/lib/shop.py": "x",
        "notes.tmp": "x",
        "docs/a/b/plan.draft": "x",
        "docs/plan.draft": "x",  # `docs/**/*.draft` matches zero directories too
        "docs/plan.md": "x",
        "secret1.txt": "x",
        "web/src/generated/api.ts": "export const x = 1;",
        "web/src/client.gen.ts": "export const x = 1;",
        "web/src/keep.gen.ts": "export const kept = 1;",
        "pyproj/local_settings.py": "DEBUG = True",
        "pyproj/src/local_settings.py": "DEBUG = True",  # anchored in pyproj/.gitignore only
        "node_modules/left-pad/index.js": "module.exports = 1;",
        "web/node_modules/x/index.js": "module.exports = 1;",
        "pyproj/src/shop/__pycache__/models.cpython-311.py": "x",
        ".git/config": "[core]",
        "env/pyvenv.cfg": "home = /usr",  # a virtualenv, recognised by pyvenv.cfg
        "env/lib/site.py": "x",
        ".venv/lib/site.py": "x",
    }
    for rel, text in extra.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_walk_respects_gitignore_and_skips(tmp_path: Path) -> None:
    root = _workspace(tmp_path)
    found = set(walk_files(str(root)))
    for kept in [
        "keep.log",
        "web/keep.log",
        "web/dist/app.js",
        "docs/plan.md",
        "web/src/keep.gen.ts",
        "pyproj/src/local_settings.py",
        "pyproj/src/shop/models.py",
        "goapp/go.mod",
        "assets/blob.h",  # binary files are dropped when read, not when walked
        ".gitignore",
    ]:
        assert kept in found, kept
    for dropped in [
        "debug.log",
        "dist/bundle.js",
        "pyproj/build/lib/shop.py",
        "notes.tmp",
        "docs/a/b/plan.draft",
        "docs/plan.draft",
        "secret1.txt",
        "web/src/generated/api.ts",
        "web/src/client.gen.ts",
        "pyproj/local_settings.py",
        "node_modules/left-pad/index.js",
        "web/node_modules/x/index.js",
        "pyproj/src/shop/__pycache__/models.cpython-311.py",
        ".git/config",
        "env/lib/site.py",
        ".venv/lib/site.py",
    ]:
        assert dropped not in found, dropped
    assert list(walk_files(str(root))) == list(walk_files(str(root)))  # deterministic order


def test_is_ignored_agrees_with_the_walk(tmp_path: Path) -> None:
    root = _workspace(tmp_path)
    rules = IgnoreRules(str(root))
    walked = set(walk_files(str(root), rules=rules))
    for dirpath, _, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            if rel.startswith("env/"):
                continue  # virtualenvs are recognised by the walk only
            assert rules.is_ignored(rel) == (rel not in walked), rel


def test_cannot_reinclude_inside_an_ignored_directory(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("out/\n!out/keep.txt\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    assert list(walk_files(str(tmp_path))) == [".gitignore"]
    assert IgnoreRules(str(tmp_path)).is_ignored("out/keep.txt")


def test_nested_gitignore_overrides_parent(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("*.txt\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".gitignore").write_text("!keep.txt\n")
    for rel in ["a.txt", "sub/keep.txt", "sub/other.txt"]:
        (tmp_path / rel).write_text("x")
    assert set(walk_files(str(tmp_path))) == {".gitignore", "sub/.gitignore", "sub/keep.txt"}


def test_git_info_exclude_and_extra_patterns(tmp_path: Path) -> None:
    (tmp_path / ".git" / "info").mkdir(parents=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("local.py\n")
    for rel in ["local.py", "gen.py", "main.py"]:
        (tmp_path / rel).write_text("x = 1\n")
    config = WalkConfig(extra_ignores=("gen.py",))
    assert list(walk_files(str(tmp_path), config)) == ["main.py"]


def test_size_and_count_limits(tmp_path: Path) -> None:
    (tmp_path / "big.py").write_text("x = 1\n" * 200_000)  # 1.2 MB, generated rather than committed
    for i in range(5):
        (tmp_path / f"m{i}.py").write_text("x = 1\n")
    assert "big.py" not in set(walk_files(str(tmp_path)))
    assert "big.py" in set(walk_files(str(tmp_path), WalkConfig(max_file_bytes=2_000_000)))
    assert len(list(walk_files(str(tmp_path), WalkConfig(max_files=3)))) == 3
    only_m = list(walk_files(str(tmp_path), WalkConfig(max_files=2), include=lambda p: p.startswith("m")))
    assert only_m == ["m0.py", "m1.py"]
    with pytest.raises(ValueError, match="max_files"):
        WalkConfig(max_files=0)


def test_read_source_rejects_binary_and_oversized(tmp_path: Path) -> None:
    assert read_source(str(FIXTURE / "assets" / "blob.h")) is None
    assert read_source(str(FIXTURE / "clib" / "src" / "internal.h")).startswith("#define VEC_MIN")
    big = tmp_path / "big.c"
    big.write_text("int x;\n" * 1000)
    assert read_source(str(big), max_bytes=100) is None
    assert read_source(str(big), max_bytes=10_000) is not None
    assert read_source(str(tmp_path / "missing.c")) is None
    assert is_binary_text("a\0b") and not is_binary_text("plain")
