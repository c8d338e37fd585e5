"""Tiny random Mellum checkpoints built with transformers, the reference our code is tested against.

``make_checkpoint`` writes a folder with ``save_pretrained`` and adds a random MTP layer in the
real ``mtp.*`` layout; ``hf_mtp`` loads that layer with transformers' own ``MtpModel``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

SLIDING, FULL = "sliding_attention", "full_attention"


# Architecture variants every parity check covers (overrides of ``tiny_hf_config``).
VARIANTS = {
    "yarn_full_only": {},
    "tied_top1": dict(tie_word_embeddings=True, num_experts_per_tok=1),
    "all_sparse_all_full_rope_default": dict(
        mlp_layer_types=["sparse"] * 4,
        layer_types=[FULL, SLIDING, FULL, SLIDING],
        rope_parameters={
            FULL: {"rope_type": "default", "rope_theta": 500000.0},
            SLIDING: {
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 2.0,
                "original_max_position_embeddings": 64,
            },
        },
    ),
    "dense_mtp_full_no_norm_topk": dict(
        mtp_layer_types=[FULL], mtp_mlp_layer_types=["dense"], norm_topk_prob=False, num_experts_per_tok=3
    ),
}


def tiny_hf_config(**overrides):
    from transformers import MellumConfig

    kw = dict(
        vocab_size=160,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=8,
        moe_intermediate_size=32,
        num_experts=6,
        num_experts_per_tok=2,
        layer_types=[SLIDING, SLIDING, SLIDING, FULL],
        mlp_layer_types=["dense", "sparse", "sparse", "sparse"],
        max_position_embeddings=512,
        rope_parameters={
            FULL: {
                "rope_type": "yarn",
                "rope_theta": 500000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 128,
            },
            SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
        },
        num_mtp_layers=1,
        mtp_layer_types=[SLIDING],
        mtp_mlp_layer_types=["sparse"],
        tie_word_embeddings=False,
    )
    kw.update(overrides)
    return MellumConfig(**kw)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Give every weight, norms included, a random value so that no term of the forward is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 / p.shape[-1] ** 0.5))


def _mtp_checkpoint_names(hf_mtp_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' MtpModel state dict -> Mellum's on-disk ``mtp.*`` names, experts split."""
    out = {}
    for name, t in hf_mtp_state.items():
        if name.startswith(("embed_tokens", "shared_head")):
            continue
        n = name.replace("layers.0.eh_proj.", "fc.").replace("layers.0.enorm.", "pre_fc_norm_embedding.")
        n = n.replace("layers.0.hnorm.", "pre_fc_norm_hidden.").replace("layers.0.post_norm.", "norm.")
        n = n.replace("layers.0.mtp_block.", "layers.0.")
        if n.endswith("mlp.experts.gate_up_proj"):
            base = n[: -len("gate_up_proj")]
            for e in range(t.shape[0]):
                g, u = t[e].chunk(2, dim=0)
                out[f"mtp.{base}{e}.gate_proj.weight"] = g.contiguous()
                out[f"mtp.{base}{e}.up_proj.weight"] = u.contiguous()
        elif n.endswith("mlp.experts.down_proj"):
            base = n[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"mtp.{base}{e}.down_proj.weight"] = t[e].contiguous()
        else:
            out["mtp." + n] = t.contiguous()
    return out


def make_checkpoint(folder: Path, seed: int = 0, with_mtp: bool = True, **overrides) -> Path:
    """Save a random tiny MellumForCausalLM (+ MTP layer) to ``folder``; returns the folder."""
    from safetensors.torch import load_file, save_file
    from transformers import MellumForCausalLM
    from transformers.modeling_layers import MtpModel

    torch.manual_seed(seed)
    config = tiny_hf_config(**overrides)
    model = MellumForCausalLM(config)
    _randomise(model, seed)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(folder)
    if with_mtp and config.num_mtp_layers:
        mtp = MtpModel(model, 1)
        _randomise(mtp.layers, seed + 1)
        state = load_file(str(folder / "model.safetensors"))
        state.update(_mtp_checkpoint_names(mtp.state_dict()))
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def hf_model(folder: Path):
    from transformers import MellumForCausalLM

    return MellumForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def hf_mtp(model):
    from transformers.modeling_layers import MtpModel

    return MtpModel.from_pretrained(model).eval()


def config_json(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())
