"""The PyTorch reference backend: our ``Mellum`` module over its external KV cache.

The KV cache is stored in ``kv_dtype`` (fp16 by default, fp32 for bit-level parity) whatever the
model's dtype; full layers are paged, so ``fork`` shares them instead of copying (``engine.model.paged``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..checkpoint import load_model
from ..model.kv import KV_DTYPES, CacheError, KVCache
from ..model.mellum import Mellum
from .base import Backend, Sequence


@dataclass
class TorchState:
    cache: KVCache
    mtp_cache: KVCache | None
    # Main-model hidden states of positions the MTP cache has not consumed yet, oldest first.
    pending: list[torch.Tensor] = field(default_factory=list)  # each (1, t, H)
    pending_start: int = 0  # position of pending[0]'s first row


SMALL_FORWARD = 16  # tokens: up to this many, a forward runs on ``decode_threads``


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        model: Mellum,
        model_dir: str = "",
        threads: int | None = None,
        decode_threads: int = 1,
        kv_dtype: str = "fp16",
    ) -> None:
        # Prefill chunks use every thread; the few-token forwards of decoding use one, because
        # a parallel region waits for its slowest thread and the editor's machine is never idle
        # (measured here: 2 threads on a busy machine decoded 30x slower than 1).
        self.threads = threads or torch.get_num_threads()
        self.decode_threads = min(decode_threads, self.threads)
        self.model = model.eval()
        self.config = model.config
        self.model_dir = model_dir
        if kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {sorted(KV_DTYPES)}, got {kv_dtype!r}")
        self.kv_dtype = kv_dtype
        self._kv = KV_DTYPES[kv_dtype]

    @classmethod
    def load(
        cls, model_dir: str, dtype: str = "fp32", threads: int | None = None, kv_dtype: str = "fp16"
    ) -> TorchBackend:
        return cls(load_model(model_dir, dtype=dtype), model_dir, threads, kv_dtype=kv_dtype)

    @property
    def has_mtp(self) -> bool:
        return self.model.mtp is not None

    def new_sequence(self, margin: int = 256) -> Sequence:
        mtp = KVCache.for_mtp(self.config, margin, self._kv) if self.has_mtp else None
        return Sequence([], TorchState(KVCache.for_model(self.config, margin, self._kv), mtp))

    def _threads_for(self, n: int) -> None:
        torch.set_num_threads(self.decode_threads if n <= SMALL_FORWARD else self.threads)

    @torch.inference_mode()
    def forward(self, seq: Sequence, ids: list[int], logits_to_keep: int = 1) -> np.ndarray:
        self._threads_for(len(ids))
        st: TorchState = seq.state
        n0 = st.cache.length
        x = torch.tensor([ids], dtype=torch.long)
        pos = torch.arange(n0, n0 + len(ids))[None]
        out = self.model(x, pos, st.cache, logits_to_keep=logits_to_keep)
        seq.ids.extend(ids)
        if st.mtp_cache is not None:
            if not st.pending:
                st.pending_start = n0
            st.pending.append(out.hidden)
            self._bound_pending(st, len(seq.ids) - st.pending_start)
        return out.logits[0].float().numpy()

    def _bound_pending(self, st: TorchState, total: int) -> None:
        """The MTP layer only ever needs its window of positions: drop older pending hidden states."""
        window = self.config.window_of(self.config.mtp.layer_type)
        if window is None:
            return
        need = window + st.mtp_cache.margin
        if total > 2 * need:
            h = torch.cat(st.pending, dim=1)[:, -need:]
            st.pending_start += total - h.shape[1]
            st.pending = [h]

    def truncate(self, seq: Sequence, n: int) -> None:
        st: TorchState = seq.state
        st.cache.truncate(n)
        del seq.ids[n:]
        if st.mtp_cache is not None:
            # MTP entry p reads token p and main hidden p-1: entries and hidden states >= n go.
            if n < st.mtp_cache.layers[0].start:  # a restarted MTP cache that began after n
                st.mtp_cache = KVCache.for_mtp(self.config, st.mtp_cache.margin, self._kv)
            elif st.mtp_cache.length > n:
                try:
                    st.mtp_cache.truncate(n)
                except CacheError:
                    st.mtp_cache = KVCache.for_mtp(self.config, st.mtp_cache.margin, self._kv)
            if st.pending:
                keep = max(0, n - st.pending_start)
                st.pending = [torch.cat(st.pending, dim=1)[:, :keep]] if keep else []

    def lowest_truncation(self, seq: Sequence) -> int:
        return seq.state.cache.lowest_truncation()

    def fork(self, seq: Sequence) -> Sequence:
        """A copy sharing the full layers' pages; sliding layers and pending hidden states are copied."""
        st: TorchState = seq.state
        state = TorchState(
            st.cache.fork(),
            st.mtp_cache.fork() if st.mtp_cache is not None else None,
            [h.clone() for h in st.pending],
            st.pending_start,
        )
        return Sequence(list(seq.ids), state)

    def nbytes(self, seq: Sequence) -> int:
        st: TorchState = seq.state
        main = st.cache.allocated_bytes() + (
            st.mtp_cache.allocated_bytes() if st.mtp_cache is not None else 0
        )
        return main + sum(h.numel() * h.element_size() for h in st.pending)

    def compact(self, seq: Sequence) -> None:
        seq.state.cache.compact()
        if seq.state.mtp_cache is not None:
            seq.state.mtp_cache.compact()

    @torch.inference_mode()
    def draft(self, seq: Sequence, next_token: int, n: int) -> list[int]:
        """Up to ``n`` greedy drafts of the tokens after ``next_token`` (the main model's next token).

        MTP entry p combines token p with the main model's hidden state at p-1 and predicts
        token p+1. The cache first catches up on every position up to ``len(seq.ids)`` (whose
        token is ``next_token``); further drafts chain the layer on its own hidden state and
        are dropped from the MTP cache afterwards, since the main model has not confirmed them.
        """
        st: TorchState = seq.state
        end = len(seq.ids)
        if st.mtp_cache is None or n <= 0 or end == 0 or not st.pending:
            return []
        mtp, model = self.model.mtp, self.model
        if st.mtp_cache.length > end:  # drafted twice without a forward in between
            st.mtp_cache.truncate(end)
        self._threads_for(end - st.mtp_cache.length + 1)
        hidden = torch.cat(st.pending, dim=1)  # main hidden of positions pending_start .. end-1
        st.pending = [hidden]
        m0 = st.mtp_cache.length
        if m0 - 1 < st.pending_start:  # the hidden states it needs are gone: restart the MTP cache
            m0 = st.pending_start + 1
            st.mtp_cache = KVCache(
                [self.config.window_of(self.config.mtp.layer_type)],
                st.mtp_cache.margin,
                offset=m0,
                dtype=self._kv,
            )
        toks = torch.tensor([seq.ids[m0:end] + [next_token]], dtype=torch.long)
        h_in = hidden[:, m0 - 1 - st.pending_start : end - st.pending_start]
        logits, h, _ = mtp(model, toks, h_in, torch.arange(m0, end + 1)[None], st.mtp_cache, logits_to_keep=1)
        drafts = [int(logits[0, -1].argmax())]
        h = h[:, -1:]
        for i in range(1, n):
            pos = torch.tensor([[end + i]])
            logits, h, _ = mtp(model, torch.tensor([[drafts[-1]]]), h, pos, st.mtp_cache, logits_to_keep=1)
            drafts.append(int(logits[0, -1].argmax()))
        st.mtp_cache.truncate(end + 1)
        return drafts
