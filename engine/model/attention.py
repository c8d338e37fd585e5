"""Grouped-query attention with per-head q/k RMSNorm, rotary, and an optional sliding window.

Legend: B = batch, T = new tokens, S = keys visible (cached + new), H = query heads,
K = KV heads, D = head dim. Keys are stored after rotary, as transformers stores them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import MellumConfig
from .kv import LayerKV
from .norm import RMSNorm
from .rope import apply_rotary


def attention_mask(
    q_start: int, t: int, k_start: int, s: int, window: int | None, device
) -> torch.Tensor | None:
    """Boolean (T, S) mask, True where query position q may see key position k; None when all may.

    A query at position q sees keys q-window+1 .. q (``window`` keys, itself included) or every
    earlier key when ``window`` is None.
    """
    q_pos = torch.arange(q_start, q_start + t, device=device)[:, None]
    k_pos = torch.arange(k_start, k_start + s, device=device)[None, :]
    if t == 1 and k_start + s - 1 <= q_start and (window is None or k_start > q_start - window):
        return None
    allowed = k_pos <= q_pos
    if window is not None:
        allowed &= k_pos > q_pos - window
    return allowed


class Attention(nn.Module):
    def __init__(self, config: MellumConfig, layer_type: str) -> None:
        super().__init__()
        self.layer_type = layer_type
        self.window = config.window_of(layer_type)
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
        )
        h = config.hidden_size
        self.q_proj = nn.Linear(h, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(h, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, h, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)  # per head, over D only
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos_sin: tuple[torch.Tensor, torch.Tensor],
        position0: int,
        kv: LayerKV | None,
    ) -> torch.Tensor:
        """x (B, T, hidden) at positions position0.. -> (B, T, hidden). ``kv`` None: no cache (training)."""
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, self.num_heads, self.head_dim)).transpose(
            1, 2
        )  # (B, H, T, D)
        k = self.k_norm(self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)).transpose(
            1, 2
        )  # (B, K, T, D)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos_sin
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv is None:
            k_start = position0
        else:
            k, v, k_start = kv.append(k, v)  # (B, K, S, D)
            # Only the keys some query of this block can see take part.
            if self.window is not None and position0 - self.window + 1 > k_start:
                skip = position0 - self.window + 1 - k_start
                k, v, k_start = k[:, :, skip:], v[:, :, skip:], k_start + skip
        mask = attention_mask(position0, t, k_start, k.shape[2], self.window, x.device)
        if kv is None and self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # (B, H, T, D)
        if kv is not None:
            kv.trim()
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))
