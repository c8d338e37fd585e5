"""Typed configuration of the Mellum 2 architecture, read from a Hugging Face ``config.json``.

Offers ``MellumConfig`` (with nested ``MoEConfig``, ``RopeConfig`` and ``MtpConfig``), ``from_hf``
to build it from a config dict, and ``to_hf`` to write one back. Every architecture switch is an
explicit per-layer field (``layer_types``, ``mlp_layer_types``); nothing is inferred from sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ATTENTION_TYPES = ("sliding_attention", "full_attention")
SLIDING, FULL = ATTENTION_TYPES
EXPORT_METADATA_KEY = (
    "mellum.export"  # the ONNX metadata entry `mellum-lsp export` writes and the ORT backend reads
)
MLP_TYPES = ("dense", "sparse")
ROPE_TYPES = ("default", "yarn")


class ConfigError(ValueError):
    """A config.json that does not describe a Mellum model we can run."""


class CacheError(RuntimeError):
    """A KV-cache operation that the held positions cannot serve (any backend)."""


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one attention layer type (HF ``rope_parameters[layer_type]``)."""

    rope_type: str = "default"
    rope_theta: float = 10000.0
    # YaRN only:
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    attention_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int = 64
    top_k: int = 8
    intermediate_size: int = 896
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.001


@dataclass(frozen=True)
class MtpConfig:
    """The single multi-token-prediction layer: its attention type and its MLP type."""

    layer_type: str = "sliding_attention"
    mlp_type: str = "sparse"


@dataclass(frozen=True)
class MellumConfig:
    vocab_size: int = 98304
    hidden_size: int = 2304
    intermediate_size: int = 7168
    num_layers: int = 28
    num_heads: int = 32
    num_kv_heads: int = 4
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 131072
    sliding_window: int = 1024
    tie_word_embeddings: bool = False
    layer_types: tuple[str, ...] = ()
    mlp_layer_types: tuple[str, ...] = ()
    rope: dict[str, RopeConfig] = field(default_factory=dict)
    moe: MoEConfig = field(default_factory=MoEConfig)
    mtp: MtpConfig | None = None
    bos_token_id: int | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if len(self.layer_types) != self.num_layers:
            problems.append(
                f"layer_types has {len(self.layer_types)} entries, expected num_hidden_layers={self.num_layers}"
            )
        if len(self.mlp_layer_types) != self.num_layers:
            problems.append(
                f"mlp_layer_types has {len(self.mlp_layer_types)} entries, expected num_hidden_layers={self.num_layers}"
            )
        for t in set(self.layer_types) | ({self.mtp.layer_type} if self.mtp else set()):
            if t not in ATTENTION_TYPES:
                problems.append(f"unknown attention layer type {t!r} (expected one of {ATTENTION_TYPES})")
            elif t not in self.rope:
                problems.append(f"rope_parameters has no entry for layer type {t!r}")
        for t in set(self.mlp_layer_types) | ({self.mtp.mlp_type} if self.mtp else set()):
            if t not in MLP_TYPES:
                problems.append(f"unknown mlp layer type {t!r} (expected one of {MLP_TYPES})")
        if self.num_heads % self.num_kv_heads:
            problems.append(
                f"num_attention_heads ({self.num_heads}) must be divisible by num_key_value_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            problems.append(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if "sparse" in self.mlp_layer_types and not 1 <= self.moe.top_k <= self.moe.num_experts:
            problems.append(
                f"num_experts_per_tok ({self.moe.top_k}) must be between 1 and num_experts ({self.moe.num_experts})"
            )
        if self.sliding_window < 1 and "sliding_attention" in self.layer_types:
            problems.append(f"sliding_window must be >= 1, got {self.sliding_window}")
        for name, rope in self.rope.items():
            if rope.rope_type not in ROPE_TYPES:
                problems.append(
                    f"rope_parameters[{name!r}].rope_type {rope.rope_type!r} is not supported {ROPE_TYPES}"
                )
            if rope.rope_type == "yarn" and not rope.original_max_position_embeddings:
                problems.append(
                    f"rope_parameters[{name!r}] is yarn but has no original_max_position_embeddings"
                )
        if problems:
            raise ConfigError("invalid Mellum config: " + "; ".join(problems))

    @property
    def kv_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def full_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "full_attention"]

    @property
    def sliding_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "sliding_attention"]

    def window_of(self, layer_type: str) -> int | None:
        """Keys a query sees in a layer of this type (itself included); None means all."""
        return self.sliding_window if layer_type == "sliding_attention" else None


def _rope_from_hf(d: dict[str, Any]) -> RopeConfig:
    if d.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(
            f"partial_rotary_factor={d['partial_rotary_factor']} is not supported (Mellum rotates all dims)"
        )
    known = {f.name for f in dataclasses.fields(RopeConfig)}
    unknown = set(d) - known - {"partial_rotary_factor"}
    if unknown:
        raise ConfigError(f"unknown rope_parameters keys {sorted(unknown)}")
    return RopeConfig(**{k: v for k, v in d.items() if k in known})


def from_hf(d: dict[str, Any]) -> MellumConfig:
    """Build a config from a Hugging Face config dict (``model_type`` must be ``mellum``)."""
    if d.get("model_type") != "mellum":
        raise ConfigError(f"model_type is {d.get('model_type')!r}, expected 'mellum'")
    n = d.get("num_hidden_layers", 28)
    rope_params = d.get("rope_parameters") or {
        "full_attention": {"rope_type": "default", "rope_theta": 500000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    }
    if "rope_type" in rope_params:  # one entry for every layer type
        rope_params = {t: rope_params for t in ATTENTION_TYPES}
    mtp = None
    n_mtp = d.get("num_nextn_predict_layers", d.get("num_mtp_layers")) or 0
    if n_mtp > 1:
        raise ConfigError(f"Mellum supports a single MTP layer, got num_nextn_predict_layers={n_mtp}")
    if n_mtp == 1:
        mtp = MtpConfig(
            layer_type=(d.get("mtp_layer_types") or ["sliding_attention"])[0],
            mlp_type=(d.get("mtp_mlp_layer_types") or ["sparse"])[0],
        )
    eos = d.get("eos_token_id")
    head_dim = d.get("head_dim") or d.get("hidden_size", 2304) // d.get("num_attention_heads", 32)
    return MellumConfig(
        vocab_size=d.get("vocab_size", 98304),
        hidden_size=d.get("hidden_size", 2304),
        intermediate_size=d.get("intermediate_size", 7168),
        num_layers=n,
        num_heads=d.get("num_attention_heads", 32),
        num_kv_heads=d.get("num_key_value_heads", 4),
        head_dim=head_dim,
        rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        max_position_embeddings=d.get("max_position_embeddings", 131072),
        sliding_window=d.get("sliding_window") or 1024,
        tie_word_embeddings=d.get("tie_word_embeddings", False),
        layer_types=tuple(d.get("layer_types") or ["full_attention"] * n),
        mlp_layer_types=tuple(d.get("mlp_layer_types") or ["sparse"] * n),
        rope={k: _rope_from_hf(v) for k, v in rope_params.items() if v is not None},
        moe=MoEConfig(
            num_experts=d.get("num_local_experts", d.get("num_experts", 64)),
            top_k=d.get("num_experts_per_tok", 8),
            intermediate_size=d.get("moe_intermediate_size", 896),
            norm_topk_prob=d.get("norm_topk_prob", True),
            router_aux_loss_coef=d.get("router_aux_loss_coef", 0.001),
        ),
        mtp=mtp,
        bos_token_id=d.get("bos_token_id"),
        eos_token_id=tuple(eos if isinstance(eos, list) else ([] if eos is None else [eos])),
        pad_token_id=d.get("pad_token_id"),
    )


def to_hf(c: MellumConfig) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict for this config (loadable by transformers' MellumConfig)."""
    d: dict[str, Any] = {
        "architectures": ["MellumForCausalLM"],
        "model_type": "mellum",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "sliding_window": c.sliding_window,
        "tie_word_embeddings": c.tie_word_embeddings,
        "layer_types": list(c.layer_types),
        "mlp_layer_types": list(c.mlp_layer_types),
        "rope_parameters": {
            k: {
                f: v
                for f, v in dataclasses.asdict(r).items()
                if v is not None and not (f == "truncate" and v)
            }
            for k, r in c.rope.items()
        },
        "num_local_experts": c.moe.num_experts,
        "num_experts_per_tok": c.moe.top_k,
        "moe_intermediate_size": c.moe.intermediate_size,
        "norm_topk_prob": c.moe.norm_topk_prob,
        "router_aux_loss_coef": c.moe.router_aux_loss_coef,
        "attention_bias": False,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": list(c.eos_token_id) if len(c.eos_token_id) != 1 else c.eos_token_id[0],
        "pad_token_id": c.pad_token_id,
    }
    if c.mtp:
        d["num_nextn_predict_layers"] = 1
        d["mtp_layer_types"] = [c.mtp.layer_type]
        d["mtp_mlp_layer_types"] = [c.mtp.mlp_type]
    return d


MELLUM2_12B_HF: dict[str, Any] = {
    # JetBrains/Mellum2-12B-A2.5B-Base as transformers 5.23 describes it (DESIGN.md §2).
    "model_type": "mellum",
    "vocab_size": 98304,
    "hidden_size": 2304,
    "intermediate_size": 7168,
    "num_hidden_layers": 28,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "sliding_window": 1024,
    "num_local_experts": 64,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 896,
    "norm_topk_prob": True,
    "max_position_embeddings": 131072,
    "layer_types": (["sliding_attention"] * 3 + ["full_attention"]) * 7,
    "mlp_layer_types": ["dense"] + ["sparse"] * 27,
    "rope_parameters": {
        "full_attention": {
            "rope_type": "yarn",
            "rope_theta": 500000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 32768,
        },
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    },
    "num_nextn_predict_layers": 1,
    "mtp_layer_types": ["sliding_attention"],
    "mtp_mlp_layer_types": ["sparse"],
}

PRESETS = {"mellum2-12b": MELLUM2_12B_HF}
