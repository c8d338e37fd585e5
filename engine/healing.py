"""Token healing: let the model re-choose the token the cursor cut through.

A FIM prefix ends wherever the cursor is, often inside a word (``ret|``): tokenised alone, its last
token is a fragment the model rarely saw before ``<fim_middle>``, and continuing after it goes
wrong (measured on the embedded model: "ret" -> ","). Healing drops the prefix's last token from
the prompt and constrains the first generated token to one whose bytes start with the dropped
bytes ("return", "ret", ...); the dropped bytes are then removed from the output. The original
token always qualifies, so the constraint never empties. A prefix ending in a line break and its
indentation is not healed: the editor put the cursor at that indentation on purpose, and healing
let the model pick a deeper one (a body at 8 spaces after ``def f():``).

Offers ``TokenHealer`` with ``heal(prefix_ids) -> (ids, dropped_bytes)``, ``allowed(dropped)``
and ``mask(logits, dropped)``.
"""

from __future__ import annotations

import bisect

import numpy as np

from .tokenizer import Tokenizer


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string that starts with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


class TokenHealer:
    def __init__(self, tok: Tokenizer) -> None:
        table = [tok.decode_bytes([i]) for i in range(tok.vocab_size)]
        usable = [(b, i) for i, b in enumerate(table) if b and i not in tok.special_ids]
        usable.sort()
        self._keys = [b for b, _ in usable]
        self._ids = np.array([i for _, i in usable], dtype=np.int64)
        self._table = table
        self._special = tok.special_ids

    def heal(self, prefix_ids: list[int] | tuple[int, ...]) -> tuple[list[int], bytes]:
        """The prompt's prefix ids without their last token, and that token's bytes (b"" = no healing)."""
        if not prefix_ids or prefix_ids[-1] in self._special:
            return list(prefix_ids), b""
        last = self._table[prefix_ids[-1]]
        if b"\n" in last and not last.strip():  # a line break and its indentation: keep it
            return list(prefix_ids), b""
        return list(prefix_ids[:-1]), last

    def allowed(self, dropped: bytes) -> np.ndarray:
        """Ids of the tokens whose bytes start with ``dropped`` (sorted table, binary search)."""
        lo = bisect.bisect_left(self._keys, dropped)
        end = _successor(dropped)
        hi = len(self._keys) if end is None else bisect.bisect_left(self._keys, end, lo)
        return self._ids[lo:hi]

    def mask(self, logits: np.ndarray, dropped: bytes) -> np.ndarray:
        """``logits`` with every token that cannot start with ``dropped`` set to -inf."""
        if not dropped:
            return logits
        out = np.full_like(logits, -np.inf)
        keep = self.allowed(dropped)
        out[keep] = logits[keep]
        return out

    def token_bytes(self, token: int) -> bytes:
        return self._table[token]
