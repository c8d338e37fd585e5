"""Passes over an exported ONNX graph, and saving it: inputs made overridable with defaults, logits
kept for the last positions only, rotary tables computed in the graph, metadata and opset fixes
(``finalise``), and ``save`` with external data. Split out of ``export.onnx_export``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from engine.model.config import EXPORT_METADATA_KEY, SLIDING, MellumConfig
from engine.model.rope import inv_freq_and_scale

from . import ops

if TYPE_CHECKING:
    from .onnx_export import ExportOptions

PREFILL_ROWS = 16  # a paged full layer runs longer chunks through GroupQueryAttention


def overridable(graph: ir.Graph, value: ir.Value, default: np.ndarray) -> None:
    """Give a graph input a default value (an initializer of the same name), so callers may omit it."""
    value.const_value = ir.tensor(default, name=value.name)
    graph.register_initializer(value)


def keep_last_logits(graph: ir.Graph, hidden_name: str) -> None:
    """Add ``num_logits_to_keep`` [1] (0 = every position): lm_head then runs on the last n positions only."""
    hidden = next(v for v in graph.outputs if v.name == hidden_name)
    heads = [u.node for u in hidden.uses() if u.node.op_type in ("MatMul", "Gemm")]
    if len(heads) != 1:
        raise RuntimeError(f"expected one lm_head MatMul reading {hidden_name!r}, found {len(heads)}")
    head = heads[0]
    n = ir.val("num_logits_to_keep", ir.DataType.INT64, [1])
    graph.inputs.append(n)
    overridable(graph, n, np.zeros(1, np.int64))
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


def rotary_in_graph(graph: ir.Graph, config: MellumConfig) -> None:
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


def finalise(graph_model: ir.Model, options: ExportOptions, config: MellumConfig, kind: str) -> None:
    graph = graph_model.graph
    graph_model.ir_version = 10  # onnx 1.23 writes 14; ORT 1.31 reads at most 13 (1.32 reads 14)
    contrib = {name for _, name in ops.CONTRIB_OPS}
    for node in ir.traversal.RecursiveGraphIterator(graph):  # the If branches' nodes too
        # torch's stack traces name this checkout and a per-process counter: the files would not be
        # the same bytes from one export to the next
        for key in [k for k in node.metadata_props if k.startswith("pkg.torch.onnx.")]:
            del node.metadata_props[key]
        if node.op_type in contrib:  # drop optional outputs nobody reads (e.g. output_qk)
            n = len(node.outputs)
            # GroupQueryAttention keeps its presents: without them, its CPU kernel ignores the past
            least = 3 if node.op_type == "GroupQueryAttention" else 0
            while n > least and not node.outputs[n - 1].uses() and not node.outputs[n - 1].is_graph_output():
                n -= 1
            node.resize_outputs(n)
    inputs = {v.name: v for v in graph.inputs}
    start = inputs.get("sliding_cache_start")
    if start is not None and start.uses():
        overridable(graph, start, np.zeros(1, np.int64))
    elif start is not None:  # no sliding layer, or the portable lowering (it reads lengths from shapes)
        graph.inputs.remove(start)
    for name in ("past_lengths", "attention_bias"):  # the contiguous layout, or no full-attention layer
        unused = inputs.get(name)
        if unused is not None and not unused.uses():
            graph.inputs.remove(unused)
    if any(v.name == "logits" for v in graph.outputs):
        keep_last_logits(graph, "hidden_states" if kind == "decoder" else "hidden_states_out")
    if not options.portable:  # a runtime without ORT's constant folding would recompute them per run
        rotary_in_graph(graph, config)
    for v in graph.outputs:
        if v.name.startswith("present.") and v.shape is not None:
            layer = int(v.name.split(".")[1])
            t = config.mtp.layer_type if kind == "mtp" else config.layer_types[layer]
            if options.paged and kind == "mtp":
                dim = "draft_rows"  # the inputs' rows, then the chained steps'
            elif options.paged and t != SLIDING:
                dim = "sequence_length"  # the new rows only
            else:
                dim = "present_sequence_length" if t != SLIDING or kind == "mtp" else "sliding_present_length"
            v.shape = ir.Shape([v.shape[0], v.shape[1], ir.SymbolicDim(dim), v.shape[3]])
        if v.name == "logits" and v.shape is not None:
            v.shape = ir.Shape([v.shape[0], ir.SymbolicDim("logits_length"), v.shape[2]])
    meta = {
        **asdict(options),
        "kv_layout": options.layout,
        "kv_dtype": options.cache_dtype,
        "prefill_rows": PREFILL_ROWS,
        "graph": kind,
        # "shared": past and present may be one buffer (GroupQueryAttention writes the new rows in
        # place at seqlens_k); "concat": present = past + new rows (the portable lowering); "paged":
        # full layers (and the MTP layer) read segments and return their new rows, sliding layers
        # of the decoder are "shared".
        "kv_cache": "paged" if options.paged else "concat" if options.portable else "shared",
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
