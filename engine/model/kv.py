"""Per-sequence KV cache: inference state kept outside the modules and passed into the forward.

Legend: B = batch, K = KV heads, S = positions held, D = head dim, T = new tokens.

``KVCache`` holds one ``LayerKV`` per attention layer. Full-attention layers keep every position,
in pages shared copy-on-write with forks (``engine.model.paged``): ``fork`` copies no rows of them; they
store ``dtype`` (None: the dtype of the keys appended), and attention reads the stored values, new
rows included, so a prompt gives the same logits however it is split into chunks. Sliding layers
keep their window plus a rollback margin, so that backspacing or a small jump back (``truncate``)
costs nothing as long as it stays inside the margin (``engine.model.kv_policy``); they store the compute
dtype (window + margin rows, as the ONNX export does). A layer stores its keys after rotary, as
``(B, K, S, D)`` covering positions ``[start, end)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import kv_policy
from .config import CacheError, MellumConfig
from .paged import PagedKV

__all__ = ["CacheError", "KVCache", "LayerKV", "KV_DTYPES"]

KV_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class LayerKV:
    window: int | None  # keys a query sees, itself included; None = all
    margin: int
    k: torch.Tensor | None = None  # sliding layers: (B, K, capacity, D)
    v: torch.Tensor | None = None
    start: int = 0  # position of slot 0
    end: int = 0  # one past the last position held
    origin: int = 0  # the first position this layer ever held (1 for the MTP layer)
    dtype: torch.dtype | None = None  # full layers' storage dtype; None: the dtype of the keys appended
    pages: PagedKV | None = None  # full layers: positions [start, end) as pages

    @property
    def keep(self) -> int | None:
        """Positions a sliding layer must keep to serve the next query and a rollback of ``margin``."""
        return kv_policy.keep(self.window, self.margin)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Store (B, K, T, D) keys/values at positions [end, end+T); return every held key, value (in the
        dtype of ``k``, as stored) and the start."""
        if self.window is None:
            return self._append_paged(k, v)
        t = k.shape[2]
        used = self.end - self.start
        if self.k is None or used + t > self.k.shape[2]:
            cap = kv_policy.grown_capacity(used + t)
            nk = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            nv = v.new_empty(nk.shape)
            if self.k is not None and used:
                nk[:, :, :used] = self.k[:, :, :used]
                nv[:, :, :used] = self.v[:, :, :used]
            self.k, self.v = nk, nv
        self.k[:, :, used : used + t] = k
        self.v[:, :, used : used + t] = v
        self.end += t
        return self.k[:, :, : used + t], self.v[:, :, : used + t], self.start

    def _append_paged(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        b, heads, t, d = k.shape
        if self.pages is None:
            dtype = self.dtype or k.dtype
            self.pages = PagedKV(1, heads, d, lambda shape: torch.zeros(shape, dtype=dtype), batch=b)
        self.pages.reserve(t)
        rows = self.pages.rows(t)  # (1, 2, B, K, T, D)
        rows[0, 0] = k
        rows[0, 1] = v
        self.pages.advance(t)
        self.end += t
        views = self.pages.views()
        ks = [slab.a[0, 0, :, :, :n] for slab, n in views if n]
        vs = [slab.a[0, 1, :, :, :n] for slab, n in views if n]
        held_k = ks[0] if len(ks) == 1 else torch.cat(ks, dim=2)  # differs from one buffer: a copy per step
        held_v = vs[0] if len(vs) == 1 else torch.cat(vs, dim=2)  # once forked (the reference backend)
        return held_k.to(k.dtype), held_v.to(k.dtype), self.start

    def trim(self) -> None:
        """Drop sliding-layer positions no query or allowed rollback can need (``kv_policy``)."""
        if self.k is None:
            return
        start = kv_policy.trimmed_start(self.start, self.end, self.window, self.margin)
        if start == self.start:
            return
        drop, used, keep = start - self.start, self.end - self.start, self.end - start
        cap = keep + max(64, keep // 4)
        nk = self.k.new_empty(self.k.shape[0], self.k.shape[1], cap, self.k.shape[3])
        nv = self.v.new_empty(nk.shape)
        nk[:, :, :keep] = self.k[:, :, drop:used]
        nv[:, :, :keep] = self.v[:, :, drop:used]
        self.k, self.v = nk, nv
        self.start = start

    def lowest_truncation(self) -> int:
        """The smallest length this layer can be truncated to."""
        return kv_policy.lowest_truncation(self.window, self.start, self.origin)

    def truncate(self, n: int) -> None:
        if n < self.lowest_truncation():
            raise CacheError(
                f"cannot roll back to {n} tokens: this sliding layer holds positions from {self.start} "
                f"(window {self.window}, margin {self.margin}); the oldest length it can serve is "
                f"{self.lowest_truncation()}"
            )
        self.end = min(self.end, max(n, self.start))
        if self.pages is not None:
            self.pages.truncate(self.end - self.start)

    def nbytes(self) -> int:
        """Bytes of the positions held (not of spare capacity)."""
        if self.pages is not None and self.pages.segments:
            b, heads = self.pages.shape[2], self.pages.shape[3]
            size = self.pages.segments[0].slab.a.element_size()
            return b * heads * self.pages.dim * size * 2 * (self.end - self.start)
        if self.k is None:
            return 0
        per_pos = self.k.shape[0] * self.k.shape[1] * self.k.shape[3] * self.k.element_size() * 2
        return per_pos * (self.end - self.start)

    def allocated_bytes(self) -> int:
        """Bytes allocated; a full layer's pages shared with forks are divided among their holders."""
        if self.pages is not None:
            return self.pages.nbytes()
        if self.k is None:
            return 0
        return self.k.numel() * self.k.element_size() * 2

    def compact(self) -> None:
        """Release spare capacity (used before a cache is parked in the prefix store)."""
        if self.pages is not None:
            self.pages.compact()
            return
        if self.k is None:
            return
        used = self.end - self.start
        self.k = self.k[:, :, :used].clone()
        self.v = self.v[:, :, :used].clone()

    def fork(self) -> LayerKV:
        """An independent copy: a sliding layer's rows are copied, a full layer's pages shared."""
        other = LayerKV(
            self.window, self.margin, start=self.start, end=self.end, origin=self.origin, dtype=self.dtype
        )
        if self.pages is not None:
            other.pages = self.pages.fork()
        elif self.k is not None:
            used = self.end - self.start
            other.k, other.v = self.k[:, :, :used].clone(), self.v[:, :, :used].clone()
        return other


class KVCache:
    """KV state of one sequence across all attention layers of a model (or of its MTP layer)."""

    def __init__(
        self, windows: list[int | None], margin: int = 256, offset: int = 0, dtype: torch.dtype | None = None
    ) -> None:
        self.layers = [
            LayerKV(w, margin, start=offset, end=offset, origin=offset, dtype=dtype) for w in windows
        ]
        self.margin, self.dtype = margin, dtype

    @classmethod
    def for_model(cls, config: MellumConfig, margin: int = 256, dtype: torch.dtype | None = None) -> KVCache:
        return cls([config.window_of(t) for t in config.layer_types], margin, dtype=dtype)

    @classmethod
    def for_mtp(cls, config: MellumConfig, margin: int = 256, dtype: torch.dtype | None = None) -> KVCache:
        # MTP position p combines token p with the main model's hidden state at p-1: it starts at 1.
        if config.mtp is None:
            raise CacheError("this model has no MTP layer")
        return cls([config.window_of(config.mtp.layer_type)], margin, offset=1, dtype=dtype)

    def __len__(self) -> int:
        return self.layers[0].end

    @property
    def length(self) -> int:
        return self.layers[0].end

    def truncate(self, n: int) -> None:
        """Forget positions >= n; raises CacheError (and changes nothing) if a sliding layer cannot serve n."""
        for layer in self.layers:  # check every layer first: a refusal changes nothing
            if n < layer.lowest_truncation():
                layer.truncate(n)  # raises, naming the layer's window and margin
        for layer in self.layers:
            layer.truncate(n)

    def lowest_truncation(self) -> int:
        return max(layer.lowest_truncation() for layer in self.layers)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def allocated_bytes(self) -> int:
        return sum(layer.allocated_bytes() for layer in self.layers)

    def compact(self) -> None:
        for layer in self.layers:
            layer.compact()

    def fork(self) -> KVCache:
        """An independent copy that shares the full layers' pages (copy-on-write)."""
        other = KVCache.__new__(KVCache)
        other.layers = [layer.fork() for layer in self.layers]
        other.margin, other.dtype = self.margin, self.dtype
        return other
