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


# --- load_documents: the one reader of both manifest formats ----------------------------------------


def test_load_documents_of_a_stdlib_manifest(fake_stdlib, tmp_path):
    path = corpus.write_manifest(corpus.build_manifest(fake_stdlib, 0.1, seed=3), tmp_path / "m")
    train, held = corpus.load_documents(path, "train"), corpus.load_documents(path, "heldout")
    assert len(train) + len(held) == len(KEPT) + 60 and held
    events = next(d for d in train + held if d.path == "asyncio/events.py")
    assert (events.package, events.source, events.text) == ("asyncio", "stdlib", "x = 1\n")
    with pytest.raises(corpus.CorpusError, match="split must be"):
        corpus.load_documents(path, "test")


# --- tools/corpus_pypi.py ----------------------------------------------------------------------------

pypi = _load_tool("corpus_pypi")


def _wheel(folder: Path, name: str, version: str, files: dict[str, str], *, tag: str = "py3-none-any",
           license_expression: str | None = "MIT", classifiers: tuple[str, ...] = (), license: str | None = None,
           licence_file: bool = True) -> Path:  # fmt: skip
    """A real wheel file (zip with .dist-info) of `files`."""
    import zipfile

    stem = name.replace("-", "_")
    dist_info = f"{stem}-{version}.dist-info"
    meta = [f"Metadata-Version: 2.4", f"Name: {name}", f"Version: {version}"]  # noqa: F541
    if license_expression:
        meta.append(f"License-Expression: {license_expression}")
    if license:
        meta.append(f"License: {license}")
    meta += [f"Classifier: {c}" for c in classifiers]
    path = folder / f"{stem}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        for rel, text in files.items():
            z.writestr(rel, text)
        z.writestr(f"{dist_info}/METADATA", "\n".join(meta) + "\n")
        z.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
        if licence_file:
            z.writestr(f"{dist_info}/licenses/LICENSE", f"Copyright {name} authors\n")
    return path


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"license_expression": "MIT"}, "MIT"),
        ({"license_expression": "MIT OR Apache-2.0"}, "MIT"),
        ({"license_expression": "GPL-3.0-or-later OR MIT"}, "MIT"),  # an OR offers MIT
        ({"license_expression": "Apache-2.0 AND MIT"}, "Apache-2.0"),
        ({"license_expression": "MIT AND GPL-2.0-only"}, None),
        ({"license_expression": "MPL-2.0"}, None),
        (
            {"classifiers": ["License :: OSI Approved :: BSD License"], "license": "BSD-3-Clause"},
            "BSD-3-Clause",
        ),
        ({"classifiers": ["License :: OSI Approved :: BSD License"]}, "BSD"),
        ({"classifiers": ["License :: OSI Approved :: Python Software Foundation License"]}, "PSF-2.0"),
        (
            {
                "classifiers": [
                    "License :: OSI Approved :: MIT License",
                    "License :: OSI Approved :: GNU General Public License v2 (GPLv2)",
                ]
            },
            None,
        ),
        ({"license": "Apache 2.0"}, "Apache-2.0"),
        ({"license": "Permission is hereby granted, free of charge, to any person obtaining a copy"}, "MIT"),
        ({"license": "LGPL"}, None),
        ({"license": "ISC"}, None),  # permissive, but not in the allowed set
        ({}, None),
    ],
)
def test_classify_license(fields, expected):
    assert pypi.classify_license(fields).spdx == expected


def test_classify_license_of_installed_distributions():
    """The METADATA of packages in this environment, as real wheels carry it."""
    from importlib.metadata import metadata

    def fields(name):
        m = metadata(name)
        return {"license_expression": m.get("License-Expression"), "license": m.get("License"),
                "classifiers": m.get_all("Classifier") or []}  # fmt: skip

    assert pypi.classify_license(fields("msgpack")).spdx == "Apache-2.0"
    assert pypi.classify_license(fields("jinja2")).spdx in ("BSD-3-Clause", "BSD")
    mpl = {"license_expression": "MPL-2.0", "license": None, "classifiers": []}  # as certifi's wheel says
    assert pypi.classify_license(mpl).spdx is None


def test_excluded_distributions_cover_what_the_project_installs_and_tests_with():
    names = pypi.excluded_distributions()
    assert {"mellum-lsp", "numpy", "pygls", "torch", "transformers", "pytest", "ruff", "hypothesis"} <= names
    assert {"jinja2", "markupsafe", "tree-sitter-python", "onnxruntime"} <= names  # pip list, normalised
    assert pypi.normalize_name("Tree_Sitter.Python") == "tree-sitter-python"


def test_wheel_sources_leave_out_tests_vendored_code_and_non_utf8(tmp_path):
    w = _wheel(tmp_path, "demo", "1.0", {
        "demo/__init__.py": "from .core import run\n",
        "demo/core.py": "def run():\n    return 1\n",
        "demo/tests/test_core.py": "def test(): pass\n",
        "demo/test_extra.py": "x = 1\n",
        "demo/core_test.py": "x = 2\n",
        "demo/_vendor/six.py": "PY3 = True\n",
        "demo/blank.py": "\n\n",
        "demo/data.json": "{}",
        "demo-1.0.data/scripts/tool.py": "print()\n",
    })  # fmt: skip
    with __import__("zipfile").ZipFile(w, "a") as z:
        z.writestr("demo/latin.py", "s = 'caf\xe9'\n".encode("latin-1"))
    assert sorted(pypi.wheel_sources(w)) == ["demo/__init__.py", "demo/core.py"]
    assert pypi.is_pure_wheel(w)
    compiled = _wheel(
        tmp_path, "fast", "1.0", {"fast/__init__.py": "x = 1\n"}, tag="cp311-cp311-manylinux_2_17_x86_64"
    )
    assert not pypi.is_pure_wheel(compiled)


def test_build_manifest_filters_dedupes_and_holds_out_whole_packages(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    shared = "def helper(x):\n    return x * 2\n"
    fetched = {}
    for i in range(8):
        name = f"pkg{i}"
        fetched[name] = _wheel(wheels, name, "1.0", {
            f"{name}/__init__.py": f"from .a import f{i}\n",
            f"{name}/a.py": f"def f{i}(x):\n    return x + {i}\n",
            f"{name}/helpers.py": shared,  # the same file in every package: kept once
        })  # fmt: skip
    fetched["gpl"] = _wheel(wheels, "gpl", "1.0", {"gpl/x.py": "y = 1\n"}, license_expression="GPL-3.0-only")
    fetched["native"] = _wheel(
        wheels, "native", "1.0", {"native/x.py": "y = 2\n"}, tag="cp311-cp311-linux_x86_64"
    )
    fetched["broken"] = "pip download failed: no such package"
    names = [*fetched, "numpy"]
    out = tmp_path / "out"
    m = pypi.build_manifest(out, names, excluded={"numpy"}, fetched=fetched, heldout_fraction=0.25, seed=5)
    assert m["counts"]["packages"] == 8 and m["counts"]["heldout_packages"] == 2
    reasons = {r["name"]: r["reason"] for r in m["rejected"]}
    assert set(reasons) == {"gpl", "native", "broken", "numpy"}
    assert "installs or tests" in reasons["numpy"] and "pure-Python" in reasons["native"]
    assert m["counts"]["duplicates_dropped"] == 7
    held = set(m["heldout_packages"])
    assert all((rel.split("/")[0] in held) == (rel in m["heldout"]) for rel in m["train"] + m["heldout"])
    assert all(p["license"] == "MIT" and p["license_files"] for p in m["packages"])
    path = out / "manifest.json"
    path.write_text(json.dumps(m))
    docs = corpus.load_documents(path, "heldout")
    assert {d.package for d in docs} == held and all(d.source == "pypi" for d in docs)
    assert all(d.path.startswith(d.package + "/") for d in docs)  # the path in the wheel
    first = next(d for d in docs if d.path.endswith("/a.py"))
    assert first.text.startswith("def f")
