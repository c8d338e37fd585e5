"""Build the training corpus from the CPython standard library of the running interpreter.

Offers ``collect_files`` / ``scan_files`` (the ``*.py`` files of a stdlib tree, test folders and
``site-packages`` excluded, files that are not UTF-8 or exceed 1 MB skipped), ``split_files`` (a
deterministic train / held-out split by file), ``package_of`` (the top-level package of a file, so
that other files of the same package can serve as repository context), ``build_manifest`` and
``write_manifest``. The manifest is the interface to later steps: it records the python version,
the stdlib root, a hash of the file list, counts, sizes and both relative file lists.

``Document`` and ``load_documents(manifest, split)`` read the documents of one split from a
manifest of this tool or of ``tools/corpus_pypi.py`` (the one reader of both formats, used by
training, evaluation and ``tools/tasks.py``): the path shown to the model, the text, the package
(other files of the same package serve as repository context) and the source.

CLI: ``python tools/corpus.py --out runs/corpus`` writes ``runs/corpus/manifest.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MANIFEST_FORMAT = "mellum-corpus/1"
PYPI_MANIFEST_FORMAT = "mellum-pypi-corpus/1"  # written by tools/corpus_pypi.py
# Folders whose files never enter the corpus: test suites (``test/``, ``lib2to3/tests``,
# ``idlelib/idle_test``, ``unittest/test``, ...), third-party code and byte-code caches.
EXCLUDED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__"})
MAX_FILE_BYTES = 1_000_000
DEFAULT_HELDOUT_FRACTION = 0.06
DEFAULT_SEED = 20250101
# package_of() of a module that sits directly in the stdlib root (``os.py``, ``typing.py``).
ROOT_PACKAGE = ""


class CorpusError(ValueError):
    """A stdlib tree or split request that cannot produce a usable corpus."""


@dataclass(frozen=True)
class SkippedFile:
    """A candidate file left out of the corpus, with the reason (``not-utf8`` or ``too-large``)."""

    relpath: str
    reason: str


@dataclass(frozen=True)
class Scan:
    """The result of scanning a stdlib tree: kept files (relative, sorted) and skipped ones."""

    root: Path
    files: list[PurePosixPath]
    skipped: list[SkippedFile]


def default_stdlib_root() -> Path:
    """The pure-python standard library folder of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def candidate_files(root: Path) -> list[PurePosixPath]:
    """All ``*.py`` files under ``root`` outside excluded folders, relative and sorted."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"stdlib root {root} is not a directory")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
        rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        found.extend(rel_dir / name for name in filenames if name.endswith(".py"))
    return sorted(found, key=str)


def scan_files(root: Path, max_bytes: int = MAX_FILE_BYTES) -> Scan:
    """Candidate files of ``root`` with those larger than ``max_bytes`` or not UTF-8 set aside."""
    root = Path(root)
    files, skipped = [], []
    for rel in candidate_files(root):
        path = root / rel
        if path.stat().st_size > max_bytes:
            skipped.append(SkippedFile(str(rel), "too-large"))
            continue
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            skipped.append(SkippedFile(str(rel), "not-utf8"))
            continue
        files.append(rel)
    return Scan(root=root, files=files, skipped=skipped)


def collect_files(root: Path, max_bytes: int = MAX_FILE_BYTES) -> list[PurePosixPath]:
    """The corpus files of a stdlib tree, relative to ``root`` and sorted (see ``scan_files``)."""
    return scan_files(root, max_bytes).files


def _split_key(relpath: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{relpath}".encode()).hexdigest()


def split_files(
    files: Sequence[PurePosixPath | str],
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    seed: int = DEFAULT_SEED,
) -> tuple[list[str], list[str]]:
    """Split relative paths into sorted (train, heldout) lists.

    Files are ranked by a seeded hash of their relative path and the first ``ceil(fraction * n)``
    are held out, so the split ignores input order and a file keeps its side when others come or go.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise CorpusError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    names = sorted({PurePosixPath(f).as_posix() for f in files})
    if len(names) != len(files):
        raise CorpusError(f"file list has {len(files) - len(names)} duplicate path(s); expected unique paths")
    if len(names) < 2:
        raise CorpusError(f"need at least 2 files to split into train and held-out, got {len(names)}")
    n_heldout = min(len(names) - 1, math.ceil(heldout_fraction * len(names)))
    ranked = sorted(names, key=lambda name: _split_key(name, seed))
    heldout = set(ranked[:n_heldout])
    return [n for n in names if n not in heldout], sorted(heldout)


def package_of(relpath: PurePosixPath | str) -> str:
    """The top-level package or folder of a relative path (``asyncio/events.py`` -> ``asyncio``).

    Modules directly in the root belong to ``ROOT_PACKAGE`` (the empty string).
    """
    parts = PurePosixPath(relpath).parts
    return parts[0] if len(parts) > 1 else ROOT_PACKAGE


def file_list_sha256(relpaths: Sequence[str]) -> str:
    """sha256 of the sorted relative paths, one per line (identifies the file list)."""
    return hashlib.sha256("\n".join(sorted(relpaths)).encode("utf-8")).hexdigest()


def _content_sha256(root: Path, relpaths: Sequence[str]) -> tuple[str, int]:
    digest, total = hashlib.sha256(), 0
    for rel in sorted(relpaths):
        data = (root / rel).read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
        total += len(data)
    return digest.hexdigest(), total


def build_manifest(
    root: Path | None = None,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    seed: int = DEFAULT_SEED,
    max_bytes: int = MAX_FILE_BYTES,
) -> dict:
    """Scan and split a stdlib tree (default: the running interpreter's) into a manifest dict."""
    root = Path(root) if root is not None else default_stdlib_root()
    scan = scan_files(root, max_bytes)
    train, heldout = split_files(scan.files, heldout_fraction, seed)
    content_hash, total_bytes = _content_sha256(root, train + heldout)
    train_bytes = sum((root / rel).stat().st_size for rel in train)
    return {
        "format": MANIFEST_FORMAT,
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "stdlib_root": str(root),
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "max_file_bytes": max_bytes,
        "excluded_dirs": sorted(EXCLUDED_DIRS),
        "files_sha256": file_list_sha256(train + heldout),
        "content_sha256": content_hash,
        "counts": {
            "files": len(train) + len(heldout),
            "train": len(train),
            "heldout": len(heldout),
            "skipped_not_utf8": sum(s.reason == "not-utf8" for s in scan.skipped),
            "skipped_too_large": sum(s.reason == "too-large" for s in scan.skipped),
        },
        "bytes": {"total": total_bytes, "train": train_bytes, "heldout": total_bytes - train_bytes},
        "skipped": [{"path": s.relpath, "reason": s.reason} for s in scan.skipped],
        "train": train,
        "heldout": heldout,
    }


def write_manifest(manifest: dict, out_dir: Path) -> Path:
    """Write ``manifest.json`` into ``out_dir`` (created if needed) and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Document:
    """One corpus file: ``path`` as the model sees it, its text, its package and its source."""

    path: str
    text: str
    package: str
    source: str  # "stdlib" or "pypi"


def load_documents(manifest: Path | str, split: str) -> list[Document]:
    """The documents of ``split`` ("train" or "heldout") of a stdlib or PyPI manifest.

    Stdlib files keep their path relative to the stdlib root and belong to ``package_of`` it. A
    PyPI file is stored as ``<distribution>/<path in the wheel>``: the model sees the path in the
    wheel (``boltons/iterutils.py``) and the package is the distribution.
    """
    if split not in ("train", "heldout"):
        raise CorpusError(f"split must be 'train' or 'heldout', got {split!r}")
    path = Path(manifest)
    m = json.loads(path.read_text(encoding="utf-8"))
    fmt = m.get("format")
    if fmt == MANIFEST_FORMAT:
        root = Path(m["stdlib_root"])
        return [
            Document(rel, (root / rel).read_text(encoding="utf-8"), package_of(rel), "stdlib")
            for rel in m[split]
        ]
    if fmt == PYPI_MANIFEST_FORMAT:
        root = Path(m["root"])
        docs = []
        for rel in m[split]:
            dist, _, inner = rel.partition("/")
            docs.append(Document(inner, (root / rel).read_text(encoding="utf-8"), dist, "pypi"))
        return docs
    raise CorpusError(
        f"{path}: unknown manifest format {fmt!r}; expected {MANIFEST_FORMAT} or {PYPI_MANIFEST_FORMAT}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder for manifest.json")
    parser.add_argument("--stdlib", type=Path, default=None, help="stdlib root (default: this interpreter's)")
    parser.add_argument("--heldout-fraction", type=float, default=DEFAULT_HELDOUT_FRACTION)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    manifest = build_manifest(args.stdlib, args.heldout_fraction, args.seed)
    path = write_manifest(manifest, args.out)
    counts, sizes = manifest["counts"], manifest["bytes"]
    print(
        f"{path}: python {manifest['python_version']}, {counts['files']} files ({sizes['total']} bytes), "
        f"train {counts['train']}, held-out {counts['heldout']}, skipped {counts['skipped_not_utf8']} "
        f"not UTF-8 + {counts['skipped_too_large']} too large, files_sha256 {manifest['files_sha256'][:16]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
