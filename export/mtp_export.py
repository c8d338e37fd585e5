"""The MTP layer's graph, ``mtp.onnx``, on the decoder's export path (``export.onnx_export``).

Offers ``MtpForExport`` (one step: the contiguous layout's graph, which onnxruntime-genai's MTP
runner drives), ``MtpDraftForExport`` and ``MtpWindowDraftForExport`` (the paged layout's: several
drafts in one call, the layer chained on itself) and ``export_mtp``. The graph contracts are in
``export.onnx_export``'s docstring.
"""

from __future__ import annotations

from functools import partial

import onnx_ir as ir
import torch

from engine.model.config import SLIDING
from engine.model.mellum import Mellum

from . import ops
from .graph_passes import finalise
from .onnx_export import (
    DTYPES,
    ExportOptions,
    _example_kv,
    _export,
    _ExportBase,
    _lengths,
    _segments,
    kv_input_names,
)


class MtpForExport(_ExportBase):
    """The MTP layer: embed(token p+1) and the main hidden state at p -> logits for p+2, its hidden."""

    def __init__(self, model: Mellum, options: ExportOptions) -> None:
        super().__init__(model, options)
        if model.mtp is None:
            raise ValueError("this model has no MTP layer to export")
        self._pack("mtp", model.mtp.layers[0])

    def block(self, input_ids, hidden_states, attend):
        """The layer on (token p+1, main hidden at p) -> its normed hidden state, present key, value."""
        m, mtp = self.model, self.model.mtp
        e = ops.rms_norm(m.embed_tokens(input_ids), mtp.pre_fc_norm_embedding.weight, self.eps)
        x = mtp.fc(
            torch.cat([e, ops.rms_norm(hidden_states, mtp.pre_fc_norm_hidden.weight, self.eps)], dim=-1)
        )
        layer = mtp.layers[0]
        h = ops.rms_norm(x, layer.input_layernorm.weight, self.eps)
        h, _, pk, pv = self.layer_step(layer, "mtp", h, x, mtp.norm.weight, attend)
        return h, pk, pv

    def forward(self, input_ids, hidden_states, attention_mask, position_ids, past_key, past_value):
        seqlens, total = _lengths(attention_mask)
        layer = self.model.mtp.layers[0]
        attend = partial(self.attention, layer, "mtp", position_ids=position_ids, past_k=past_key,
                         past_v=past_value, seqlens=seqlens, total=total)  # fmt: skip
        h, pk, pv = self.block(input_ids, hidden_states, attend)
        return self.model.lm_head(h).float(), h, pk, pv


class MtpDraftForExport(MtpForExport):
    """``mtp_drafts`` greedy MTP drafts in one call (the paged layout's ``mtp.onnx``).

    The tokens the MTP cache has not seen yet (the last one is the main model's next token) run
    as one block; then the layer chains on its own hidden state ``drafts - 1`` times, each step
    attending to the cache and to the rows made before it in this call. Returns the drafts, the
    rows of every position it ran (the block's, then the chained steps') for the runtime to store
    -- it drops the chained ones once the main model has checked them, and keeps them to chain a
    further call -- and the last hidden state. As ``TorchBackend.draft`` computes it.
    """

    def __init__(self, model: Mellum, options: ExportOptions) -> None:
        super().__init__(model, options)
        self.drafts = options.mtp_drafts

    def forward(self, input_ids, hidden_states, position_ids, past_lengths, past_start, past_key_values):
        layer = self.model.mtp.layers[0]
        keys, values = past_key_values[0::2], past_key_values[1::2]

        def attend(position, extra):
            return partial(self.paged, layer, "mtp", position_ids=position, past_keys=keys, past_values=values,
                           lengths=past_lengths, start=past_start, extra=extra)  # fmt: skip

        h, key_rows, value_rows = self.block(input_ids, hidden_states, attend(position_ids, None))
        last = h[:, -1:]
        token = self.model.lm_head(last).argmax(-1)  # (1, 1)
        drafts, position = [token], position_ids[:, -1:]
        for _ in range(1, self.drafts):
            position = position + 1
            extra = (key_rows.to(h.dtype), value_rows.to(h.dtype))  # what attention read of the stored rows
            last, k, v = self.block(token, last, attend(position, extra))
            key_rows, value_rows = torch.cat([key_rows, k], dim=2), torch.cat([value_rows, v], dim=2)
            token = self.model.lm_head(last).argmax(-1)
            drafts.append(token)
        return torch.cat(drafts, dim=1), key_rows, value_rows, last


class MtpWindowDraftForExport(MtpDraftForExport):
    """``MtpDraftForExport`` for a sliding-window MTP layer, whose cache (its window and margin, in
    the compute dtype) is small: its live rows come in as one exact past (``past_key_values.0.*``,
    with ``attention_mask`` over them and the new tokens, as the contiguous layout's), and the
    chained steps run GroupQueryAttention on the previous step's present (a copy of a window per
    step, one op instead of a paged attention's few dozen: drafting is mostly per-op overhead on
    small models)."""

    def forward(self, input_ids, hidden_states, attention_mask, position_ids, past_key, past_value):
        layer = self.model.mtp.layers[0]
        seqlens, total = _lengths(attention_mask)

        def attend(position, past_k, past_v, step):
            return partial(self.attention, layer, "mtp", position_ids=position, past_k=past_k, past_v=past_v,
                           seqlens=seqlens + step, total=total + step)  # fmt: skip

        h, present_k, present_v = self.block(
            input_ids, hidden_states, attend(position_ids, past_key, past_value, 0)
        )
        last = h[:, -1:]
        token = self.model.lm_head(last).argmax(-1)  # (1, 1)
        drafts, position = [token], position_ids[:, -1:]
        for step in range(1, self.drafts):
            position = position + 1
            last, present_k, present_v = self.block(token, last, attend(position, present_k, present_v, step))
            token = self.model.lm_head(last).argmax(-1)
            drafts.append(token)
        held = past_key.shape[2]  # the rows of every position this call ran follow the past's
        return torch.cat(drafts, dim=1), present_k[:, :, held:], present_v[:, :, held:], last


@torch.inference_mode(False)
def export_mtp(model: Mellum, options: ExportOptions) -> ir.Model:
    """The MTP graph, finalised: the draft graph (``MtpDraftForExport``) with the paged layout."""
    c = model.config
    dtype = model.embed_tokens.weight.dtype
    kv_dtype = dtype if c.mtp.layer_type == SLIDING else DTYPES[options.cache_dtype]
    S = torch.export.Dim("sequence_length")
    device = torch.device(model.embed_tokens.weight.device)  # the meta device for export.random_export
    if options.paged and c.mtp.layer_type == SLIDING:
        wrapper = MtpWindowDraftForExport(model, options)
        batch, seq, past = 1, 3, 4
        with device:
            args = (
                torch.zeros(batch, seq, dtype=torch.long),
                torch.zeros(batch, seq, c.hidden_size, dtype=dtype),
                torch.ones(batch, past + seq, dtype=torch.long),
                torch.arange(past + 1, past + 1 + seq).expand(batch, seq).contiguous(),
                _example_kv(c, kv_dtype, batch, past),
                _example_kv(c, kv_dtype, batch, past),
            )
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
            ],  # fmt: skip
            ["drafts", "present.0.key", "present.0.value", "hidden_states_out"],
            ({1: S}, {1: S}, {1: L}, {1: S}, {2: P}, {2: P}),
            options.portable,
        )
        finalise(graph, options, c, kind="mtp")
        return graph
    if options.paged:
        wrapper = MtpDraftForExport(model, options)
        with device:
            segments, segment_dims, lengths = _segments(c, options, kv_dtype, "mtp")
            seq = 3
            args = (
                torch.zeros(1, seq, dtype=torch.long),
                torch.zeros(1, seq, c.hidden_size, dtype=dtype),
                torch.arange(20, 20 + seq)[None],
                lengths,
                torch.ones(1, dtype=torch.long),
                segments,
            )
        graph = _export(
            wrapper,
            args,
            [
                "input_ids",
                "hidden_states",
                "position_ids",
                "past_lengths",
                "past_start",
                *kv_input_names(c, options, "mtp"),
            ],  # fmt: skip
            ["drafts", "present.0.key", "present.0.value", "hidden_states_out"],
            ({1: S}, {1: S}, {1: S}, None, None, segment_dims),
            options.portable,
        )
        finalise(graph, options, c, kind="mtp")
        return graph
    wrapper = MtpForExport(model, options)
    batch, seq, past = 2, 3, 4
    with device:
        args = (
            torch.zeros(batch, seq, dtype=torch.long),
            torch.zeros(batch, seq, c.hidden_size, dtype=dtype),
            torch.ones(batch, past + seq, dtype=torch.long),
            torch.arange(past + 1, past + 1 + seq).expand(batch, seq).contiguous(),
            _example_kv(c, kv_dtype, batch, past),
            _example_kv(c, kv_dtype, batch, past),
        )
    B = torch.export.Dim("batch")
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
    finalise(graph, options, c, kind="mtp")
    return graph
