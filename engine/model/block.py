"""One decoder block (attention + dense or sparse MLP, pre-norm residuals) and position checks."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .config import MellumConfig
from .kv import CacheError, KVCache
from .moe import MLP, SparseMoE
from .norm import RMSNorm


class DecoderLayer(nn.Module):
    def __init__(self, config: MellumConfig, layer_type: str, mlp_type: str) -> None:
        super().__init__()
        self.layer_type = layer_type
        self.self_attn = Attention(config, layer_type)
        self.mlp = (
            SparseMoE(config) if mlp_type == "sparse" else MLP(config.hidden_size, config.intermediate_size)
        )
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos_sin, position0, kv) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x + self.self_attn(self.input_layernorm(x), cos_sin, position0, kv)
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, SparseMoE):
            out, router_logits = self.mlp(h)
            return x + out, router_logits
        return x + self.mlp(h), None


def check_positions(positions: torch.Tensor, cache: KVCache | None) -> int:
    """The first position of a contiguous block; with a cache it must continue the cache."""
    position0 = int(positions[0, 0])
    if cache is not None and position0 != cache.length:
        raise CacheError(f"positions start at {position0} but the cache holds {cache.length} tokens")
    return position0
