"""Rotary position embeddings per attention layer type: ``default`` and ``yarn``.

Mellum 2 gives each layer type its own rotary parameters (``rope_parameters[layer_type]``), so
YaRN can sit on the full-attention layers while sliding layers keep plain RoPE ("layer-selective
YaRN"). Offers ``inv_freq_and_scale`` (the frequencies of one type), ``RotaryTables`` (all types of
a config) and ``apply_rotary`` (rotate-half, not interleaved).
"""

from __future__ import annotations

import math

import torch

from .config import MellumConfig, RopeConfig


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def inv_freq_and_scale(rope: RopeConfig, head_dim: int, max_positions: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (head_dim/2,) and the factor applied to cos/sin, as transformers computes them."""
    dim = head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.float, device="cpu") / dim
    if rope.rope_type == "default":
        return 1.0 / (rope.rope_theta**exponents), 1.0
    # YaRN (https://arxiv.org/abs/2309.00071): interpolate low frequencies, keep high ones.
    base = rope.rope_theta
    original = rope.original_max_position_embeddings
    factor = rope.factor if rope.factor is not None else max_positions / original
    if rope.attention_factor is not None:
        attention_factor = rope.attention_factor
    elif rope.mscale and rope.mscale_all_dim:
        attention_factor = _yarn_mscale(factor, rope.mscale) / _yarn_mscale(factor, rope.mscale_all_dim)
    else:
        attention_factor = _yarn_mscale(factor)
    beta_fast = rope.beta_fast or 32
    beta_slow = rope.beta_slow or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1 where the frequency is high enough to extrapolate
    return interpolation * (1 - keep) + extrapolation * keep, float(attention_factor)


class RotaryTables:
    """Frequencies of every layer type of a config; ``cos_sin`` turns positions into (cos, sin)."""

    def __init__(self, config: MellumConfig) -> None:
        self.head_dim = config.head_dim
        self._freqs = {
            name: inv_freq_and_scale(rope, config.head_dim, config.max_position_embeddings)
            for name, rope in config.rope.items()
        }

    def cos_sin(
        self, positions: torch.Tensor, layer_type: str, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) -> cos, sin (B, T, head_dim) in ``dtype``, computed in fp32."""
        inv_freq, scale = self._freqs[layer_type]
        freqs = positions[..., None].float() * inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)

    def table(self, max_positions: int, layer_type: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Half-width cos/sin caches (max_positions, head_dim/2), the layout ONNX Runtime's rotary takes."""
        inv_freq, scale = self._freqs[layer_type]
        freqs = torch.arange(max_positions, dtype=torch.float32, device="cpu")[:, None] * inv_freq
        return freqs.cos() * scale, freqs.sin() * scale


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, D); cos/sin (B, T, D)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin
