"""Regenerate the embedded model's ONNX export from its own shipped safetensors.

    python -m export.refresh_embedded [--folder engine/embedded/mellum-tiny-py] [export options...]

Exports the folder (config.json, model.safetensors and the tokenizer are a complete checkpoint)
with ``--quant int8`` and any further ``mellum-lsp export`` options into a temporary folder, then
replaces the folder's ``model.onnx``/``mtp.onnx`` (+ data) and ``export_report.json`` with the new
ones; ``genai_config.json`` is replaced too, or removed when the new export has none (the paged KV
layout, which onnxruntime-genai cannot bind). Fails without touching the folder if the export
fails or the folder would outgrow the embedded model's 32 MB budget.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from .cli import main as export_main

LIMIT = 32 * 2**20  # what tests/unit/test_embedded.py holds the shipped folder to
GRAPH_FILES = (
    "model.onnx",
    "model.onnx.data",
    "mtp.onnx",
    "mtp.onnx.data",
    "export_report.json",
    "genai_config.json",
)


def refresh(folder: Path, extra: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "onnx"
        code = export_main(["--model", str(folder), "--out", str(out), "--quant", "int8", *extra])
        if code:
            return code
        kept = sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.name not in GRAPH_FILES)
        new = sum((out / n).stat().st_size for n in GRAPH_FILES if (out / n).is_file())
        if kept + new > LIMIT:
            print(f"error: {folder} would hold {(kept + new) / 2**20:.1f} MiB, over {LIMIT / 2**20:.0f} MiB; "
                  "left as it was", file=sys.stderr)  # fmt: skip
            return 2
        for name in GRAPH_FILES:
            if (out / name).is_file():
                shutil.copy2(out / name, folder / name)
            elif (folder / name).is_file():
                (folder / name).unlink()
    print(f"refreshed {folder}: {(kept + new) / 2**20:.1f} MiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    from engine.embedded import embedded_model_dir

    p = argparse.ArgumentParser(
        prog="python -m export.refresh_embedded", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--folder", type=Path, default=None, help="default: the embedded model")
    a, extra = p.parse_known_args(argv)
    return refresh(a.folder or Path(embedded_model_dir()), extra)


if __name__ == "__main__":
    raise SystemExit(main())
