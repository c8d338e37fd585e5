"""Exported tiny models shared by the export and ORT-backend tests (no tests of its own).

``export_once(checkpoints, tmp_path_factory, name, *cli_args, **overrides)`` builds the tiny
transformers checkpoint ``name`` (``tests/hf_reference.py``) and runs ``mellum-lsp export`` on it
once per test run, whichever module asks first; the folders live in pytest's temporary directory.
"""

from __future__ import annotations

from pathlib import Path

_MADE: dict[tuple, Path] = {}  # one export per (checkpoint, CLI options) for the whole test run


def export_once(checkpoints, tmp_path_factory, name: str = "default", *cli_args: str, **overrides) -> Path:
    from export.cli import main

    folder = checkpoints(name, **overrides)
    key = (str(folder), cli_args)
    if key not in _MADE:
        out = tmp_path_factory.mktemp("onnx-" + name) / "export"
        assert main(["--model", str(folder), "--out", str(out), *cli_args]) == 0
        _MADE[key] = out
    return _MADE[key]
