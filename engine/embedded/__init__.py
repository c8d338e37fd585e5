"""The embedded default model shipped with the package (see its MODEL_CARD.md)."""

from __future__ import annotations

from pathlib import Path

NAME = "mellum-tiny-py"


def embedded_model_dir() -> Path:
    """The folder of the model used wherever none is configured."""
    folder = Path(__file__).parent / NAME
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded model is missing from {folder}; reinstall mellum-lsp or pass --model DIR"
        )
    return folder
