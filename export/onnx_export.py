"""Export a Mellum model to ONNX: ``model.onnx`` (the decoder) and ``mtp.onnx`` (the draft layer).

Offers ``ExportOptions``, the export-path module ``MellumForExport`` (it reuses the weights of an
``engine.model.mellum.Mellum`` and calls the custom ops of ``export.ops`` for attention and
experts; the MTP layer's are in ``export.mtp_export``), ``export_decoder`` (torch -> ONNX IR,
finalised), ``kv_input_names`` and ``save``.

Two KV layouts (``ExportOptions.kv_layout``, recorded in the metadata as ``kv_cache``):

"paged" (the default; what ``engine.backends.ort_backend`` runs): full-attention layers read their
cache as ``kv_segments`` segments, ``past_key_values.N.key.J`` / ``.value.J`` (1, K, C_J, D), of
which the first ``past_lengths[J]`` rows count, and output only the new rows as
``present.N.key/value`` (1, K, S, D), which the runtime stores: segments can be pages shared
between sequences. A chunk of more than ``PREFILL_ROWS`` tokens concatenates the segments and uses
GroupQueryAttention instead (an ``If``; the metadata's ``prefill_rows``). Sliding layers keep the in-place contract below. ``mtp.onnx`` is the draft
graph: ``input_ids``/``hidden_states``/``position_ids`` of the tokens the MTP cache has not seen,
its cache as segments from position ``past_start`` (a sliding MTP layer: its window's rows as one
exact past with ``attention_mask``, as below); outputs ``drafts`` (1, mtp_drafts), the MTP
layer chained on itself in one call, ``present.0.key/value`` (the rows of the inputs, then of the
chained steps) and ``hidden_states_out`` (the last step's, to chain a further call). Batch 1.

"contiguous" (``--kv-layout contiguous``, and every ``--portable`` export; what onnxruntime-genai
runs), the contract below for every layer:

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

Full-attention layers (and a full-attention MTP layer) store their KV cache in ``kv_dtype`` (fp16
by default with the paged layout), whatever the compute dtype; attention reads the stored values,
new rows included, so a prompt's logits do not depend on how it is chunked. Sliding layers (window
+ margin rows) store the compute dtype: GroupQueryAttention attends to the unrounded new rows, so a
narrower cache there would make results depend on the chunking; for the same reason the contiguous
layout stores every layer in the compute dtype.

Weights on disk: each graph is self-contained (``mtp.onnx`` holds its own copy of the embedding and
lm_head it reads, so either file loads alone, in onnxruntime-genai too); a tied embedding and
lm_head are one tensor within a graph. The rotary cos/sin caches are not stored but computed from
the frequencies by constant nodes, which ONNX Runtime folds when it loads the session (the
``--portable`` graphs keep them stored, for runtimes that would recompute them on every run).
"""

from __future__ import annotations

import logging
import warnings
import zlib
from dataclasses import dataclass
from functools import partial

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import SLIDING, MellumConfig
from engine.model.mellum import Mellum

from . import ops, paged_ops
from .graph_passes import PREFILL_ROWS, finalise, overridable, save  # noqa: F401 - save is this module's API too

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
KV_LAYOUTS = ("paged", "contiguous")


@dataclass(frozen=True)
class ExportOptions:
    dtype: str = "fp32"  # fp32 | fp16
    quant: str | None = None  # None | int8 | int4
    portable: bool = False  # standard ONNX ops only
    target: str = "cpu"  # cpu | cuda (cuda fuses the q/k RMSNorm into GroupQueryAttention)
    max_positions: int | None = None  # rows of the cos/sin caches; default max_position_embeddings
    kv_dtype: str | None = None  # fp16 | fp32: what full layers store; None: fp16 if paged, else dtype
    kv_layout: str | None = None  # paged | contiguous; None: contiguous when portable, else paged
    kv_segments: int = 2  # paged: segments per full-attention layer
    mtp_drafts: int = 3  # paged: drafts the MTP graph makes per call

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.kv_dtype not in (None, *DTYPES):
            raise ValueError(f"kv_dtype must be one of {sorted(DTYPES)}, got {self.kv_dtype!r}")
        if self.kv_layout not in (None, *KV_LAYOUTS):
            raise ValueError(f"kv_layout must be one of {KV_LAYOUTS}, got {self.kv_layout!r}")
        if self.portable and self.kv_layout == "paged":
            raise ValueError(
                "--portable exports use the contiguous KV layout (the paged one needs RotaryEmbedding)"
            )
        if self.kv_dtype not in (None, self.dtype) and self.layout == "contiguous":
            raise ValueError(
                f"the contiguous KV layout stores the compute dtype ({self.dtype}), not kv_dtype={self.kv_dtype}: "
                "GroupQueryAttention attends to the unrounded new rows, so a narrower cache would make "
                "results depend on how a prompt is chunked; use the paged layout"
            )
        if self.kv_segments < 1 or self.mtp_drafts < 1:
            raise ValueError(
                f"kv_segments and mtp_drafts must be >= 1, got {self.kv_segments} and {self.mtp_drafts}"
            )
        if self.quant not in (None, "int8", "int4"):
            raise ValueError(f"quant must be int8 or int4, got {self.quant!r}")
        if self.target not in ("cpu", "cuda"):
            raise ValueError(f"target must be cpu or cuda, got {self.target!r}")
        if self.portable and self.quant:
            raise ValueError("--portable cannot be combined with --quant (MatMulNBits/QMoE are contrib ops)")

    @property
    def fused_qk_norm(self) -> bool:
        return self.target == "cuda" and not self.portable

    @property
    def layout(self) -> str:
        return self.kv_layout or ("contiguous" if self.portable else "paged")

    @property
    def paged(self) -> bool:
        return self.layout == "paged"

    @property
    def cache_dtype(self) -> str:
        """What full-attention layers store."""
        return self.kv_dtype or ("fp16" if self.paged else self.dtype)


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

    def _qkv(self, layer, name: str, h, fused: bool):
        """h (B, S, C) -> q (B, S, H*D), k, v (B, S, K*D), q/k RMSNorm applied; with ``fused``, the packed
        projection as q (k and v None) and the norm weights, for GroupQueryAttention to apply."""
        attn = layer.self_attn
        b, s, _ = h.shape
        nh, kv, d = attn.num_heads, attn.num_kv_heads, attn.head_dim
        qkv = F.linear(h, getattr(self, f"qkv_{name}"))  # (B, S, (H + 2K) * D)
        if fused:  # GroupQueryAttention splits the packed QKV and applies the q/k norms itself
            return qkv, None, None, attn.q_norm.weight, attn.k_norm.weight
        # the CPU kernel rejects the fused norm inputs: normalise with standard ops first
        q, k, v = qkv.split([nh * d, kv * d, kv * d], dim=-1)
        q = ops.rms_norm(q.reshape(b, s, nh, d), attn.q_norm.weight, self.eps).reshape(b, s, nh * d)
        k = ops.rms_norm(k.reshape(b, s, kv, d), attn.k_norm.weight, self.eps).reshape(b, s, kv * d)
        return q, k, v, None, None

    def attention(self, layer, name: str, h, position_ids, past_k, past_v, seqlens, total):
        """h (B, S, C), the normed input -> attention output (B, S, C), present key, present value."""
        attn = layer.self_attn
        q, k, v, qn, kn = self._qkv(layer, name, h, self.fused)
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
            attn.num_heads,
            attn.num_kv_heads,
            self.config.window_of(t) or -1,
            self.eps,
        )
        return attn.o_proj(out), present_k, present_v

    def paged(
        self, layer, name: str, h, position_ids, past_keys, past_values, lengths, start, extra=None, bias=None
    ):
        """h (1, S, C) -> attention output (1, S, C) and the new key/value rows (1, K, S, D) to store.
        ``bias``: the runtime's additive mask for a few-token run (see ``ops.paged_attention``)."""
        attn = layer.self_attn
        q, k, v, _, _ = self._qkv(layer, name, h, fused=False)
        t = layer.layer_type
        cos, sin = getattr(self, f"cos_{t}"), getattr(self, f"sin_{t}")
        shape = (attn.num_heads, attn.num_kv_heads, self.config.window_of(t) or -1)
        if extra is not None:  # the MTP draft graph's chained steps
            out, key_rows, value_rows = paged_ops.paged_attention(q, k, v, list(past_keys), list(past_values), lengths,
                                                            start, *extra, cos, sin, position_ids, None, *shape)  # fmt: skip
            return attn.o_proj(out), key_rows, value_rows

        def short(q, k, v, keys, values, lengths, start, cos, sin, position_ids, bias):
            return paged_ops.paged_attention(q, k, v, keys, values, lengths, start, None, None, cos, sin, position_ids,
                                       bias, *shape)  # fmt: skip

        def long(q, k, v, keys, values, lengths, start, cos, sin, position_ids, bias):
            return paged_ops.segment_prefill_attention(q, k, v, keys, values, lengths, start, cos, sin, position_ids,
                                                 *shape)  # fmt: skip

        # A chunk of more than PREFILL_ROWS tokens: GroupQueryAttention (scores tiled inside the kernel)
        # on the segments concatenated, a copy the chunk amortises; fewer (decoding, a keystroke's
        # few tokens): one MatMul per segment, read in place.
        operands = (q, k, v, list(past_keys), list(past_values), lengths, start, cos, sin, position_ids, bias)
        out, key_rows, value_rows = torch.cond(q.shape[1] > PREFILL_ROWS, long, short, operands)
        return attn.o_proj(out), key_rows, value_rows

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

    def layer_step(self, layer, name, h, residual, next_norm, attend):
        """(normed input, residual) -> (next layer's normed input, residual, present key, value);
        ``attend(h)`` -> (attention output, present key, present value)."""
        a, present_k, present_v = attend(h)
        m, residual = ops.add_rms_norm(a, residual, layer.post_attention_layernorm.weight, self.eps)
        h, residual = ops.add_rms_norm(self.mlp(layer, name, m), residual, next_norm, self.eps)
        return h, residual, present_k, present_v


def _lengths(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seqlens = (attention_mask.sum(dim=1) - 1).to(torch.int32)  # (B,)
    total = torch.full((), attention_mask.shape[1], dtype=torch.int32)
    return seqlens, total


def kv_input_names(config: MellumConfig, options: ExportOptions, kind: str = "decoder") -> list[str]:
    """The past inputs of a graph in order: per layer (or the MTP layer) key and value, or with the
    paged layout per full-attention layer its segments' keys and values."""
    types = list(config.layer_types) if kind == "decoder" else [config.mtp.layer_type]
    names = []
    for i, t in enumerate(types):
        if options.paged and t != SLIDING:
            names += [
                f"past_key_values.{i}.{k}.{j}" for j in range(options.kv_segments) for k in ("key", "value")
            ]
        else:
            names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    return names


class MellumForExport(_ExportBase):
    """The decoder as the ONNX graph computes it (see the module docstring for the contract)."""

    def __init__(self, model: Mellum, options: ExportOptions) -> None:
        super().__init__(model, options)
        self.options = options
        for i, layer in enumerate(model.layers):
            self._pack(str(i), layer)
        self.register_buffer("first_position", torch.zeros(1, dtype=torch.long), persistent=False)

    def forward(
        self,
        input_ids,
        attention_mask,
        position_ids,
        sliding_cache_start,
        past_lengths,
        attention_bias,
        past_key_values,
    ):
        m, o = self.model, self.options
        x = m.embed_tokens(input_ids)
        seqlens, total = _lengths(attention_mask)
        start = sliding_cache_start.to(torch.int32)
        sliding = (seqlens - start, (total - start).reshape(()))
        h, residual = ops.rms_norm(x, m.layers[0].input_layernorm.weight, self.eps), x
        presents, j = [], 0
        for i, layer in enumerate(m.layers):
            after = m.layers[i + 1].input_layernorm.weight if i + 1 < len(m.layers) else m.norm.weight
            if o.paged and layer.layer_type != SLIDING:
                seg = past_key_values[j : j + 2 * o.kv_segments]
                j += 2 * o.kv_segments
                attend = partial(
                    self.paged,
                    layer,
                    str(i),
                    position_ids=position_ids,
                    past_keys=seg[0::2],
                    past_values=seg[1::2],
                    lengths=past_lengths,
                    start=self.first_position,
                    bias=attention_bias,
                )
            else:
                lengths = sliding if layer.layer_type == SLIDING else (seqlens, total)
                past_k, past_v = past_key_values[j], past_key_values[j + 1]
                j += 2
                attend = partial(self.attention, layer, str(i), position_ids=position_ids, past_k=past_k,
                                 past_v=past_v, seqlens=lengths[0], total=lengths[1])  # fmt: skip
            h, residual, pk, pv = self.layer_step(layer, str(i), h, residual, after, attend)
            presents += [pk, pv]
        return (m.lm_head(h).float(), h, *presents)  # h: the hidden state after the final norm


# ---------------------------------------------------------------------------------------------
# torch -> ONNX


def _is_meta(value: ir.Value | None) -> bool:
    raw = getattr(getattr(value, "const_value", None), "raw", None)
    return isinstance(raw, torch.Tensor) and raw.is_meta


def _random_weight(name: str, shape: tuple[int, ...], dtype: ir.DataType) -> ir.TensorProtocol:
    if len(shape) == 1:  # norm gains
        data = np.ones(shape, np.float32)
    else:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        data = rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[-1])
    return ir.tensor(data.astype(dtype.numpy()), name=name)


def _lazy_random_weights(model: ir.Model) -> None:
    """Weights without data (a model built on the meta device by ``export.random_export``) get seeded
    random values computed only when read: ones for vectors (norm gains), N(0, 1/fan_in) otherwise.
    Then onnxscript's optimiser runs as ``torch.onnx.export(optimize=True)`` would run it, except
    that nothing reading these weights is folded: the large weights are never materialised here."""
    import onnxscript.optimizer
    import onnxscript.rewriter.onnx_fusions

    lazy = set()
    for name, value in model.graph.initializers.items():
        if _is_meta(value):
            shape, dtype = tuple(value.shape), value.dtype
            value.const_value = ir.LazyTensor(
                partial(_random_weight, name, shape, dtype), dtype, ir.Shape(shape), name=name
            )
            lazy.add(value)

    def should_fold(node: ir.Node) -> bool | None:
        # the optimiser folds a weight's Transpose whatever its size, which would make it here in
        # float: keep them (the quantisation pass reads through a Transpose)
        return False if any(v in lazy for v in node.inputs) else None

    onnxscript.optimizer.optimize_ir(model, should_fold=should_fold)
    onnxscript.rewriter.onnx_fusions.fuse(model)


def _export(
    module: nn.Module, args: tuple, input_names, output_names, dynamic_shapes, portable: bool
) -> ir.Model:
    meta = any(p.is_meta for p in module.parameters())
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
                optimize=not meta,  # weights on the meta device: _lazy_random_weights
                verbose=False,
            )
            if meta:
                _lazy_random_weights(program.model)
        finally:
            logging.getLogger("torch.onnx").setLevel(level)
    return program.model


def _example_kv(config: MellumConfig, dtype: torch.dtype, batch: int, past: int) -> torch.Tensor:
    return torch.zeros(batch, config.num_kv_heads, past, config.head_dim, dtype=dtype)


def _segments(config, options, dtype, kind: str):
    """Example segments (each a key and a value), their dynamic dims and lengths for a paged graph."""
    count = options.kv_segments
    dims = [torch.export.Dim(f"segment_{j}_rows") for j in range(count)]
    sizes = [5 + j for j in range(count)]  # >= 2 and unlike every other example size: kept symbolic
    kv = [_example_kv(config, dtype, 1, n) for n in sizes for _ in (0, 1)]
    return kv, [{2: d} for d in dims for _ in (0, 1)], torch.tensor([n - 1 for n in sizes], dtype=torch.long)


@torch.inference_mode(False)
def export_decoder(model: Mellum, options: ExportOptions) -> ir.Model:
    """The decoder graph, finalised (not yet quantised)."""
    c = model.config
    dtype, kv_dtype = model.embed_tokens.weight.dtype, DTYPES[options.cache_dtype]
    wrapper = MellumForExport(model, options)
    # Example sizes >= 2 and all different, so torch.export keeps every dimension symbolic; the paged
    # graph is batch 1.
    batch, seq, past_full, past_sliding = (1 if options.paged else 2), 3, 7, 4
    B = torch.export.Dim("batch") if batch > 1 else None
    S = torch.export.Dim("sequence_length")
    L = torch.export.Dim("total_sequence_length")
    P = {
        "full_attention": torch.export.Dim("past_sequence_length"),
        SLIDING: torch.export.Dim("sliding_past_length"),
    }
    with torch.device(model.embed_tokens.weight.device):  # the meta device for export.random_export
        past, kv_dims = [], []
        segments, segment_dims, lengths = _segments(c, options, kv_dtype, "decoder")
        for t in c.layer_types:
            if options.paged and t != SLIDING:
                past += [x.clone() for x in segments]  # one tensor per input: torch.export ties shared ones
                kv_dims += segment_dims
            else:
                p = past_sliding if t == SLIDING else past_full
                store = dtype if t == SLIDING else kv_dtype
                past += [_example_kv(c, store, batch, p), _example_kv(c, store, batch, p)]
                kv_dims += [{0: B, 2: P[t]} if B else {2: P[t]}] * 2
        args = (
            torch.zeros(batch, seq, dtype=torch.long),
            torch.ones(batch, past_full + seq, dtype=torch.long),
            torch.arange(past_full, past_full + seq).expand(batch, seq).contiguous(),
            torch.zeros(1, dtype=torch.long),
            lengths,
            torch.zeros(seq, 17),  # attention_bias (S, rows of every segment + S): only its shape matters
            past,
        )
    outputs = [f"present.{i}.{kind}" for i in range(c.num_layers) for kind in ("key", "value")]
    bias_dims = {0: torch.export.Dim("bias_rows"), 1: torch.export.Dim("bias_columns")}
    by_batch = (lambda d: {0: B, **d}) if B else (lambda d: d)
    graph = _export(
        wrapper,
        args,
        [
            "input_ids",
            "attention_mask",
            "position_ids",
            "sliding_cache_start",
            "past_lengths",
            "attention_bias",
            *kv_input_names(c, options),
        ],
        ["logits", "hidden_states", *outputs],
        (by_batch({1: S}), by_batch({1: L}), by_batch({1: S}), None, None, bias_dims, kv_dims),
        options.portable,
    )
    finalise(graph, options, c, kind="decoder")
    return graph


# ---------------------------------------------------------------------------------------------
# finishing touches on the ONNX IR
