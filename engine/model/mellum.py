"""The Mellum 2 decoder: blocks typed per layer, and a pure forward over an external KV cache.

Offers ``DecoderLayer``, ``Mellum`` (embeddings, layers, final norm, lm_head, optional MTP layer)
and ``ForwardOutput``. ``Mellum.forward(input_ids, positions, cache)`` returns the logits and the
last (normed) hidden state; the cache, when given, is the only state that changes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .block import DecoderLayer, check_positions
from .config import MellumConfig
from .kv import KVCache
from .mtp import MtpLayer
from .norm import RMSNorm
from .rope import RotaryTables


class ForwardOutput(NamedTuple):
    logits: torch.Tensor  # (B, T', vocab) for the last T' positions asked for
    hidden: torch.Tensor  # (B, T, hidden) after the final norm: what the MTP layer reads
    router_logits: tuple[torch.Tensor, ...]  # per sparse layer, (B*T, E)


class Mellum(nn.Module):
    def __init__(self, config: MellumConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, t, m)
            for t, m in zip(config.layer_types, config.mlp_layer_types, strict=True)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.rope = RotaryTables(config)
        self.mtp = MtpLayer(config) if config.mtp is not None else None

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
    ) -> ForwardOutput:
        """input_ids, positions (B, T) -> logits of the last ``logits_to_keep`` positions (0 = all)."""
        position0 = check_positions(positions, cache)
        x = self.embed_tokens(input_ids)
        cos_sin = {t: self.rope.cos_sin(positions, t, x.dtype) for t in set(self.config.layer_types)}
        router_logits = []
        for i, layer in enumerate(self.layers):
            x, r = layer(x, cos_sin[layer.layer_type], position0, None if cache is None else cache.layers[i])
            if r is not None:
                router_logits.append(r)
        hidden = self.norm(x)
        kept = hidden if logits_to_keep == 0 else hidden[:, -logits_to_keep:]
        return ForwardOutput(self.lm_head(kept), hidden, tuple(router_logits))

    def new_cache(self, margin: int = 256) -> KVCache:
        return KVCache.for_model(self.config, margin)
