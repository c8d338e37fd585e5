"""Assemble the embedded default model folder from a training run.

    python tools/build_embedded.py --trained runs/train/model --card MODEL_CARD.md \
        --out engine/embedded/mellum-tiny-py

Copies the trained HF folder (config, fp16 safetensors, tokenizer), exports it to ONNX (int8,
the default runtime path) into the same folder, adds the model card, and checks that everything
shipped stays within the size limit.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

LIMIT = 32 * 1024 * 1024
SHIPPED_HF = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trained", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quant", default="int8")
    p.add_argument("--card", type=Path, required=True, help="model card text to ship")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = Path(tmp) / "onnx"
        subprocess.run([sys.executable, "-m", "export", "--model", str(a.trained), "--out", str(onnx_dir),
                        "--quant", a.quant], check=True)  # fmt: skip
        if a.out.exists():
            shutil.rmtree(a.out)
        a.out.mkdir(parents=True)
        for name in SHIPPED_HF:
            shutil.copy(a.trained / name, a.out / name)
        for f in sorted(onnx_dir.iterdir()):
            if f.name not in SHIPPED_HF:
                shutil.copy(f, a.out / f.name)
    shutil.copy(a.card, a.out / "MODEL_CARD.md")
    sizes = {f.name: f.stat().st_size for f in sorted(a.out.iterdir())}
    total = sum(sizes.values())
    for name, size in sizes.items():
        print(f"{size / 2**20:8.2f} MiB  {name}")
    print(f"{total / 2**20:8.2f} MiB  total (limit {LIMIT / 2**20:.0f} MiB)")
    if total > LIMIT:
        print("error: the embedded model exceeds its size limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
