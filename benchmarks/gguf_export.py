"""Convert a Mellum model folder to a GGUF of llama.cpp's native ``mellum`` architecture.

    python -m benchmarks.gguf_export MODEL_DIR OUT.gguf [--qtype q8_0|q4_0|f32] [--layout exact|timing]

Offers ``export_gguf(model_dir, out, qtype, layout) -> GgufReport``, ``GgufReport``, ``QTYPES``,
``LAYOUTS`` and ``GgufExportError``. Needs the ``gguf`` package (the ``peers`` extra); reads the
safetensors with numpy, never torch.

What llama.cpp's ``mellum`` graph (llama-cpp-python 0.3.36) expects, read from its
``src/models/mellum.cpp``: every layer is a mixture of experts with softmax routing, top-k and
renormalised weights (``norm_w`` is hard-wired on), one expert width for all layers (the
``expert_feed_forward_length`` of layer 0), per-head q/k RMSNorm, NEOX (rotate-half) rotary,
sliding layers from ``sliding_window_pattern`` with ``rope.freq_base_swa`` and no YaRN, YaRN on
the full layers, and an ``output.weight`` of its own (tied embeddings are written twice).

It has no dense-MLP layer, so a config whose ``mlp_layer_types`` has ``dense`` entries (the
embedded model's layer 0) is written in one of two layouts:

- ``exact``: the expert width is the widest MLP; a dense layer becomes ``num_experts`` copies of
  its MLP behind a zero router (tied scores, renormalised top-k weights sum to 1: the output is
  the MLP's), sparse experts are zero-padded (silu(0) * 0 = 0). Same function as the model, but
  llama.cpp does (width / moe width) times the expert work -- use it for agreement, not speed.
- ``timing``: the expert width is the model's; a dense layer's MLP is cut into width-sized slices
  that become its experts, routed by the nearest sparse layer's router (a trained one: no ties,
  a realistic spread of experts). Its output is NOT the model's. Per-token work of the sparse
  layers is the model's; the dense layer costs llama.cpp top_k x width instead of the full MLP,
  so speed comparisons against it lean in llama.cpp's favour.

Tensor types: 1-D norms and the routers (``ffn_gate_inp``) stay F32 (as llama-quantize leaves
them); every other matrix takes ``qtype``, except ``output.weight`` which stays Q8_0 in a Q4_0
file (llama-quantize would use Q6_K, which the ``gguf`` package cannot write).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.model.config import FULL, SLIDING, ConfigError, MellumConfig, from_hf

ARCH = "mellum"
QTYPES = ("q8_0", "q4_0", "f32")
LAYOUTS = ("exact", "timing")


class GgufExportError(ValueError):
    """A model folder or option that cannot be written as a llama.cpp ``mellum`` GGUF."""


@dataclass(frozen=True)
class GgufReport:
    """What ``export_gguf`` wrote."""

    path: str
    qtype: str
    layout: str
    bytes: int
    tensors: int
    expert_width: int  # the expert_feed_forward_length llama.cpp uses for every layer
    dense_layers: tuple[int, ...]  # layers whose dense MLP was rewritten as experts (see ``layout``)


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise GgufExportError(
            f"writing a GGUF needs the gguf package ({e}): pip install 'mellum-lsp[peers]'"
        ) from None
    return gguf


class _Weights:
    """The safetensors of a model folder (sharded or not), read as fp32 numpy arrays."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise GgufExportError(f"no *.safetensors in {folder}")
        self._where: dict[str, object] = {}
        for f in files:
            handle = safe_open(str(f), framework="np")
            for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                self._where[name] = handle
        self.folder = folder

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> np.ndarray:
        if name not in self._where:
            raise GgufExportError(f"{self.folder}: tensor {name!r} is missing")
        return np.asarray(self._where[name].get_tensor(name), dtype=np.float32)


def _expert_width(c: MellumConfig, layout: str) -> int:
    dense = [c.intermediate_size for t in c.mlp_layer_types if t == "dense"]
    if layout == "exact":
        return max([c.moe.intermediate_size, *dense])
    for width in dense:
        if width % c.moe.intermediate_size:
            raise GgufExportError(
                f"layout 'timing' cuts the dense MLP ({width}) into experts of {c.moe.intermediate_size}: "
                "it must be a multiple; use layout 'exact'"
            )
    return c.moe.intermediate_size


def _layer_mlp(w: _Weights, c: MellumConfig, i: int, width: int, layout: str) -> dict[str, np.ndarray]:
    """Router and stacked experts of layer ``i`` in llama.cpp's shapes (numpy order, ggml's reversed):
    gate_inp (E, H), gate/up (E, width, H), down (E, H, width)."""
    p = f"model.layers.{i}.mlp"
    e, h = c.moe.num_experts, c.hidden_size
    if c.mlp_layer_types[i] == "sparse":
        f = c.moe.intermediate_size
        out = {"gate_inp": w.get(f"{p}.gate.weight")}
        for proj in ("gate", "up", "down"):
            stacked = np.stack([w.get(f"{p}.experts.{x}.{proj}_proj.weight") for x in range(e)])
            out[proj] = stacked
        if width > f:  # differs from the model's shapes only by zeros: silu(0) * 0 = 0
            pad = width - f
            out["gate"] = np.pad(out["gate"], ((0, 0), (0, pad), (0, 0)))
            out["up"] = np.pad(out["up"], ((0, 0), (0, pad), (0, 0)))
            out["down"] = np.pad(out["down"], ((0, 0), (0, 0), (0, pad)))
        return out
    gate, up, down = (w.get(f"{p}.{proj}_proj.weight") for proj in ("gate", "up", "down"))
    f = gate.shape[0]
    router = np.zeros((e, h), np.float32)  # every expert scores the same
    if layout == "exact":
        pad = width - f
        gate, up = (np.pad(a, ((0, pad), (0, 0))) for a in (gate, up))
        down = np.pad(down, ((0, 0), (0, pad)))
        return {"gate_inp": router, "gate": np.stack([gate] * e), "up": np.stack([up] * e),
                "down": np.stack([down] * e)}  # fmt: skip
    sparse = [j for j, t in enumerate(c.mlp_layer_types) if t == "sparse"]
    if sparse:  # tied scores would make the chosen slices depend on rounding, e.g. on the batch size
        router = w.get(f"model.layers.{min(sparse, key=lambda j: abs(j - i))}.mlp.gate.weight")
    slices = [slice(j * width, (j + 1) * width) for j in range(f // width)]
    pick = [slices[x % len(slices)] for x in range(e)]
    return {"gate_inp": router, "gate": np.stack([gate[s] for s in pick]), "up": np.stack([up[s] for s in pick]),
            "down": np.stack([down[:, s] for s in pick])}  # fmt: skip


def _check(c: MellumConfig) -> None:
    problems = []
    if "sparse" in c.mlp_layer_types and not c.moe.norm_topk_prob:
        problems.append(
            "norm_topk_prob is false; llama.cpp's mellum graph always renormalises the top-k weights"
        )
    if "dense" in c.mlp_layer_types and c.moe.top_k < 1:
        problems.append(f"num_experts_per_tok is {c.moe.top_k}")
    for name, rope in c.rope.items():
        if name == SLIDING and rope.rope_type != "default":
            problems.append(
                f"rope_parameters[{name!r}] is {rope.rope_type}; llama.cpp's sliding layers have no YaRN"
            )
        if rope.mscale or rope.mscale_all_dim:
            problems.append(f"rope_parameters[{name!r}] sets mscale; not mapped to llama.cpp")
    if problems:
        raise GgufExportError("cannot write a llama.cpp mellum GGUF: " + "; ".join(problems))


def _write_hparams(writer, c: MellumConfig, width: int) -> None:
    gguf = _gguf()
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_heads)
    writer.add_head_count_kv(c.num_kv_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_expert_count(c.moe.num_experts)
    writer.add_expert_used_count(c.moe.top_k)
    writer.add_expert_feed_forward_length(width)
    full = c.rope.get(FULL) or c.rope[SLIDING]
    writer.add_rope_freq_base(full.rope_theta)
    if SLIDING in c.layer_types:
        writer.add_sliding_window(c.sliding_window)
        writer.add_sliding_window_pattern([t == SLIDING for t in c.layer_types])
        writer.add_rope_freq_base_swa(c.rope[SLIDING].rope_theta)
    if full.rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(full.factor)
        writer.add_rope_scaling_orig_ctx_len(full.original_max_position_embeddings)
        if full.beta_fast is not None:
            writer.add_rope_scaling_yarn_beta_fast(full.beta_fast)
        if full.beta_slow is not None:
            writer.add_rope_scaling_yarn_beta_slow(full.beta_slow)
        if full.attention_factor is not None:
            # llama.cpp applies 1 + 0.1 ln(factor) itself and multiplies by this factor
            writer.add_rope_scaling_attn_factors(full.attention_factor / (1 + 0.1 * math.log(full.factor)))


def _write_vocab(writer, folder: Path, c: MellumConfig) -> None:
    gguf = _gguf()
    path = folder / "tokenizer.json"
    try:
        tok = json.loads(path.read_text())
        vocab, merges = tok["model"]["vocab"], tok["model"]["merges"]
    except (OSError, ValueError, KeyError) as e:
        raise GgufExportError(f"{path}: cannot read a BPE vocabulary ({e})") from None
    special = {t["id"]: t["content"] for t in tok.get("added_tokens", [])}
    tokens = [f"[PAD{i}]" for i in range(c.vocab_size)]
    types = [gguf.TokenType.UNUSED] * c.vocab_size
    for text, i in vocab.items():
        if i < c.vocab_size:
            tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for i, text in special.items():
        if i < c.vocab_size:
            tokens[i], types[i] = text, gguf.TokenType.CONTROL
    writer.add_tokenizer_model("gpt2")
    # The benchmark feeds token ids; llama.cpp's own text tokenisation would differ from ours
    # (our pre-tokenizer isolates newline runs and digits before the GPT-2 regex).
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    if c.eos_token_id:
        writer.add_eos_token_id(c.eos_token_id[0])
    if c.pad_token_id is not None:
        writer.add_pad_token_id(c.pad_token_id)
    writer.add_add_bos_token(False)


def _add(writer, name: str, a: np.ndarray, qtype: str) -> None:
    gguf = _gguf()
    if a.ndim == 1 or qtype == "f32" or name.endswith("ffn_gate_inp.weight"):
        writer.add_tensor(name, np.ascontiguousarray(a, np.float32))
        return
    kind = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[qtype]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    if a.shape[-1] % block:
        raise GgufExportError(
            f"{name}: rows of {a.shape[-1]} values do not split into {qtype} blocks of {block}"
        )
    writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(a, np.float32), kind), raw_dtype=kind)


def export_gguf(
    model_dir: str | Path, out: str | Path, qtype: str = "q8_0", layout: str = "exact"
) -> GgufReport:
    """Write ``model_dir`` (HF layout, safetensors) as a llama.cpp ``mellum`` GGUF at ``out``."""
    gguf = _gguf()
    folder, out = Path(model_dir), Path(out)
    if qtype not in QTYPES:
        raise GgufExportError(f"qtype {qtype!r} is not one of {QTYPES}")
    if layout not in LAYOUTS:
        raise GgufExportError(f"layout {layout!r} is not one of {LAYOUTS}")
    try:
        c = from_hf(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError, ConfigError) as e:
        raise GgufExportError(f"{folder / 'config.json'}: {e}") from None
    _check(c)
    width = _expert_width(c, layout)
    w = _Weights(folder)
    names = gguf.TENSOR_NAMES
    t = gguf.MODEL_TENSOR
    writer = gguf.GGUFWriter(str(out), ARCH)
    writer.add_name(folder.name)
    _write_hparams(writer, c, width)
    _write_vocab(writer, folder, c)
    file_type = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
                 "f32": gguf.LlamaFileType.ALL_F32}[qtype]  # fmt: skip
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    embed = w.get("model.embed_tokens.weight")
    head = embed if c.tie_word_embeddings or "lm_head.weight" not in w else w.get("lm_head.weight")
    count = 0

    def add(name: str, a: np.ndarray, q: str = qtype) -> None:
        nonlocal count
        _add(writer, name, a, q)
        count += 1

    add(names[t.TOKEN_EMBD] + ".weight", embed)
    add(names[t.OUTPUT_NORM] + ".weight", w.get("model.norm.weight"))
    add(names[t.OUTPUT] + ".weight", head, "q8_0" if qtype == "q4_0" else qtype)  # llama.cpp wants its own
    attn = {t.ATTN_NORM: "input_layernorm", t.ATTN_Q: "self_attn.q_proj", t.ATTN_K: "self_attn.k_proj",
            t.ATTN_V: "self_attn.v_proj", t.ATTN_OUT: "self_attn.o_proj", t.ATTN_Q_NORM: "self_attn.q_norm",
            t.ATTN_K_NORM: "self_attn.k_norm", t.FFN_NORM: "post_attention_layernorm"}  # fmt: skip
    moe = {t.FFN_GATE_INP: "gate_inp", t.FFN_GATE_EXP: "gate", t.FFN_UP_EXP: "up", t.FFN_DOWN_EXP: "down"}
    for i in range(c.num_layers):
        for kind, hf in attn.items():
            add(names[kind].format(bid=i) + ".weight", w.get(f"model.layers.{i}.{hf}.weight"))
        mlp = _layer_mlp(w, c, i, width, layout)
        for kind, key in moe.items():
            add(names[kind].format(bid=i) + ".weight", mlp[key])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    dense = tuple(i for i, m in enumerate(c.mlp_layer_types) if m == "dense")
    return GgufReport(str(out), qtype, layout, out.stat().st_size, count, width, dense)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gguf_export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("model", help="model folder (config.json, tokenizer.json, *.safetensors)")
    p.add_argument("out", help="the .gguf file to write")
    p.add_argument("--qtype", default="q8_0", choices=QTYPES)
    p.add_argument("--layout", default="exact", choices=LAYOUTS)
    a = p.parse_args(argv)
    try:
        r = export_gguf(a.model, a.out, a.qtype, a.layout)
    except GgufExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r.__dict__, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
