"""Parity of an exported folder with the PyTorch model it came from.

Offers ``sample_ids`` (a stdlib source file through the model's tokenizer, or seeded random ids
when the folder has none) and ``verify``, which runs the same tokens through ``OrtBackend`` and
``TorchBackend`` -- a prefill past the sliding window, token-by-token decoding, MTP drafts -- and
reports the max logit difference and the top-1 agreement.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class Parity:
    tokens: int
    prefill_max_abs: float
    decode_max_abs: float
    top1_agreement: float  # of prefill and decode positions
    mtp_drafts_equal: bool | None  # None without an MTP layer

    @property
    def max_abs(self) -> float:
        return max(self.prefill_max_abs, self.decode_max_abs)

    def as_dict(self) -> dict:
        return {**asdict(self), "max_abs": self.max_abs}


def sample_ids(model_dir: str | Path, vocab: int, n: int, seed: int = 0) -> list[int]:
    """``n`` token ids of real code when ``model_dir`` has a tokenizer, else seeded random ids."""
    import json.decoder

    from engine.tokenizer import Tokenizer, TokenizerError

    try:
        tokenizer = Tokenizer.from_folder(model_dir)
    except (TokenizerError, OSError):  # no tokenizer: random ids still exercise every path
        return np.random.default_rng(seed).integers(0, vocab, n).tolist()
    text = Path(json.decoder.__file__).read_text()
    ids = tokenizer.encode(text)
    while len(ids) < n:
        ids = ids + ids
    return ids[:n]


def verify(
    folder: str | Path,
    model,
    ids: list[int],
    decode: int = 8,
    threads: int | None = None,
    kv_dtype: str = "fp16",
) -> Parity:
    """Run ``ids`` (prefill) then ``decode`` more tokens greedily through both backends, in fp32 logits,
    both storing the KV cache in ``kv_dtype``."""
    from engine.backends.ort_backend import OrtBackend
    from engine.backends.torch_backend import TorchBackend

    ort_backend = OrtBackend.load(folder, threads=threads, kv_dtype=kv_dtype)
    torch_backend = TorchBackend(model, str(folder), threads, kv_dtype=kv_dtype)
    so, st = ort_backend.new_sequence(), torch_backend.new_sequence()
    a = ort_backend.forward(so, ids, logits_to_keep=0)
    b = torch_backend.forward(st, ids, logits_to_keep=0)
    prefill = float(np.abs(a - b).max())
    agree = [int(x == y) for x, y in zip(a.argmax(-1), b.argmax(-1), strict=True)]
    decode_diff = 0.0
    token = int(b[-1].argmax())
    drafts_equal = None
    for i in range(decode):
        if i == decode // 2 and ort_backend.has_mtp and torch_backend.has_mtp:
            drafts_equal = ort_backend.draft(so, token, 3) == torch_backend.draft(st, token, 3)
        a = ort_backend.forward(so, [token])[-1]
        b = torch_backend.forward(st, [token])[-1]
        decode_diff = max(decode_diff, float(np.abs(a - b).max()))
        agree.append(int(a.argmax() == b.argmax()))
        token = int(b.argmax())
    return Parity(len(ids), prefill, decode_diff, float(np.mean(agree)), drafts_equal)
