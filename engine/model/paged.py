"""Paged KV storage with copy-on-write for full-attention layers, shared by both backends.

A sequence's full-layer KV is a short list of *segments*; a segment is a view of the first ``n``
rows of a *slab*, one allocation holding those rows for every layer of a group, shaped
(L, 2, 1, K, C, D). A slab is *open* while one sequence writes to it and *frozen* once shared:
``fork`` freezes the parent's open slab and gives the child views of the same slabs, so a fork
copies no KV rows whatever the length, and neither sequence can change a row the other reads (a
write always goes to an open slab, which only its writer holds). A frozen slab whose other
holders are gone opens again.

Appending after a frozen slab starts a new segment; at most ``max_segments`` are kept (an ONNX
graph binds a fixed number), beyond that the trailing segments are merged into one new open slab
(copying their rows: those after the first segment, usually a file's part of the prompt). A
truncation into a frozen slab only shortens the view; a view left using under half of its slab
is copied out, so attention never reads more than twice the rows it needs.

Array-agnostic: slabs come from ``alloc(shape)`` (numpy for ONNX Runtime, torch for the reference
backend) and are only sliced and assigned. Offers ``Slab``, ``Segment`` and ``PagedKV``.

Legend: L = layers in the group, K = KV heads, C = capacity (rows), D = head dim, t = new rows.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from . import kv_policy


class Slab:
    """One allocation of rows for every layer of a group: ``a`` is (L, 2, B, K, C, D) (B = 1 in the engine)."""

    __slots__ = ("a", "frozen", "holders", "cache", "__weakref__")

    def __init__(self, a: Any) -> None:
        self.a = a
        self.frozen = False
        self.holders: weakref.WeakSet[Segment] = weakref.WeakSet()  # live views of this slab
        self.cache: dict = {}  # what a backend derives from ``a`` (e.g. OrtValues), dropped with it

    @property
    def capacity(self) -> int:
        return self.a.shape[4]


class Segment:
    """Rows [0, n) of ``slab``, held by one sequence."""

    __slots__ = ("slab", "n", "__weakref__")

    def __init__(self, slab: Slab, n: int) -> None:
        self.slab, self.n = slab, n
        slab.holders.add(self)


class PagedKV:
    """The full-layer KV of one sequence: positions [0, length) as a list of segments."""

    def __init__(
        self,
        layers: int,
        heads: int,
        dim: int,
        alloc: Callable[[tuple[int, ...]], Any],
        max_segments: int = 2,
        batch: int = 1,
    ) -> None:
        if max_segments < 1:
            raise ValueError(f"max_segments must be >= 1, got {max_segments}")
        self.shape = (layers, 2, batch, heads)
        self.dim, self.alloc, self.max_segments = dim, alloc, max_segments
        self.segments: list[Segment] = []

    @property
    def length(self) -> int:
        return sum(s.n for s in self.segments)

    def _slab(self, capacity: int) -> Slab:
        return Slab(self.alloc((*self.shape, capacity, self.dim)))

    def _copy_out(self, segments: list[Segment], extra: int | None) -> Segment:
        """A new open segment holding the rows of ``segments``, with room for ``extra`` more
        (None: no spare rows at all)."""
        rows = sum(s.n for s in segments)
        slab = self._slab(rows if extra is None else kv_policy.grown_capacity(rows + extra))
        r = 0
        for s in segments:
            slab.a[..., r : r + s.n, :] = s.slab.a[..., : s.n, :]
            r += s.n
        return Segment(slab, rows)

    def reserve(self, t: int) -> None:
        """Make the last segment an open one with room for ``t`` more rows (see the module docstring)."""
        last = self.segments[-1] if self.segments else None
        if last is not None and last.slab.frozen and len(last.slab.holders) == 1:
            last.slab.frozen = False  # every other holder is gone: ours alone again
        if last is not None and not last.slab.frozen:
            if last.n + t > last.slab.capacity:  # grow (ours alone: nobody else reads the old slab)
                self.segments[-1] = self._copy_out([last], t)
            return
        if len(self.segments) < self.max_segments:
            self.segments.append(Segment(self._slab(kv_policy.grown_capacity(t)), 0))
        else:
            keep = self.max_segments - 1
            self.segments = self.segments[:keep] + [self._copy_out(self.segments[keep:], t)]

    def rows(self, t: int) -> Any:
        """The (L, 2, B, K, t, D) view where the next ``t`` rows go (after ``reserve(t)``)."""
        last = self.segments[-1]
        return last.slab.a[..., last.n : last.n + t, :]

    def advance(self, t: int) -> None:
        """Count ``t`` rows written through ``rows(t)`` as held."""
        self.segments[-1].n += t

    def truncate(self, n: int) -> None:
        """Forget positions >= n."""
        base = 0
        for i, s in enumerate(self.segments):
            if base + s.n >= n:
                s.n = n - base
                kept = self.segments[: i + (1 if s.n or not s.slab.frozen else 0)]
                self.segments = kept
                break
            base += s.n
        last = self.segments[-1] if self.segments else None
        if last is not None and last.slab.frozen and 0 < 2 * last.n < last.slab.capacity:
            self.segments[-1] = self._copy_out([last], 0)

    def fork(self) -> PagedKV:
        """A sequence holding the same positions through the same slabs (no rows copied)."""
        for s in self.segments:
            s.slab.frozen = True
        other = PagedKV(self.shape[0], self.shape[3], self.dim, self.alloc, self.max_segments, self.shape[2])
        other.segments = [Segment(s.slab, s.n) for s in self.segments]
        return other

    def compact(self) -> None:
        """Release the spare rows of an open last slab (copies its rows)."""
        last = self.segments[-1] if self.segments else None
        if last is None or last.slab.frozen or last.slab.capacity == last.n:
            return
        if last.n:
            self.segments[-1] = self._copy_out([last], None)
        else:
            self.segments.pop()

    def nbytes(self) -> int:
        """Bytes of the slabs this sequence holds, each shared slab divided among its holders."""
        return sum(s.slab.a.nbytes // max(1, len(s.slab.holders)) for s in self.segments)

    def views(self) -> list[tuple[Slab, int]]:
        """(slab, rows used) per segment, oldest first."""
        return [(s.slab, s.n) for s in self.segments]
