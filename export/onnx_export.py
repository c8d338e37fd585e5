"""Export a Mellum model to ONNX: ``model.onnx`` (the decoder) and ``mtp.onnx`` (the draft layer).

Offers ``ExportOptions``, the export-path modules ``MellumForExport`` and ``MtpForExport`` (they
reuse the weights of an ``engine.model.mellum.Mellum`` and call the custom ops of ``export.ops``
for attention and experts), ``export_decoder`` / ``export_mtp`` (torch -> ONNX IR, finalised) and
``save``. The graph contract, which ``engine.backends.ort_backend`` and onnxruntime-genai rely on:

model.onnx inputs  ``input_ids`` (B, S) int64 · ``attention_mask`` (B, L) int64 · ``position_ids``
                   (B, S) int64 · ``past_key_values.N.key/value`` (B, K, P, D) · optional with
                   defaults: ``sliding_cache_start`` [1] (0) and ``num_logits_to_keep`` [1] (0 = all)
           outputs ``logits`` (B, S', V) fp32 · ``hidden_states`` (B, S, C) after the final norm ·
                   ``present.N.key/value``
mtp.onnx   inputs  ``input_ids`` (token p+1) · ``hidden_states`` (main model's at p) ·
                   ``attention_mask`` · ``position_ids`` · ``past_key_values.0.key/value`` ·
                   ``num_logits_to_keep``; outputs ``logits`` · ``hidden_states_out`` · ``present.0.*``

Each layer's attention sees ``seqlens_k = sum(attention_mask) - 1`` and ``total = L`` (rows of its
cache buffer after the step, so a past buffer may be longer than the valid rows and shared with
the present output); sliding layers subtract ``sliding_cache_start``, the position held in row 0
of their buffers, so a runtime can pass them a window instead of the whole sequence. Rotary uses
the absolute ``position_ids``. Keys are cached after rotary.

Weights on disk: each graph is self-contained (``mtp.onnx`` holds its own copy of the embedding and
lm_head it reads, so either file loads alone, in onnxruntime-genai too); a tied embedding and
lm_head are one tensor within a graph. The rotary cos/sin caches are not stored but computed from
the frequencies by constant nodes, which ONNX Runtime folds when it loads the session (the
``--portable`` graphs keep them stored, for runtimes that would recompute them on every run).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import EXPORT_METADATA_KEY, SLIDING, MellumConfig
from engine.model.mellum import Mellum
from engine.model.rope import inv_freq_and_scale

from . import ops

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@dataclass(frozen=True)
class ExportOptions:
    dtype: str = "fp32"  # fp32 | fp16
    quant: str | None = None  # None | int8 | int4
    portable: bool = False  # standard ONNX ops only
    target: str = "cpu"  # cpu | cuda (cuda fuses the q/k RMSNorm into GroupQueryAttention)
    max_positions: int | None = None  # rows of the cos/sin caches; default max_position_embeddings

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.quant not in (None, "int8", "int4"):
            raise ValueError(f"quant must be int8 or int4, got {self.quant!r}")
        if self.target not in ("cpu", "cuda"):
            raise ValueError(f"target must be cpu or cuda, got {self.target!r}")
        if self.portable and self.quant:
            raise ValueError("--portable cannot be combined with --quant (MatMulNBits/QMoE are contrib ops)")

    @property
    def fused_qk_norm(self) -> bool:
        return self.target == "cuda" and not self.portable


class _ExportBase(nn.Module):
    """What the decoder and MTP wrappers share: rotary caches, packed weights and the layer step.

    A layer runs as: packed QKV projection -> per-head q/k RMSNorm (fused into the attention op
    for CUDA) -> ``group_query_attention`` -> o_proj -> ``add_rms_norm`` (residual add and
    post-attention norm in one op) -> dense MLP or ``moe``; the next layer's input norm (or the
    final norm) takes the MLP output and the residual the same way.
    """

    def __init__(self, model: Mellum, options: ExportOptions) -> None:
        super().__init__()
        self.model = model
        self.config: MellumConfig = model.config
        self.fused = options.fused_qk_norm
        self.eps = model.config.rms_norm_eps
        c = self.config
        n = options.max_positions or c.max_position_embeddings
        dtype = model.embed_tokens.weight.dtype
        types = set(c.layer_types) | ({c.mtp.layer_type} if c.mtp else set())
        for t in sorted(types):
            cos, sin = model.rope.table(n, t)  # half width; YaRN's attention factor is already in
            self.register_buffer(f"cos_{t}", cos.to(dtype), persistent=False)
            self.register_buffer(f"sin_{t}", sin.to(dtype), persistent=False)

    def _pack(self, name: str, layer) -> None:
        """Buffers ``qkv_<name>`` (q, k, v projections as one) and ``fc1_<name>`` (experts, interleaved)."""
        a = layer.self_attn
        qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach()
        self.register_buffer(f"qkv_{name}", qkv, persistent=False)
        if hasattr(layer.mlp, "gate_up_proj"):
            fc1 = ops.interleave_gate_up(layer.mlp.gate_up_proj.detach())
            self.register_buffer(f"fc1_{name}", fc1, persistent=False)

    def attention(self, layer, name: str, h, position_ids, past_k, past_v, seqlens, total):
        """h (B, S, C), the normed input -> attention output (B, S, C), present key, present value."""
        attn = layer.self_attn
        b, s, _ = h.shape
        nh, kv, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
        qkv = F.linear(h, getattr(self, f"qkv_{name}"))  # (B, S, (H + 2K) * D)
        if self.fused:  # GroupQueryAttention splits the packed QKV and applies the q/k norms itself
            q, k, v = qkv, None, None
            qn, kn = attn.q_norm.weight, attn.k_norm.weight
        else:  # the CPU kernel rejects the fused norm inputs: normalise with standard ops first
            q, k, v = qkv.split([nh * d, kv * d, kv * d], dim=-1)
            q = ops.rms_norm(q.reshape(b, s, nh, d), attn.q_norm.weight, self.eps).reshape(b, s, nh * d)
            k = ops.rms_norm(k.reshape(b, s, kv, d), attn.k_norm.weight, self.eps).reshape(b, s, kv * d)
            qn = kn = None
        t = layer.layer_type
        out, present_k, present_v = ops.group_query_attention(
            q,
            k,
            v,
            past_k,
            past_v,
            seqlens,
            total,
            getattr(self, f"cos_{t}"),
            getattr(self, f"sin_{t}"),
            position_ids,
            qn,
            kn,
            nh,
            kv,
            self.config.window_of(t) or -1,
            self.eps,
        )
        return attn.o_proj(out), present_k, present_v

    def mlp(self, layer, name: str, m):
        fc1 = getattr(self, f"fc1_{name}", None)
        if fc1 is None:
            return layer.mlp(m)
        b, s, c = m.shape
        flat = m.reshape(b * s, c)
        router_logits = F.linear(flat, layer.mlp.gate.weight)
        return ops.moe(
            flat, router_logits, fc1, layer.mlp.down_proj, layer.mlp.top_k, layer.mlp.normalise
        ).view(b, s, c)

    def layer_step(self, layer, name, h, residual, next_norm, position_ids, past_k, past_v, seqlens, total):
        """(normed input, residual) -> (next layer's normed input, residual, present key, value)."""
        a, present_k, present_v = self.attention(layer, name, h, position_ids, past_k, past_v, seqlens, total)
        m, residual = ops.add_rms_norm(a, residual, layer.post_attention_layernorm.weight, self.eps)
        h, residual = ops.add_rms_norm(self.mlp(layer, name, m), residual, next_norm, self.eps)
        return h, residual, present_k, present_v


def _lengths(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seqlens = (attention_mask.sum(dim=1) - 1).to(torch.int32)  # (B,)
    total = torch.full((), attention_mask.shape[1], dtype=torch.int32)
    return seqlens, total


class MellumForExport(_ExportBase):
    """The decoder as the ONNX graph computes it (see the module docstring for the contract)."""

    def __init__(self, model: Mellum, options: ExportOptions) -> None:
        super().__init__(model, options)
        for i, layer in enumerate(model.layers):
            self._pack(str(i), layer)

    def forward(self, input_ids, attention_mask, position_ids, sliding_cache_start, past_key_values):
        m = self.model
        x = m.embed_tokens(input_ids)
        seqlens, total = _lengths(attention_mask)
        start = sliding_cache_start.to(torch.int32)
        sliding = (seqlens - start, (total - start).reshape(()))
        h, residual = ops.rms_norm(x, m.layers[0].input_layernorm.weight, self.eps), x
        presents = []
        for i, layer in enumerate(m.layers):
            lengths = sliding if layer.layer_type == SLIDING else (seqlens, total)
            after = m.layers[i + 1].input_layernorm.weight if i + 1 < len(m.layers) else m.norm.weight
            past_k, past_v = past_key_values[2 * i], past_key_values[2 * i + 1]
            h, residual, pk, pv = self.layer_step(
                layer, str(i), h, residual, after, position_ids, past_k, past_v, *lengths
            )
            presents += [pk, pv]
        return (m.lm_head(h).float(), h, *presents)  # h: the hidden state after the final norm


class MtpForExport(_ExportBase):
    """The MTP layer: embed(token p+1) and the main hidden state at p -> logits for p+2, its hidden."""

    def __init__(self, model: Mellum, options: ExportOptions) -> None:
        super().__init__(model, options)
        if model.mtp is None:
            raise ValueError("this model has no MTP layer to export")
        self._pack("mtp", model.mtp.layers[0])

    def forward(self, input_ids, hidden_states, attention_mask, position_ids, past_key, past_value):
        m, mtp = self.model, self.model.mtp
        e = ops.rms_norm(m.embed_tokens(input_ids), mtp.pre_fc_norm_embedding.weight, self.eps)
        x = mtp.fc(
            torch.cat([e, ops.rms_norm(hidden_states, mtp.pre_fc_norm_hidden.weight, self.eps)], dim=-1)
        )
        seqlens, total = _lengths(attention_mask)
        layer = mtp.layers[0]
        h = ops.rms_norm(x, layer.input_layernorm.weight, self.eps)
        h, _, pk, pv = self.layer_step(
            layer, "mtp", h, x, mtp.norm.weight, position_ids, past_key, past_value, seqlens, total
        )
        return m.lm_head(h).float(), h, pk, pv


# ---------------------------------------------------------------------------------------------
# torch -> ONNX


def _export(
    module: nn.Module, args: tuple, input_names, output_names, dynamic_shapes, portable: bool
) -> ir.Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(
                module.eval(),
                args,
                dynamo=True,
                custom_translation_table=ops.translation_table(portable),
                input_names=input_names,
                output_names=output_names,
                dynamic_shapes=dynamic_shapes,
                opset_version=18,
                optimize=True,
                verbose=False,
            )
        finally:
            logging.getLogger("torch.onnx").setLevel(level)
    return program.model


def _example_kv(config: MellumConfig, dtype: torch.dtype, batch: int, past: int) -> torch.Tensor:
    return torch.zeros(batch, config.num_kv_heads, past, config.head_dim, dtype=dtype)


@torch.inference_mode(False)
def export_decoder(model: Mellum, options: ExportOptions) -> ir.Model:
    """The decoder graph, finalised (not yet quantised)."""
    c = model.config
    dtype = model.embed_tokens.weight.dtype
    wrapper = MellumForExport(model, options)
    # Example sizes >= 2 and all different, so torch.export keeps every dimension symbolic.
    batch, seq, past_full, past_sliding = 2, 3, 5, 4
    past = []
    for t in c.layer_types:
        p = past_sliding if t == SLIDING else past_full
        past += [_example_kv(c, dtype, batch, p), _example_kv(c, dtype, batch, p)]
    args = (
        torch.zeros(batch, seq, dtype=torch.long),
        torch.ones(batch, past_full + seq, dtype=torch.long),
        torch.arange(past_full, past_full + seq).expand(batch, seq).contiguous(),
        torch.zeros(1, dtype=torch.long),
        past,
    )
    B = torch.export.Dim("batch")
    S = torch.export.Dim("sequence_length")
    L = torch.export.Dim("total_sequence_length")
    P = {
        "full_attention": torch.export.Dim("past_sequence_length"),
        SLIDING: torch.export.Dim("sliding_past_length"),
    }
    kv_dims = [{0: B, 2: P[t]} for t in c.layer_types for _ in (0, 1)]
    names = [f"past_key_values.{i}.{kind}" for i in range(c.num_layers) for kind in ("key", "value")]
    outputs = [f"present.{i}.{kind}" for i in range(c.num_layers) for kind in ("key", "value")]
    graph = _export(
        wrapper,
        args,
        ["input_ids", "attention_mask", "position_ids", "sliding_cache_start", *names],
        ["logits", "hidden_states", *outputs],
        ({0: B, 1: S}, {0: B, 1: L}, {0: B, 1: S}, None, kv_dims),
        options.portable,
    )
    _finalise(graph, options, c, kind="decoder")
    return graph


@torch.inference_mode(False)
def export_mtp(model: Mellum, options: ExportOptions) -> ir.Model:
    """The MTP graph, finalised."""
    c = model.config
    dtype = model.embed_tokens.weight.dtype
    wrapper = MtpForExport(model, options)
    batch, seq, past = 2, 3, 4
    args = (
        torch.zeros(batch, seq, dtype=torch.long),
        torch.zeros(batch, seq, c.hidden_size, dtype=dtype),
        torch.ones(batch, past + seq, dtype=torch.long),
        torch.arange(past + 1, past + 1 + seq).expand(batch, seq).contiguous(),
        _example_kv(c, dtype, batch, past),
        _example_kv(c, dtype, batch, past),
    )
    B = torch.export.Dim("batch")
    S = torch.export.Dim("sequence_length")
    L = torch.export.Dim("total_sequence_length")
    P = torch.export.Dim("past_sequence_length")
    graph = _export(
        wrapper,
        args,
        [
            "input_ids",
            "hidden_states",
            "attention_mask",
            "position_ids",
            "past_key_values.0.key",
            "past_key_values.0.value",
        ],
        ["logits", "hidden_states_out", "present.0.key", "present.0.value"],
        ({0: B, 1: S}, {0: B, 1: S}, {0: B, 1: L}, {0: B, 1: S}, {0: B, 2: P}, {0: B, 2: P}),
        options.portable,
    )
    _finalise(graph, options, c, kind="mtp")
    return graph


# ---------------------------------------------------------------------------------------------
# finishing touches on the ONNX IR


def _overridable(graph: ir.Graph, value: ir.Value, default: np.ndarray) -> None:
    """Give a graph input a default value (an initializer of the same name), so callers may omit it."""
    value.const_value = ir.tensor(default, name=value.name)
    graph.register_initializer(value)


def _keep_last_logits(graph: ir.Graph, hidden_name: str) -> None:
    """Add ``num_logits_to_keep`` [1] (0 = every position): lm_head then runs on the last n positions only."""
    hidden = next(v for v in graph.outputs if v.name == hidden_name)
    heads = [u.node for u in hidden.uses() if u.node.op_type in ("MatMul", "Gemm")]
    if len(heads) != 1:
        raise RuntimeError(f"expected one lm_head MatMul reading {hidden_name!r}, found {len(heads)}")
    head = heads[0]
    n = ir.val("num_logits_to_keep", ir.DataType.INT64, [1])
    graph.inputs.append(n)
    _overridable(graph, n, np.zeros(1, np.int64))
    tape = ir.tape.Tape()
    zero = tape.initializer(ir.tensor(np.zeros(1, np.int64), name="logits_keep_zero"))
    big = tape.initializer(ir.tensor(np.array([2**62], np.int64), name="logits_keep_end"))
    axis = tape.initializer(ir.tensor(np.ones(1, np.int64), name="logits_keep_axis"))
    length = tape.op("Shape", [hidden], {"start": 1, "end": 2})
    keep = tape.op("Where", [tape.op("Equal", [n, zero]), length, n])
    kept = tape.op("Slice", [hidden, tape.op("Neg", [keep]), big, axis])
    for init in tape.initializers:
        graph.register_initializer(init)
    graph.insert_before(head, tape.nodes)
    head.replace_input_with(0, kept)


def _rotary_in_graph(graph: ir.Graph, config: MellumConfig) -> None:
    """Replace the stored cos/sin caches by the few nodes that compute them from the frequencies.

    The caches are (max_positions, head_dim/2) per layer type -- 4 x 3 MB for a 32k context, more
    than a small model's weights -- and are functions of a handful of numbers. The nodes read only
    constants, so ONNX Runtime folds them back into the same tables when it loads the session
    (constant folding runs at every optimisation level but ORT_DISABLE_ALL) and the kernels see
    constant caches as before. Computed as ``RotaryTables.table`` does: fp32 position * inv_freq,
    cos/sin, times the attention factor, cast to the model's dtype.
    """
    tape = ir.tape.Tape()
    replaced = []
    for t, rope in sorted(config.rope.items()):
        names = {f"{fn}_{t}": fn for fn in ("cos", "sin")}
        present = {n: graph.initializers[n] for n in names if n in graph.initializers}
        if not present:
            continue
        inv_freq, scale = inv_freq_and_scale(rope, config.head_dim, config.max_position_embeddings)
        first = next(iter(present.values()))
        n, half = first.shape[0], first.shape[1]
        if half != inv_freq.numel():
            raise RuntimeError(f"{first.name}: width {half}, expected {inv_freq.numel()} frequencies")
        positions = tape.op(
            "Cast",
            [
                tape.op(
                    "Range",
                    [
                        tape.initializer(ir.tensor(np.array(0, np.int64), name=f"rotary_{t}_start")),
                        tape.initializer(ir.tensor(np.array(n, np.int64), name=f"rotary_{t}_positions")),
                        tape.initializer(ir.tensor(np.array(1, np.int64), name=f"rotary_{t}_step")),
                    ],
                )
            ],
            attributes={"to": ir.DataType.FLOAT},
        )
        freqs = tape.op(
            "Mul",
            [
                tape.op(
                    "Unsqueeze",
                    [
                        positions,
                        tape.initializer(ir.tensor(np.array([1], np.int64), name=f"rotary_{t}_axis")),
                    ],
                ),
                tape.initializer(ir.tensor(inv_freq.numpy().astype(np.float32), name=f"rotary_{t}_inv_freq")),
            ],
        )  # (n, half)
        factor = (
            tape.initializer(ir.tensor(np.array(scale, np.float32), name=f"rotary_{t}_scale"))
            if scale != 1.0
            else None
        )
        for name, old in present.items():
            table = tape.op("Cos" if names[name] == "cos" else "Sin", [freqs])
            if factor is not None:
                table = tape.op("Mul", [table, factor])
            if old.const_value.dtype != ir.DataType.FLOAT:
                table = tape.op("Cast", [table], attributes={"to": old.const_value.dtype})
            table.shape, table.type = ir.Shape([n, half]), ir.TensorType(old.const_value.dtype)
            replaced.append((old, table))
    if not replaced:
        return
    for init in tape.initializers:
        graph.register_initializer(init)
    graph.insert_before(next(iter(graph)), tape.nodes)
    for old, table in replaced:
        ir.convenience.replace_all_uses_with(old, table)
        name = old.name
        del graph.initializers[name]
        table.name = name


def _finalise(graph_model: ir.Model, options: ExportOptions, config: MellumConfig, kind: str) -> None:
    graph = graph_model.graph
    graph_model.ir_version = 10  # onnx 1.23 writes 14; ORT 1.31 reads at most 13 (1.32 reads 14)
    contrib = {name for _, name in ops.CONTRIB_OPS}
    for node in graph:
        if node.op_type in contrib:  # drop optional outputs nobody reads (e.g. output_qk)
            n = len(node.outputs)
            while n and not node.outputs[n - 1].uses() and not node.outputs[n - 1].is_graph_output():
                n -= 1
            node.resize_outputs(n)
    inputs = {v.name: v for v in graph.inputs}
    start = inputs.get("sliding_cache_start")
    if start is not None and start.uses():
        _overridable(graph, start, np.zeros(1, np.int64))
    elif start is not None:  # no sliding layer, or the portable lowering (it reads lengths from shapes)
        graph.inputs.remove(start)
    _keep_last_logits(graph, "hidden_states" if kind == "decoder" else "hidden_states_out")
    if not options.portable:  # a runtime without ORT's constant folding would recompute them per run
        _rotary_in_graph(graph, config)
    for v in graph.outputs:
        if v.name.startswith("present.") and v.shape is not None:
            layer = int(v.name.split(".")[1])
            t = config.mtp.layer_type if kind == "mtp" else config.layer_types[layer]
            dim = "present_sequence_length" if t != SLIDING or kind == "mtp" else "sliding_present_length"
            v.shape = ir.Shape([v.shape[0], v.shape[1], ir.SymbolicDim(dim), v.shape[3]])
        if v.name == "logits" and v.shape is not None:
            v.shape = ir.Shape([v.shape[0], ir.SymbolicDim("logits_length"), v.shape[2]])
    meta = {
        **asdict(options),
        "graph": kind,
        # "shared": past and present may be one buffer (GroupQueryAttention writes the new rows in
        # place at seqlens_k); "concat": present = past + new rows (the portable lowering).
        "kv_cache": "concat" if options.portable else "shared",
        "num_layers": config.num_layers if kind == "decoder" else 1,
        "layer_types": list(config.layer_types) if kind == "decoder" else [config.mtp.layer_type],
        "sliding_window": config.sliding_window,
        "max_positions": options.max_positions or config.max_position_embeddings,  # rows of cos/sin
    }
    graph_model.metadata_props[EXPORT_METADATA_KEY] = json.dumps(meta)
    graph_model.producer_name = "mellum-lsp export"


def save(model: ir.Model, path, on_tensor: Callable[[int, int], None] | None = None) -> None:
    """Write ``path``, its weights in ``<name>.data`` next to it; ``on_tensor(done, total)`` reports progress."""
    path = Path(path)
    total = len(model.graph.initializers)

    def callback(_tensor, info) -> None:
        if on_tensor is not None:
            on_tensor(info.index + 1, total)

    ir.save(model, path, external_data=path.name + ".data", callback=callback)
