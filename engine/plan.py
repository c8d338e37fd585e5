"""Memory and compute plan of a Mellum config: weight bytes per dtype, KV bytes, active parameters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .model.config import PRESETS, MellumConfig, from_hf

BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}


@dataclass(frozen=True)
class Plan:
    total_params: int
    mtp_params: int
    active_params: int  # touched per token by the main model: embedding row, attention, k experts, lm_head
    weight_bytes: dict[str, int]
    kv_bytes_windowed: int
    kv_bytes_full: int
    context: int
    kv_dtype_bytes: int


def _attn_params(c: MellumConfig) -> int:
    return (
        c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
        + 2 * c.head_dim
        + 2 * c.hidden_size
    )


def _mlp_params(c: MellumConfig, kind: str) -> tuple[int, int]:
    """(total, active per token) parameters of one MLP block."""
    if kind == "dense":
        n = 3 * c.hidden_size * c.intermediate_size
        return n, n
    expert = 3 * c.hidden_size * c.moe.intermediate_size
    router = c.hidden_size * c.moe.num_experts
    return expert * c.moe.num_experts + router, expert * c.moe.top_k + router


def make_plan(c: MellumConfig, context: int, kv_dtype_bytes: int = 2) -> Plan:
    embed = c.vocab_size * c.hidden_size
    head = 0 if c.tie_word_embeddings else embed
    total = embed + head + c.hidden_size
    active = embed + head + c.hidden_size if head else 2 * embed + c.hidden_size  # embedding + lm_head
    for kind in c.mlp_layer_types:
        t, a = _mlp_params(c, kind)
        total += _attn_params(c) + t
        active += _attn_params(c) + a
    mtp = 0
    if c.mtp:
        t, _ = _mlp_params(c, c.mtp.mlp_type)
        mtp = _attn_params(c) + t + 2 * c.hidden_size * c.hidden_size + 3 * c.hidden_size
    per_pos_layer = 2 * c.num_kv_heads * c.head_dim * kv_dtype_bytes
    full = len(c.full_layers) * context * per_pos_layer
    sliding = len(c.sliding_layers) * min(context, c.sliding_window) * per_pos_layer
    weights = {k: int((total + mtp) * v) for k, v in BYTES_PER_PARAM.items()}
    return Plan(
        total,
        mtp,
        active,
        weights,
        full + sliding,
        c.num_layers * context * per_pos_layer,
        context,
        kv_dtype_bytes,
    )


def load_config(spec: str) -> MellumConfig:
    if spec in PRESETS:
        return from_hf(PRESETS[spec])
    path = Path(spec)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a model folder/config.json"
        )
    return from_hf(json.loads(path.read_text()))


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e8 else f"{n / 1e6:,.2f} MB"


def format_plan(p: Plan, name: str) -> str:
    lines = [
        f"plan for {name} at {p.context:,} tokens of context",
        f"  parameters: {p.total_params:,} main + {p.mtp_params:,} MTP; active per token: {p.active_params:,}",
        "  weights:    " + ", ".join(f"{k} {_gb(v)}" for k, v in p.weight_bytes.items()),
        f"  KV cache ({8 * p.kv_dtype_bytes}-bit): {_gb(p.kv_bytes_windowed)} with sliding layers windowed,"
        f" {_gb(p.kv_bytes_full)} if every layer kept every token",
    ]
    return "\n".join(lines)
