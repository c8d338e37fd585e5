"""Build a corpus of permissively licensed pure-Python packages from PyPI (at corpus-build time only).

    python tools/corpus_pypi.py --out /work/data/pypi [--packages NAME ...] [--stdlib-manifest M]

Each package is fetched with ``pip download --no-deps --only-binary :all:`` (a wheel already in
``OUT/wheels`` is not fetched again), kept only when the wheel is pure Python (``*-none-any``, no
compiled files) and its licence is MIT, BSD, Apache-2.0 or PSF (``License-Expression``, licence
classifiers and the ``License`` field; any copyleft evidence rejects it). Every distribution the
project installs or tests with is excluded (``pyproject.toml``'s dependencies and extras, and
``pip list`` of the running interpreter), so no evaluation runs on code the tools themselves run.
Sources: the wheel's ``*.py`` files outside test and vendored folders (``_vendor``, ``vendored``,
``extern``), UTF-8, at most 1 MB; exact duplicates (after trailing-whitespace normalisation) are
dropped across packages and against the stdlib corpus. Whole packages are held out by a seeded hash
of their name.

Offers ``DEFAULT_PACKAGES``, ``ALLOWED_LICENSES``, ``normalize_name``, ``excluded_distributions``,
``classify_license``, ``wheel_metadata``, ``is_pure_wheel``, ``wheel_sources``, ``content_key``,
``download``, ``build_manifest`` and ``licence_table`` (the model card's Markdown table of the
packages, their versions and licences: ``--licences M`` prints it for a manifest). Writes ``OUT/manifest.json`` (format ``mellum-pypi-corpus/1``,
read by ``corpus.load_documents``), ``OUT/src/<distribution>/<path in wheel>`` and each kept
package's licence files under ``OUT/licenses/<distribution>-<version>/`` (for the model card).
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import (  # noqa: E402
    MAX_FILE_BYTES,
    PYPI_MANIFEST_FORMAT,
    CorpusError,
    load_documents,
    split_files,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HELDOUT_FRACTION = 0.15
DEFAULT_SEED = 20260101
# A modest list of small, popular, pure-Python packages under permissive licences (the licence is
# read from each wheel; this list only says what to try). None of them is used by the project.
DEFAULT_PACKAGES = (
    "aiofiles", "arrow", "blinker", "boltons", "bottle", "cachetools", "colorama", "configobj",
    "cssselect", "decorator", "distlib", "docopt", "fire", "humanize", "inflect", "isort", "itsdangerous",
    "jmespath", "lark", "mako", "markdown", "marshmallow", "mccabe", "mistune", "more-itertools", "parse",
    "platformdirs", "ply", "pycodestyle", "pyflakes", "pyparsing", "python-slugify", "rsa", "schema",
    "soupsieve", "sqlparse", "structlog", "tabulate", "tenacity", "termcolor", "toml", "tomli", "tomlkit",
    "toolz", "typeguard", "voluptuous", "wcwidth", "webencodings", "werkzeug", "xmltodict",
)  # fmt: skip
ALLOWED_LICENSES = ("MIT", "BSD-2-Clause", "BSD-3-Clause", "BSD", "Apache-2.0", "PSF-2.0")
EXCLUDED_PARTS = frozenset({"test", "tests", "testing", "_vendor", "vendor", "vendored", "_vendored", "extern",
                            "_extern", "__pycache__"})  # fmt: skip
_SPDX = {
    "mit": "MIT",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "apache-2.0": "Apache-2.0",
    "psf-2.0": "PSF-2.0",
    "python-2.0": "PSF-2.0",
}
_CLASSIFIERS = {
    "License :: OSI Approved :: MIT License": "MIT",
    "License :: OSI Approved :: BSD License": "BSD",
    "License :: OSI Approved :: Apache Software License": "Apache-2.0",
    "License :: OSI Approved :: Python Software Foundation License": "PSF-2.0",
}
_FREE_TEXT = (  # the License field's first line (a name or the licence's own first words)
    (re.compile(r"^\s*(the\s+)?mit\b|permission is hereby granted, free of charge", re.I), "MIT"),
    (
        re.compile(r"^\s*(new\s+|simplified\s+|modified\s+)?bsd\b|redistribution and use in source", re.I),
        "BSD",
    ),
    (
        re.compile(r"^\s*apache(\s+software)?(\s+license)?[\s,-]*(v(ersion)?\s*)?2(\.0)?\b", re.I),
        "Apache-2.0",
    ),
    (re.compile(r"^\s*(psf|python software foundation)\b", re.I), "PSF-2.0"),
)
_COPYLEFT = re.compile(r"\b(a?gpl|lgpl|gnu|mozilla|mpl|eupl|copyleft|cc-by-sa|sspl)\b", re.I)


def normalize_name(name: str) -> str:
    """PEP 503: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> str:
    return normalize_name(re.split(r"[\s<>=!~;\[(@]", spec.strip(), maxsplit=1)[0])


def excluded_distributions(
    pyproject: Path = ROOT / "pyproject.toml", python: str = sys.executable
) -> set[str]:
    """Every distribution the project installs or tests with: ``pyproject.toml``'s dependencies
    and optional dependencies, and what ``pip list`` shows in ``python``'s environment."""
    import tomllib  # Python 3.11+: building a corpus needs it, the product does not

    project = tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))["project"]
    names = {normalize_name(project["name"])}
    specs = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    names |= {_requirement_name(s) for s in specs}
    out = subprocess.run([python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    names |= {normalize_name(d["name"]) for d in json.loads(out.stdout)}
    return names


# --- one wheel ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class License:
    """The licence decided for a wheel (None: not allowed or unknown) and the evidence read."""

    spdx: str | None
    evidence: dict
    reason: str = ""


def _expression(text: str) -> list[str] | None:
    """The allowed licences of a simple SPDX expression (``A OR B``: any; ``A AND B``: all), or None."""
    text = text.strip().strip("()")
    if " AND " in text:
        parts = [_SPDX.get(p.strip().strip("()").lower()) for p in text.split(" AND ")]
        return parts if all(parts) else None
    parts = [_SPDX.get(p.strip().strip("()").lower()) for p in text.split(" OR ")]
    allowed = [p for p in parts if p]
    return allowed[:1] or None


def classify_license(metadata: dict) -> License:
    """Decide a wheel's licence from its METADATA fields (``license_expression``, ``license``,
    ``classifiers``)."""
    expression = (metadata.get("license_expression") or "").strip()
    field = (metadata.get("license") or "").strip()
    classifiers = [c for c in metadata.get("classifiers", []) if c.startswith("License ::")]
    evidence = {
        "license_expression": expression or None,
        "license": field[:200] or None,
        "classifiers": classifiers,
    }
    if any(_COPYLEFT.search(c) for c in classifiers):
        return License(None, evidence, "copyleft licence classifier")  # (an SPDX `A OR B` may offer MIT)
    found: list[str] = []
    if expression:
        allowed = _expression(expression)
        if allowed is None:
            return License(
                None, evidence, f"licence expression {expression!r} is not MIT, BSD, Apache-2.0 or PSF"
            )
        found += allowed
    exact = _SPDX.get(field.lower()) if field and "\n" not in field else None
    if exact and not expression:
        found.append(exact)  # `License: BSD-3-Clause` says more than the classifier's "BSD License"
    found += [_CLASSIFIERS[c] for c in classifiers if c in _CLASSIFIERS]
    unknown = [c for c in classifiers if c not in _CLASSIFIERS and c != "License :: OSI Approved"]
    if unknown:
        return License(None, evidence, f"licence classifier {unknown[0]!r} is not in the allowed set")
    if field and not found:
        first = field.splitlines()[0]
        if _COPYLEFT.search(first):
            return License(None, evidence, f"licence field {first[:60]!r} is copyleft")
        found += [name for pattern, name in _FREE_TEXT if pattern.search(field[:400])][:1]
    if not found:
        return License(None, evidence, "no recognisable licence")
    specific = [f for f in found if f != "BSD"]  # a classifier's "BSD" is less precise than an SPDX id
    return License(specific[0] if specific else found[0], evidence)


def wheel_metadata(wheel: Path) -> dict:
    """Name, version, licence fields, classifiers, home page and licence files of a wheel."""
    with zipfile.ZipFile(wheel) as z:
        meta_name = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
        if meta_name is None:
            raise CorpusError(f"{wheel.name} has no .dist-info/METADATA")
        msg = email.parser.Parser().parsestr(
            z.read(meta_name).decode("utf-8", errors="replace"), headersonly=True
        )
        dist_info = meta_name.rsplit("/", 1)[0]
        licence_files = [n for n in z.namelist() if n.startswith(dist_info + "/") and
                         re.search(r"/(licen[cs]es?/|licen[cs]e|copying|notice)", n, re.I)]  # fmt: skip
    urls = msg.get_all("Project-URL") or []
    return {
        "name": msg.get("Name", ""),
        "version": msg.get("Version", ""),
        "license_expression": msg.get("License-Expression"),
        "license": msg.get("License"),
        "classifiers": msg.get_all("Classifier") or [],
        "home_page": msg.get("Home-page") or (urls[0].split(",", 1)[-1].strip() if urls else None),
        "license_files": licence_files,
    }


def is_pure_wheel(wheel: Path) -> bool:
    """A ``*-none-any.whl`` without compiled files."""
    if not wheel.name.endswith("-none-any.whl"):
        return False
    with zipfile.ZipFile(wheel) as z:
        return not any(n.endswith((".so", ".pyd", ".dll", ".dylib")) for n in z.namelist())


def wheel_sources(wheel: Path, max_bytes: int = MAX_FILE_BYTES) -> dict[str, str]:
    """The wheel's ``*.py`` files (path in the wheel -> text) outside test and vendored folders and
    ``.data`` / ``.dist-info``; files that are not UTF-8, larger than ``max_bytes`` or blank are left out."""
    out = {}
    with zipfile.ZipFile(wheel) as z:
        for info in sorted(z.infolist(), key=lambda i: i.filename):
            parts = PurePosixPath(info.filename).parts
            if not info.filename.endswith(".py") or info.file_size > max_bytes:
                continue
            if any(p in EXCLUDED_PARTS or p.endswith((".dist-info", ".data")) for p in parts[:-1]):
                continue
            if parts[-1].startswith("test_") or parts[-1].endswith("_test.py") or parts[-1] == "conftest.py":
                continue
            try:
                text = z.read(info).decode("utf-8")
            except UnicodeDecodeError:
                continue
            if text.strip():
                out[info.filename] = text.replace("\r\n", "\n")
    return out


def content_key(text: str) -> str:
    """What makes two files the same for de-duplication: the text with trailing whitespace removed."""
    normal = "\n".join(line.rstrip() for line in text.strip().splitlines())
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()


# --- fetching ----------------------------------------------------------------------------------


def _cached_wheel(name: str, wheels: Path) -> Path | None:
    want = normalize_name(name)
    for w in sorted(wheels.glob("*.whl")):
        if normalize_name(w.name.split("-", 1)[0]) == want:
            return w
    return None


def download(names: Iterable[str], wheels: Path, python: str = sys.executable) -> dict[str, Path | str]:
    """Each name's wheel in ``wheels`` (fetched with pip unless already there), or why not."""
    wheels.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path | str] = {}
    for name in names:
        cached = _cached_wheel(name, wheels)
        if cached is None:
            cmd = [python, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--disable-pip-version-check", "--quiet", "--dest", str(wheels), name]  # fmt: skip
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            cached = _cached_wheel(name, wheels)
            if p.returncode != 0 or cached is None:
                out[name] = f"pip download failed: {(p.stderr or p.stdout).strip()[-300:]}"
                continue
        out[name] = cached
    return out


# --- the corpus --------------------------------------------------------------------------------


def _stdlib_keys(stdlib_manifest: Path | None) -> set[str]:
    if stdlib_manifest is None:
        return set()
    return {
        content_key(d.text) for split in ("train", "heldout") for d in load_documents(stdlib_manifest, split)
    }


def build_manifest(
    out: Path,
    packages: Sequence[str] = DEFAULT_PACKAGES,
    *,
    excluded: set[str] | None = None,
    stdlib_manifest: Path | None = None,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    seed: int = DEFAULT_SEED,
    fetched: dict[str, Path | str] | None = None,
) -> dict:
    """Fetch, filter, de-duplicate and split ``packages`` into ``out`` (see the module docstring).

    ``fetched`` maps names to wheels already at hand (tests); otherwise they are downloaded."""
    out = Path(out)
    excluded = excluded_distributions() if excluded is None else excluded
    rejected: list[dict] = []
    wanted = []
    for name in packages:
        if normalize_name(name) in excluded:
            rejected.append({"name": name, "reason": "the project installs or tests with it"})
        else:
            wanted.append(name)
    fetched = download(wanted, out / "wheels") if fetched is None else fetched
    seen = _stdlib_keys(stdlib_manifest)
    kept: list[dict] = []
    sources: dict[str, dict[str, str]] = {}
    duplicates = 0
    for name in wanted:
        wheel = fetched.get(name)
        if not isinstance(wheel, Path):
            rejected.append({"name": name, "reason": wheel or "not fetched"})
            continue
        meta = wheel_metadata(wheel)
        dist = normalize_name(meta["name"] or name)
        if dist in excluded:  # the wheel's own name may differ from the requested one
            rejected.append({"name": name, "reason": "the project installs or tests with it"})
            continue
        if not is_pure_wheel(wheel):
            rejected.append({"name": name, "reason": f"{wheel.name} is not a pure-Python wheel"})
            continue
        licence = classify_license(meta)
        if licence.spdx is None:
            rejected.append({"name": name, "reason": licence.reason, "evidence": licence.evidence})
            continue
        files = {}
        for rel, text in wheel_sources(wheel).items():
            key = content_key(text)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            files[rel] = text
        if not files:
            rejected.append({"name": name, "reason": "no Python sources left"})
            continue
        sources[dist] = files
        kept.append({
            "name": dist, "version": meta["version"], "license": licence.spdx, "evidence": licence.evidence,
            "wheel": wheel.name, "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
            "home_page": meta["home_page"], "files": len(files),
            "bytes": sum(len(t.encode("utf-8")) for t in files.values()),
            "license_files": _copy_licences(wheel, meta, out / "licenses" / f"{dist}-{meta['version']}"),
        })  # fmt: skip
    if len(kept) < 2:
        raise CorpusError(f"only {len(kept)} package(s) kept; need at least 2 to hold one out ({rejected})")
    train_pkgs, held_pkgs = split_files([k["name"] for k in kept], heldout_fraction, seed)
    held_set = set(held_pkgs)
    train, heldout = [], []
    shutil.rmtree(out / "src", ignore_errors=True)  # a file of an earlier build must not linger
    for k in kept:
        k["split"] = "heldout" if k["name"] in held_set else "train"
        for rel, text in sources[k["name"]].items():
            path = out / "src" / k["name"] / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            (heldout if k["split"] == "heldout" else train).append(f"{k['name']}/{rel}")
    size = {s: sum(k["bytes"] for k in kept if k["split"] == s) for s in ("train", "heldout")}
    return {
        "format": PYPI_MANIFEST_FORMAT,
        "root": str((out / "src").resolve()),
        "built": time.strftime("%Y-%m-%d"),
        "seed": seed,
        "heldout_fraction": heldout_fraction,
        "allowed_licenses": list(ALLOWED_LICENSES),
        "excluded_distributions": sorted(excluded),
        "stdlib_manifest": str(stdlib_manifest) if stdlib_manifest else None,
        "counts": {
            "packages": len(kept),
            "train_packages": len(train_pkgs),
            "heldout_packages": len(held_pkgs),
            "files": len(train) + len(heldout),
            "train": len(train),
            "heldout": len(heldout),
            "duplicates_dropped": duplicates,
            "rejected": len(rejected),
        },  # fmt: skip
        "bytes": {"total": size["train"] + size["heldout"], **size},
        "packages": kept,
        "rejected": rejected,
        "heldout_packages": held_pkgs,
        "train": sorted(train),
        "heldout": sorted(heldout),
    }


def _copy_licences(wheel: Path, meta: dict, dest: Path) -> list[str]:
    names = []
    with zipfile.ZipFile(wheel) as z:
        for n in meta["license_files"]:
            target = dest / PurePosixPath(n).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(n))
            names.append(str(target))
    return names


def licence_table(manifest: dict) -> str:
    """A Markdown table of the kept packages: name, version, licence, split, files."""
    rows = ["| package | version | licence | split | files |", "|---|---|---|---|---|"]
    for p in manifest["packages"]:
        rows.append(f"| {p['name']} | {p['version']} | {p['license']} | {p['split']} | {p['files']} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="output folder (outside the repository)")
    parser.add_argument(
        "--licences", type=Path, metavar="MANIFEST", help="print the licence table of a manifest"
    )
    parser.add_argument("--packages", nargs="+", default=list(DEFAULT_PACKAGES), help="distributions to try")
    parser.add_argument("--stdlib-manifest", type=Path, default=None,
                        help="drop files identical to a stdlib corpus file (tools/corpus.py's manifest)")  # fmt: skip
    parser.add_argument("--heldout-fraction", type=float, default=DEFAULT_HELDOUT_FRACTION)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    if args.licences is not None:
        print(licence_table(json.loads(args.licences.read_text(encoding="utf-8"))))
        return 0
    if args.out is None:
        parser.error("--out is required to build a corpus")
    if args.out.resolve().is_relative_to(ROOT):
        parser.error(f"--out {args.out} is inside the repository; keep the data outside it")
    manifest = build_manifest(args.out, args.packages, stdlib_manifest=args.stdlib_manifest,
                              heldout_fraction=args.heldout_fraction, seed=args.seed)  # fmt: skip
    path = args.out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    c, b = manifest["counts"], manifest["bytes"]
    print(f"{path}: {c['packages']} packages ({c['train_packages']} train, {c['heldout_packages']} held out: "
          f"{', '.join(manifest['heldout_packages'])}), {c['files']} files, {b['total']} bytes "
          f"(train {b['train']}, held-out {b['heldout']}), {c['duplicates_dropped']} duplicate files dropped, "
          f"{c['rejected']} packages rejected")  # fmt: skip
    for r in manifest["rejected"]:
        print(f"  rejected {r['name']}: {r['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
