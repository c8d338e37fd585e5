"""KV storage of the ONNX Runtime backend, in numpy: what a sequence holds per group of layers.

- ``WindowKV``: a group's rows as one (layers, 2, 1, K, capacity, D) array, its slabs bound to the
  session as past and present at once (GroupQueryAttention writes new rows in place). Sliding
  groups keep their window plus a rollback margin (``engine.model.kv_policy``); full groups of
  contiguous exports keep every position, so forking them copies.
- ``PagedGroup``: a full-attention group (or a paged export's MTP layer) as pages shared
  copy-on-write with forks (``engine.model.paged``): forking copies no rows.
- ``Rows``: main-model hidden states the MTP layer has not read yet.

Every group offers reserve, truncate, lowest_truncation, reset, nbytes, compact, copy and the
positions ``start``/``end`` it holds.
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort

from ..model import kv_policy
from ..model.paged import PagedKV, Slab


class WindowKV:
    """KV rows of a group of layers with one window policy, as (layers, 2, 1, K, capacity, D) arrays.

    Holds positions [start, end), split at ``split``: the "live" array ``a`` (row r = position
    split + r) is what the session sees; a sliding group keeps only its last window - 1 rows (plus
    up to ``LIVE_SLACK``) live and moves older ones to the ``attic`` array (positions [attic_start,
    split)), because GroupQueryAttention's CPU kernel scans every row it is given, window or not.
    A rollback into the attic moves rows back. What is held follows ``LayerKV`` exactly: growth by
    an eighth (at least 256 rows); a sliding group keeps window - 1 + margin positions, dropping
    older ones in chunks: the rules of ``engine.model.kv_policy``, shared with ``LayerKV``. Full groups have no attic.
    """

    LIVE_SLACK = 32  # extra live rows before older ones move to the attic (amortises the shift)

    def __init__(self, layers: int, heads: int, dim: int, dtype, window: int | None, margin: int, start=0):
        self.a = np.zeros((layers, 2, 1, heads, 0, dim), dtype)
        self.attic = np.zeros_like(self.a)
        self.window, self.margin = window, margin
        self.origin = self.start = self.split = self.end = self.attic_start = (
            start  # origin: first position ever held
        )
        self.values: list[ort.OrtValue] = []  # per (layer, k/v), views of ``a``
        self.version = 0  # bumped whenever ``a`` is reallocated (bindings must follow)

    @property
    def dtype(self) -> np.dtype:
        return self.a.dtype

    @property
    def used(self) -> int:
        """Live rows (what the session sees)."""
        return self.end - self.split

    @property
    def capacity(self) -> int:
        return self.a.shape[4]

    def _realloc(self, cap: int) -> None:
        a = np.zeros((*self.a.shape[:4], cap, self.a.shape[5]), self.a.dtype)
        a[..., : self.used, :] = self.a[..., : self.used, :]
        self.a = a
        self.values = [ort.OrtValue.ortvalue_from_numpy(a[i, j]) for i in range(a.shape[0]) for j in (0, 1)]
        self.version += 1

    def reserve(self, t: int) -> None:
        """Room for ``t`` more live rows."""
        n = self.used + t
        if n > self.capacity:
            self._realloc(kv_policy.grown_capacity(n))

    def store(self, rows: np.ndarray) -> None:
        """Append (layers, 2, 1, K, t, D) rows (after ``reserve(t)``) and trim."""
        t = rows.shape[4]
        self.a[..., self.used : self.used + t, :] = rows
        self.end += t
        self.trim()

    def _attic_append(self, rows: np.ndarray) -> None:
        """Append rows of positions [split, split + n) to the attic, dropping attic rows below ``start``."""
        n = rows.shape[4]
        lo = min(max(self.attic_start, self.start), self.split + n)  # the first position worth keeping
        kept = max(0, self.split - lo)  # attic rows [lo, split) stay
        skip = max(0, lo - self.split)  # new rows below lo are not kept
        total = kept + n - skip
        if lo != self.attic_start or total > self.attic.shape[4]:
            cap = max(total, self.attic.shape[4])
            attic = np.zeros((*self.attic.shape[:4], cap, self.attic.shape[5]), self.attic.dtype)
            attic[..., :kept, :] = self.attic[..., lo - self.attic_start : lo - self.attic_start + kept, :]
            self.attic, self.attic_start = attic, lo
        self.attic[..., kept:total, :] = rows[..., skip:, :]

    def trim(self) -> None:
        if self.window is None:
            return
        self.start = kv_policy.trimmed_start(self.start, self.end, self.window, self.margin)
        live = self.window - 1
        if self.used > live + self.LIVE_SLACK:
            old = self.used - live
            self._attic_append(self.a[..., :old, :])
            self.a[..., :live, :] = self.a[..., old : self.used, :]  # in place: the bound slabs stay valid
            self.split += old
            if self.capacity > 2 * (live + self.LIVE_SLACK) + 256:  # a long chunk has passed: give it back
                self._realloc(live + self.LIVE_SLACK + 256)
        if self.start - self.attic_start > 2 * self.LIVE_SLACK:
            self._attic_append(self.a[..., :0, :])  # release attic rows no rollback can reach

    def lowest_truncation(self) -> int:
        return kv_policy.lowest_truncation(self.window, self.start, self.origin)

    def truncate(self, n: int) -> None:
        """Forget positions >= n (the caller checked ``lowest_truncation``); refill the live window."""
        self.end = min(self.end, max(n, self.start))
        if self.end < self.split:  # every live row is gone (and the attic rows >= end with them)
            self.split = self.end
        if self.window is None:
            return
        need = max(self.start, self.end - (self.window - 1))  # the first position live rows must hold
        if need >= self.split:
            return
        back, live = self.split - need, self.used  # rows that come back from the attic, rows staying
        self.reserve(back)
        self.a[..., back : back + live, :] = self.a[..., :live, :]
        first = need - self.attic_start
        self.a[..., :back, :] = self.attic[..., first : first + back, :]
        self.split = need

    def reset(self, position: int) -> None:
        """Empty, as a fresh cache whose first position is ``position``."""
        self.origin = self.start = self.split = self.end = self.attic_start = position

    def nbytes(self) -> int:
        return self.a.nbytes + self.attic.nbytes

    def compact(self) -> None:
        if self.capacity > max(self.used, 1):
            self._realloc(max(self.used, 1))
        self._attic_append(self.a[..., :0, :])
        held = self.split - self.attic_start
        if self.attic.shape[4] > held:
            self.attic = self.attic[..., :held, :].copy()

    def copy(self) -> WindowKV:
        other = copy.copy(self)
        other.attic = self.attic.copy()
        other._realloc(self.capacity)  # a fresh live array holding the used rows, and its own OrtValues
        return other


class PagedGroup:
    """Every position [origin, end) of a group of full-attention layers, as shared pages."""

    window = None

    def __init__(self, layers: int, heads: int, dim: int, dtype, segments: int, margin: int, start: int = 0):
        self.shape = (layers, heads, dim, np.dtype(dtype), segments)
        self.margin = margin
        self.origin = start
        self.pages = self._pages()

    def _pages(self) -> PagedKV:
        layers, heads, dim, dtype, segments = self.shape
        return PagedKV(layers, heads, dim, lambda shape: np.zeros(shape, dtype), segments)

    @property
    def start(self) -> int:
        return self.origin

    @property
    def dtype(self) -> np.dtype:
        return self.shape[3]

    @property
    def end(self) -> int:
        return self.origin + self.pages.length

    def reserve(self, t: int) -> None:
        self.pages.reserve(t)

    def store(self, rows: np.ndarray) -> None:
        """Append (layers, 2, 1, K, t, D) rows (after ``reserve(t)``)."""
        t = rows.shape[4]
        self.pages.rows(t)[...] = rows
        self.pages.advance(t)

    def lowest_truncation(self) -> int:
        return 0

    def truncate(self, n: int) -> None:
        self.pages.truncate(max(0, n - self.origin))

    def reset(self, position: int) -> None:
        self.origin, self.pages = position, self._pages()

    def nbytes(self) -> int:
        return self.pages.nbytes()

    def compact(self) -> None:
        self.pages.compact()

    def copy(self) -> PagedGroup:
        other = copy.copy(self)
        other.pages = self.pages.fork()
        return other

    def views(self) -> list[tuple[Slab, int]]:
        return self.pages.views()


def slab_value(slab: Slab, layer: int, kind: int) -> ort.OrtValue:
    """The OrtValue of one layer's keys (kind 0) or values (1) in ``slab``: (1, K, capacity, D)."""
    value = slab.cache.get((layer, kind))
    if value is None:
        value = slab.cache[(layer, kind)] = ort.OrtValue.ortvalue_from_numpy(slab.a[layer, kind])
    return value


class Rows:
    """Main-model hidden states of the positions the MTP layer has not read yet: rows [start, end)."""

    def __init__(self, width: int, dtype) -> None:
        self.a = np.zeros((64, width), dtype)
        self.start = self.end = 0

    def append(self, position: int, rows: np.ndarray) -> None:
        if self.end == self.start:
            self.start = self.end = position
        n, used = rows.shape[0], self.end - self.start
        if used + n > self.a.shape[0]:
            a = np.zeros((2 * (used + n), self.a.shape[1]), self.a.dtype)
            a[:used] = self.a[:used]
            self.a = a
        self.a[used : used + n] = rows
        self.end += n

    def bound(self, keep: int) -> None:
        """Drop all but the last ``keep`` rows once more than twice that many are held."""
        used = self.end - self.start
        if used > 2 * keep:
            self.a[:keep] = self.a[used - keep : used]
            self.start = self.end - keep

    def rows(self, begin: int, end: int) -> np.ndarray:
        return self.a[begin - self.start : end - self.start]

    def copy(self) -> Rows:
        other = Rows.__new__(Rows)
        other.a, other.start, other.end = (
            self.a[: max(self.end - self.start, 64)].copy(),
            self.start,
            self.end,
        )
        return other
