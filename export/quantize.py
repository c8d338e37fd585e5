"""Weight-only int8/int4 quantisation of an exported graph: MatMulNBits, QMoE, GatherBlockQuantized.

Offers ``quantize_blockwise`` (round-to-nearest, one scale and zero point per block of 32 input
features, or ``block``), ``WeightSource`` (where the quantised tensors come from: ``QuantizedWeights`` rounds the
graph's own weights; ``export.random_export`` makes random ones without reading any) and
``quantize_graph``, which rewrites, in an ONNX IR graph:

- every ``MatMul`` whose weight is a 2-D initializer (or the ``Transpose`` of one, as a tied
  lm_head is exported) into ``com.microsoft::MatMulNBits`` (block_size 32, accuracy_level 4 on
  CPU: int8 activations inside the kernel). The routers (``Gemm``) stay in float: a rounding error
  there changes which experts run.
- every ``com.microsoft::MoE`` into ``com.microsoft::QMoE`` with the same routing and SwiGLU
  attributes, block-wise experts in the raw ``[E, N, K*bits/8]`` layout (``weights_prepacked=0``)
  and symmetric blocks (QMoE's default zero point 2^(bits-1));
- the token embedding (the ``Gather`` of a 2-D initializer by ``input_ids``) into
  ``com.microsoft::GatherBlockQuantized`` over the same blocks (quantize_axis = the last one, so
  the data is MatMulNBits' ``[N, K/block, block*bits/8]``). A tied embedding reads the very
  tensors of the lm_head's MatMulNBits (the lm_head is the Transpose of the same (V, C) weight,
  so its N = V rows are the embedding rows): stored once, and the two agree exactly. An untied
  embedding gets its own blocks. (The norms, the routers and the rotary frequencies stay float.)

A weight several nodes read (the MTP draft graph's unrolled steps) is quantised once.

Legend: N = output features, K = input features, E = experts.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnx_ir as ir

BLOCK = 32  # input features per scale (``quantize_graph``'s default; ``mellum-lsp export --block-size``)


def quantize_blockwise(
    w: np.ndarray, bits: int, block: int = BLOCK, symmetric: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """w (N, K) -> packed (N, K/block, block*bits/8) uint8, scales (N, K/block) fp32, zero points or None.

    Asymmetric blocks span [min(w, 0), max(w, 0)] with a packed uint8 zero point per block
    ((N, ceil(blocks*bits/8)), two per byte for 4 bits); symmetric ones use 2^(bits-1) implicitly.
    Dequantised: (q - zero_point) * scale.
    """
    n, k = w.shape
    if k % block:
        raise ValueError(f"input features ({k}) must be a multiple of the block size ({block})")
    top = (1 << bits) - 1
    blocks = w.astype(np.float32).reshape(n, k // block, block)
    if symmetric:
        mid = 1 << (bits - 1)
        scale = np.abs(blocks).max(axis=-1) / mid
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        q = np.clip(np.rint(blocks / scale[..., None]) + mid, 0, top).astype(np.uint8)
        zero = None
    else:
        lo = np.minimum(blocks.min(axis=-1), 0.0)
        hi = np.maximum(blocks.max(axis=-1), 0.0)
        scale = (hi - lo) / top
        scale = np.where(scale == 0, 1.0, scale).astype(np.float32)
        zp = np.clip(np.rint(-lo / scale), 0, top).astype(np.uint8)
        q = np.clip(np.rint(blocks / scale[..., None]) + zp[..., None], 0, top).astype(np.uint8)
        zero = _pack(zp, bits) if bits == 4 else zp
    return (_pack(q, bits) if bits == 4 else q), scale, zero


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Two 4-bit values per byte along the last axis, the first in the low nibble (odd lengths padded)."""
    assert bits == 4
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros((*q.shape[:-1], 1), np.uint8)], axis=-1)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def dequantize_blockwise(
    packed: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, bits: int
) -> np.ndarray:
    """Inverse of ``quantize_blockwise`` (for tests and error reports): -> (N, K) fp32."""
    if bits == 4:
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    else:
        q = packed
    blocks = scale.shape[-1]
    q = q.reshape(q.shape[0], blocks, -1).astype(np.float32)
    if zero is None:
        zp = np.full(scale.shape, 1 << (bits - 1), np.float32)
    elif bits == 4:
        zp = (
            np.stack([zero & 0x0F, zero >> 4], axis=-1)
            .reshape(zero.shape[0], -1)[:, :blocks]
            .astype(np.float32)
        )
    else:
        zp = zero.astype(np.float32)
    return ((q - zp[..., None]) * scale[..., None]).reshape(q.shape[0], -1)


class WeightSource(Protocol):
    """The quantised tensors of a graph's weights (``ir`` tensors, possibly lazy)."""

    def blocks(self, source: ir.Value, rows_first: bool, bits: int, block: int, name: str) -> tuple:
        """MatMulNBits' packed (N, K/block, block*bits/8) uint8, scales (N, K/block) and packed zero
        points (or None: 2^(bits-1)) of the (N, K) matrix: ``source`` when ``rows_first``, else its
        transpose."""
        ...

    def experts(self, source: ir.Value, bits: int, block: int, name: str) -> tuple:
        """QMoE's packed (E, N, K*bits/8) uint8 and scales (E, N, K/block) of (E, N, K) experts, symmetric."""
        ...


class QuantizedWeights:
    """The graph's own weights, rounded to nearest (asymmetric blocks for matrices, symmetric experts)."""

    def blocks(self, source: ir.Value, rows_first: bool, bits: int, block: int, name: str) -> tuple:
        w = source.const_value.numpy()
        packed, scale, zero = quantize_blockwise(w if rows_first else w.T, bits, block)
        return (ir.tensor(packed, name=name), ir.tensor(scale.astype(w.dtype), name=name + "_scales"),
                ir.tensor(zero, name=name + "_zero_points"))  # fmt: skip

    def experts(self, source: ir.Value, bits: int, block: int, name: str) -> tuple:
        w = source.const_value.numpy()
        parts = [quantize_blockwise(expert, bits, block, symmetric=True) for expert in w]
        packed = np.stack([p.reshape(p.shape[0], -1) for p, _, _ in parts])
        scales = np.stack([scale for _, scale, _ in parts]).astype(w.dtype)
        return ir.tensor(packed, name=name), ir.tensor(scales, name=name + "_scales")


def _initializer(graph: ir.Graph, tensor) -> ir.Value:
    value = ir.Value(name=tensor.name, const_value=tensor)
    value.shape = ir.Shape(tensor.shape)
    value.type = ir.TensorType(tensor.dtype)
    graph.register_initializer(value)
    return value


def _matmul_weight(value: ir.Value) -> tuple[ir.Value, bool] | None:
    """The initializer a MatMul's weight comes from and whether it is stored (N, K) (a Transpose of it
    is read, as torch exports a Linear or a tied lm_head) rather than (K, N)."""
    if value.const_value is not None and value.shape is not None and len(value.shape) == 2:
        return value, False
    node = value.producer()
    if node is not None and node.op_type == "Transpose" and node.inputs[0].const_value is not None:
        source = node.inputs[0]
        if len(source.shape) == 2 and list(node.attributes.get_ints("perm", [1, 0])) == [1, 0]:
            return source, True
    return None


def _replace(graph: ir.Graph, old: ir.Node, new: ir.Node) -> None:
    ir.convenience.replace_nodes_and_values(graph, old, [old], [new], list(old.outputs), list(new.outputs))


_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


def _embedding_gathers(graph: ir.Graph, block: int) -> list[ir.Node]:
    """The token embedding: Gathers of a 2-D float initializer along axis 0 by token ids (the
    ``input_ids`` input, or the ArgMax of an unrolled draft step)."""
    found = []
    for node in graph:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        data, ids = node.inputs
        if data is None or data.const_value is None or data.is_graph_input() or ids is None:
            continue
        by_input = ids.name == "input_ids" and ids.is_graph_input()
        producer = ids.producer()
        if not by_input and (producer is None or producer.op_type != "ArgMax") or ids.shape is None:
            continue
        if len(data.shape) != 2 or data.shape[1] % block or node.outputs[0].is_graph_output():
            continue
        if node.attributes.get_int("axis", 0) == 0 and data.const_value.dtype in _FLOATS:
            found.append(node)
    return found


class _Rewriter:
    """Quantised initializers, made once per weight, and the nodes that read them."""

    def __init__(self, graph: ir.Graph, bits: int, block: int, weights: WeightSource) -> None:
        self.graph, self.bits, self.block, self.weights = graph, bits, block, weights
        self.made: dict[tuple[int, str], tuple] = {}  # (id of the source weight, kind) -> values

    def blocks(self, source: ir.Value, rows_first: bool) -> tuple:
        key = (id(source), "blocks" if rows_first else "blocks_t")
        if key not in self.made:
            name = f"{source.name or 'weight'}{'' if rows_first else '_t'}_q{self.bits}"
            tensors = self.weights.blocks(source, rows_first, self.bits, self.block, name)
            self.made[key] = tuple(None if t is None else _initializer(self.graph, t) for t in tensors)
        return self.made[key]

    def experts(self, source: ir.Value) -> tuple:
        key = (id(source), "experts")
        if key not in self.made:
            tensors = self.weights.experts(
                source, self.bits, self.block, f"{source.name or 'experts'}_q{self.bits}"
            )
            self.made[key] = tuple(_initializer(self.graph, t) for t in tensors)
        return self.made[key]

    def matmul(self, node: ir.Node, accuracy_level: int) -> bool:
        found = _matmul_weight(node.inputs[1])
        if found is None:
            return False
        source, rows_first = found
        n, k = source.shape if rows_first else reversed(source.shape)
        if k % self.block:
            return False
        packed, scale, zero = self.blocks(source, rows_first)
        attrs = {
            "K": k,
            "N": n,
            "bits": self.bits,
            "block_size": self.block,
            "accuracy_level": accuracy_level,
        }
        inputs = [node.inputs[0], packed, scale] + ([zero] if zero is not None else [])
        _replace(
            self.graph,
            node,
            ir.Node("com.microsoft", "MatMulNBits", inputs, ir.convenience.convert_attributes(attrs)),
        )
        return True

    def moe(self, node: ir.Node, accuracy_level: int) -> None:
        x, router, fc1, _, fc2 = (list(node.inputs) + [None] * 5)[:5]
        q1, s1 = self.experts(fc1)  # fc1 (E, 2I, C), fc2 (E, C, I)
        q2, s2 = self.experts(fc2)
        attrs = {a.name: a for a in node.attributes.values()}  # routing and SwiGLU as the MoE had them
        quant = {"expert_weight_bits": self.bits, "block_size": self.block, "quant_type": "int",
                 "weights_prepacked": 0, "accuracy_level": accuracy_level}  # fmt: skip
        attrs.update({a.name: a for a in ir.convenience.convert_attributes(quant)})
        _replace(
            self.graph,
            node,
            ir.Node("com.microsoft", "QMoE", [x, router, q1, s1, None, q2, s2], list(attrs.values())),
        )

    def gather(self, node: ir.Node) -> None:
        """``Gather(W, ids)`` -> ``Reshape(GatherBlockQuantized(q, ids, scales', zero_points'), [..., K])``.

        The blocks are MatMulNBits' (N, K/block, block*bits/8) of W (N, K), shared with a tied
        lm_head's MatMulNBits (it reads the very same tensors). GatherBlockQuantized blocks the last
        axis of its data, so there is one block per (row, k-block): its scales and zero points are
        (N, K/block, 1), MatMulNBits' (N, K/block) reshaped (ORT folds the Reshape at load). 4-bit
        zero points are unpacked: MatMulNBits packs two per byte along K/block, this layout has one
        per byte. Without zero points both ops use 2^(bits-1).
        """
        data, ids = node.inputs
        n, k = data.shape[0], data.shape[1]
        blocks = k // self.block
        packed, scale, zero = self.blocks(data, rows_first=True)
        tape = ir.tape.Tape()
        blocked = tape.initializer(
            ir.tensor(np.array([n, blocks, 1], np.int64), name=f"{packed.name}_gbq_shape")
        )
        inputs = [packed, ids, tape.op("Reshape", [scale, blocked])]
        if zero is not None and self.bits == 8:
            inputs.append(tape.op("Reshape", [zero, blocked]))
        elif zero is not None:
            z = zero.const_value.numpy()
            unpacked = np.stack([z & 0x0F, z >> 4], axis=-1).reshape(n, -1)[:, :blocks, None].astype(np.uint8)
            inputs.append(tape.initializer(ir.tensor(unpacked, name=f"{packed.name}_gbq_zero_points")))
        rows = tape.op(
            "GatherBlockQuantized",
            inputs,
            attributes={"bits": self.bits, "block_size": self.block, "gather_axis": 0, "quantize_axis": 2},
            domain="com.microsoft",
        )  # (*ids.shape, K/block, block)
        name = f"{packed.name}_gbq_out_shape_{len(ids.shape)}"
        flat = self.graph.initializers.get(name) or tape.initializer(
            ir.tensor(np.array([0] * len(ids.shape) + [k], np.int64), name=name)
        )  # 0 = keep that axis of ids
        out = tape.op("Reshape", [rows, flat])
        out.shape, out.type = node.outputs[0].shape, node.outputs[0].type
        for init in tape.initializers:
            if init.name not in self.graph.initializers:
                self.graph.register_initializer(init)
        self.graph.insert_before(node, tape.nodes)
        ir.convenience.replace_all_uses_with(node.outputs[0], out)
        self.graph.remove(node, safe=True)


def quantize_graph(
    model: ir.Model,
    bits: int,
    accuracy_level: int = 4,
    on_step=None,
    weights: WeightSource | None = None,
    block: int = BLOCK,
) -> dict[str, int]:
    """Quantise ``model`` in place (tensors from ``weights``, by default the graph's own weights
    rounded; ``block`` input features per scale); returns how many MatMuls, MoEs and embeddings
    were rewritten."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if block not in (16, 32, 64, 128, 256):
        raise ValueError(f"block must be a power of two from 16 to 256, got {block}")
    graph = model.graph
    rewriter = _Rewriter(graph, bits, block, weights or QuantizedWeights())
    counts = {"MatMulNBits": 0, "QMoE": 0, "GatherBlockQuantized": 0}
    gathers = _embedding_gathers(graph, block)
    todo = [n for n in graph if (n.op_type, n.domain) in (("MatMul", ""), ("MoE", "com.microsoft"))]
    steps = len(todo) + len(gathers)
    for i, node in enumerate(todo):
        if node.op_type == "MatMul":
            counts["MatMulNBits"] += rewriter.matmul(node, accuracy_level)
        else:
            rewriter.moe(node, accuracy_level)
            counts["QMoE"] += 1
        if on_step:
            on_step(i + 1, steps)
    for j, node in enumerate(gathers):
        rewriter.gather(node)
        counts["GatherBlockQuantized"] += 1
        if on_step:
            on_step(len(todo) + j + 1, steps)
    _drop_unused_initializers(graph)
    return counts


def _drop_unused_initializers(graph: ir.Graph) -> None:
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
            del graph.initializers[name]
    # Transposes of tied weights that no MatMul reads any more go with them.
    for node in list(graph):
        if node.op_type == "Transpose" and all(
            not o.uses() and not o.is_graph_output() for o in node.outputs
        ):
            graph.remove(node, safe=True)
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_input() and not value.is_graph_output():
            del graph.initializers[name]
