"""How long a completion prompt should be, and the part of the file that fits in it.

Offers `TRAIN_CONTEXT_FIELD`, `train_context(info)`, `prompt_length(info, default)` and
`fit_file(prefix, suffix, tokens)`.

A model is good at the prompt lengths it was trained on. A model folder says so in its
`config.json` (`mellum_train_context`: the embedded model was trained on 1,024-token sequences);
the engine reports it in its handshake as `train_context`. Prompts then aim at that length, the
repository context and the file sharing it. Without the field (a real Mellum 2 checkpoint, a
remote server) a prompt may use the whole `context_length` the engine reports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRAIN_CONTEXT_FIELD = "mellum_train_context"  # in a model folder's config.json
HANDSHAKE_FIELD = "train_context"  # in the engine's handshake (None: the model declares none)
CHARS_PER_TOKEN = 3.5  # as `estimate_tokens`


def _positive_int(value: object, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where} must be a positive integer or null, got {value!r}")
    return value


def train_context(info: Mapping[str, Any]) -> int | None:
    """The sequence length the engine's model was trained on, or None when it declares none.

    From the handshake's `train_context`; an engine that does not report the field yet is asked
    through the `config.json` of the model folder its handshake names, when that is a local folder.
    """
    if HANDSHAKE_FIELD in info:
        return _positive_int(info[HANDSHAKE_FIELD], f"the engine handshake's {HANDSHAKE_FIELD}")
    model = info.get("model")
    if not isinstance(model, str) or "://" in model:
        return None
    path = Path(model) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict):
        return None
    return _positive_int(config.get(TRAIN_CONTEXT_FIELD), f"{path}: {TRAIN_CONTEXT_FIELD}")


def prompt_length(info: Mapping[str, Any], default: int) -> int:
    """Tokens a completion prompt should stay within (generation included): the trained length
    when the model declares one, else the engine's `context_length`, else `default`."""
    length = int(info.get("context_length") or default)
    trained = train_context(info)
    return min(length, trained) if trained else length


def fit_file(prefix: str, suffix: str, tokens: int) -> tuple[str, str]:
    """`prefix` and `suffix` cut to about `tokens` (estimated) around the cursor, at line
    boundaries: the suffix keeps at least a quarter (its head), the prefix the rest (its tail)."""
    room = int(max(0, tokens) * CHARS_PER_TOKEN)
    if len(prefix) + len(suffix) <= room:
        return prefix, suffix
    keep_suffix = min(len(suffix), max(room // 4, room - len(prefix)))
    if keep_suffix < len(suffix):
        rest_of_line = suffix.find("\n") % (len(suffix) + 1)  # the cursor's line stays whole
        suffix = suffix[: max(suffix.rfind("\n", 0, keep_suffix + 1), rest_of_line)]
    keep_prefix = max(0, room - len(suffix))
    if keep_prefix < len(prefix):
        head = len(prefix) - keep_prefix
        start = prefix.find("\n", head)
        cursor_line = prefix.rfind("\n") + 1
        prefix = prefix[start + 1 :] if 0 <= start < cursor_line else prefix[min(head, cursor_line) :]
    return prefix, suffix
