"""tools/corpus.py: file selection, the deterministic by-file split, package_of and the manifest."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path, PurePosixPath

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def _load_tool(name: str):
    """Import ``tools/<name>.py`` (tools/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"mellum_tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


corpus = _load_tool("corpus")

KEPT = ["os.py", "asyncio/__init__.py", "asyncio/events.py", "email/mime/text.py", "unittest/case.py"]
EXCLUDED = [
    "test/test_os.py",
    "test/support/__init__.py",
    "lib2to3/tests/data/bom.py",
    "idlelib/idle_test/test_run.py",
    "unittest/test/test_case.py",
    "distutils/tests/test_core.py",
    "site-packages/pip/__init__.py",
    "__pycache__/os.py",
    "README.txt",
    "asyncio/events.pyc",
]


def _write(root: Path, rel: str, data: bytes = b"x = 1\n") -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def fake_stdlib(tmp_path: Path) -> Path:
    root = tmp_path / "lib" / "python3.x"
    for rel in KEPT + EXCLUDED:
        _write(root, rel)
    for i in range(60):
        _write(root, f"mod{i:02d}.py", f"value = {i}\n".encode())
    _write(root, "latin1.py", "name = 'caf\xe9'\n".encode("latin-1"))
    _write(root, "huge.py", b"#" * (corpus.MAX_FILE_BYTES + 1))
    return root


def test_collect_excludes_test_folders_site_packages_and_non_python(fake_stdlib):
    files = [str(f) for f in corpus.collect_files(fake_stdlib)]
    assert set(KEPT) <= set(files)
    assert not set(EXCLUDED) & set(files)
    assert files == sorted(files)
    assert all(not PurePosixPath(f).is_absolute() for f in files)


def test_scan_skips_non_utf8_and_large_files(fake_stdlib):
    scan = corpus.scan_files(fake_stdlib)
    assert {(s.relpath, s.reason) for s in scan.skipped} == {
        ("latin1.py", "not-utf8"),
        ("huge.py", "too-large"),
    }
    assert "latin1.py" not in {str(f) for f in scan.files}


def test_split_is_deterministic_disjoint_and_holds_out_enough(fake_stdlib):
    files = corpus.collect_files(fake_stdlib)
    shuffled = list(files)
    random.Random(1).shuffle(shuffled)
    train, heldout = corpus.split_files(files, 0.06, seed=7)
    assert (train, heldout) == corpus.split_files(shuffled, 0.06, seed=7)
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == sorted(str(f) for f in files)
    assert len(heldout) >= 0.05 * len(files)
    assert train == sorted(train) and heldout == sorted(heldout)
    assert corpus.split_files(files, 0.06, seed=8) != (train, heldout)


def test_split_keeps_each_file_on_its_side_when_a_file_is_added():
    files = [f"m{i}.py" for i in range(200)]
    _, heldout = corpus.split_files(files, 0.06, seed=3)
    _, heldout_more = corpus.split_files(files + ["new.py"], 0.06, seed=3)
    assert len(set(heldout) - set(heldout_more)) <= 1


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(corpus.CorpusError, match="heldout_fraction"):
        corpus.split_files(["a.py", "b.py"], fraction, seed=0)


def test_split_rejects_duplicates():
    with pytest.raises(corpus.CorpusError, match="duplicate"):
        corpus.split_files(["a.py", "a.py", "b.py"], 0.5, seed=0)


@pytest.mark.parametrize(
    ("relpath", "package"),
    [
        ("asyncio/events.py", "asyncio"),
        ("email/mime/text.py", "email"),
        (PurePosixPath("json/__init__.py"), "json"),
        ("os.py", corpus.ROOT_PACKAGE),
    ],
)
def test_package_of(relpath, package):
    assert corpus.package_of(relpath) == package


def test_manifest_fields_and_counts(fake_stdlib):
    manifest = corpus.build_manifest(fake_stdlib, 0.06, seed=7)
    counts = manifest["counts"]
    assert manifest["stdlib_root"] == str(fake_stdlib)
    assert manifest["python_version"].count(".") == 2
    assert counts["files"] == counts["train"] + counts["heldout"] == len(KEPT) + 60
    assert (counts["skipped_not_utf8"], counts["skipped_too_large"]) == (1, 1)
    assert manifest["bytes"]["total"] == sum(
        (fake_stdlib / f).stat().st_size for f in manifest["train"] + manifest["heldout"]
    )
    assert manifest["bytes"]["total"] == manifest["bytes"]["train"] + manifest["bytes"]["heldout"]
    assert manifest["files_sha256"] == corpus.file_list_sha256(manifest["train"] + manifest["heldout"])
    assert manifest == corpus.build_manifest(fake_stdlib, 0.06, seed=7)


def test_manifest_hash_changes_with_the_file_list(fake_stdlib):
    before = corpus.build_manifest(fake_stdlib)
    _write(fake_stdlib, "asyncio/extra.py")
    after = corpus.build_manifest(fake_stdlib)
    assert after["files_sha256"] != before["files_sha256"]
    (fake_stdlib / "asyncio/extra.py").unlink()
    assert corpus.build_manifest(fake_stdlib)["files_sha256"] == before["files_sha256"]


def test_manifest_content_hash_changes_with_file_content(fake_stdlib):
    before = corpus.build_manifest(fake_stdlib)
    _write(fake_stdlib, "os.py", b"x = 2\n")
    after = corpus.build_manifest(fake_stdlib)
    assert after["files_sha256"] == before["files_sha256"]
    assert after["content_sha256"] != before["content_sha256"]


def test_cli_writes_manifest(fake_stdlib, tmp_path, capsys):
    out = tmp_path / "out"
    assert corpus.main(["--out", str(out), "--stdlib", str(fake_stdlib)]) == 0
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["files"] == len(KEPT) + 60
    assert "held-out" in capsys.readouterr().out


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(corpus.CorpusError, match="not a directory"):
        corpus.collect_files(tmp_path / "nope")


def test_real_stdlib_selection():
    root = corpus.default_stdlib_root()
    files = [str(f) for f in corpus.collect_files(root)]
    assert {"os.py", "asyncio/events.py", "json/decoder.py"} <= set(files)
    excluded = {"test", "tests", "idle_test", "site-packages"}
    assert not [f for f in files if excluded & set(PurePosixPath(f).parts)]
    train, heldout = corpus.split_files(files)
    assert len(heldout) >= 0.05 * len(files) and len(train) + len(heldout) == len(files)
