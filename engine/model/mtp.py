"""The multi-token-prediction (MTP) layer, used as the speculative-decoding draft.

Matches transformers' ``MtpModel`` with Mellum's checkpoint layout (``mtp.*``): the embedding of
token p+1 and the main model's final hidden state at p are normed separately, concatenated,
projected back to the hidden size (``fc``), run through one decoder block typed by
``mtp_layer_types``/``mtp_mlp_layer_types`` and normed; the main model's lm_head gives the logits
for token p+2. Embeddings and lm_head are shared with the main model; the block has its own KV cache.
"""

from __future__ import annotations

import torch
from torch import nn

from .block import DecoderLayer, check_positions
from .config import MellumConfig
from .kv import KVCache
from .norm import RMSNorm


class MtpLayer(nn.Module):
    def __init__(self, config: MellumConfig) -> None:
        super().__init__()
        assert config.mtp is not None
        h = config.hidden_size
        self.layer_type = config.mtp.layer_type
        self.pre_fc_norm_embedding = RMSNorm(h, config.rms_norm_eps)
        self.pre_fc_norm_hidden = RMSNorm(h, config.rms_norm_eps)
        self.fc = nn.Linear(2 * h, h, bias=False)
        self.layers = nn.ModuleList([DecoderLayer(config, config.mtp.layer_type, config.mtp.mlp_type)])
        self.norm = RMSNorm(h, config.rms_norm_eps)

    def hidden_states(
        self,
        model: nn.Module,
        next_ids: torch.Tensor,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """next_ids, positions (B, T): token p+1 at position p+1; hidden (B, T, H): the main model's at p.

        Returns the MTP hidden state (B, T, H), normed, and the block's router logits (or None).
        """
        position0 = check_positions(positions, cache)
        e = model.embed_tokens(next_ids)
        x = self.fc(torch.cat([self.pre_fc_norm_embedding(e), self.pre_fc_norm_hidden(hidden)], dim=-1))
        cos_sin = model.rope.cos_sin(positions, self.layer_type, x.dtype)
        x, router_logits = self.layers[0](x, cos_sin, position0, None if cache is None else cache.layers[0])
        return self.norm(x), router_logits

    def forward(
        self,
        model: nn.Module,
        next_ids: torch.Tensor,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Draft logits for token p+2 (the last ``logits_to_keep`` positions, 0 = all), hidden, router logits."""
        x, router_logits = self.hidden_states(model, next_ids, hidden, positions, cache)
        kept = x if logits_to_keep == 0 else x[:, -logits_to_keep:]
        return model.lm_head(kept), x, router_logits
