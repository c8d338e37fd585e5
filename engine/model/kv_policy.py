"""What a KV cache keeps, whatever holds its rows (torch tensors in ``engine.model.kv``, numpy
arrays in the ONNX Runtime backend): the one owner of these rules, so both backends keep and refuse
exactly the same positions.

- A full-attention layer keeps every position.
- A sliding layer (a query sees ``window`` keys, itself included) keeps ``window - 1 + margin``
  positions: the next query's window plus a rollback margin, so a backspace or a small jump back
  costs nothing. Older positions are dropped in chunks (``trimmed_start``), not one per token.
- Storage grows by an eighth, at least 256 rows (``grown_capacity``): little spare capacity.

Pure Python. Offers ``keep``, ``trimmed_start``, ``lowest_truncation``, ``grown_capacity``.
"""

from __future__ import annotations


def keep(window: int | None, margin: int) -> int | None:
    """Positions a layer must hold to serve the next query and a rollback of ``margin``; None: all."""
    return None if window is None else window - 1 + margin


def trimmed_start(start: int, end: int, window: int | None, margin: int) -> int:
    """The first position to hold after a trim: unchanged until more than a chunk
    (max(64, keep / 4)) beyond ``keep`` is held, then ``end - keep``."""
    k = keep(window, margin)
    if k is None or end - start <= k + max(64, k // 4):
        return start
    return end - k


def lowest_truncation(window: int | None, start: int, origin: int) -> int:
    """The shortest length a layer holding [start, end) can be rolled back to (0: any)."""
    if window is None or start == origin:
        return 0
    return start + window - 1


def grown_capacity(needed: int) -> int:
    """Rows to allocate when ``needed`` rows do not fit."""
    return max(needed + max(256, needed // 8), 64)
