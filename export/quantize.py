"""Weight-only int8/int4 quantisation of an exported graph: MatMulNBits, QMoE, GatherBlockQuantized.

Offers ``quantize_blockwise`` (round-to-nearest, one scale and zero point per block of 32 input
features) and ``quantize_graph``, which rewrites, in an ONNX IR graph:

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

Legend: N = output features, K = input features, E = experts.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

BLOCK = 32


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


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(value.const_value.dtype)
    graph.register_initializer(value)
    return value


def _weight_of(value: ir.Value) -> np.ndarray | None:
    """The (K, N) weight a MatMul reads: an initializer, or the Transpose of a (N, K) one."""
    if value.const_value is not None and len(value.shape) == 2:
        return value.const_value.numpy()
    node = value.producer()
    if node is not None and node.op_type == "Transpose" and node.inputs[0].const_value is not None:
        w = node.inputs[0].const_value.numpy()
        if w.ndim == 2 and list(node.attributes.get_ints("perm", [1, 0])) == [1, 0]:
            return w.T
    return None


def _quantize_experts(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(E, N, K) -> packed (E, N, K*bits/8) uint8 and scales (E, N, K/block), symmetric blocks."""
    parts = [quantize_blockwise(expert, bits, symmetric=True) for expert in w]
    packed = np.stack([p.reshape(p.shape[0], -1) for p, _, _ in parts])
    return packed, np.stack([scale for _, scale, _ in parts])


def _replace(graph: ir.Graph, old: ir.Node, new: ir.Node) -> None:
    ir.convenience.replace_nodes_and_values(graph, old, [old], [new], list(old.outputs), list(new.outputs))


def _transposed_source(value: ir.Value) -> ir.Value | None:
    """The (N, K) initializer whose Transpose ``value`` is (a tied lm_head), else None."""
    node = value.producer()
    if node is not None and node.op_type == "Transpose" and node.inputs[0].const_value is not None:
        return node.inputs[0]
    return None


def _embedding_gathers(graph: ir.Graph) -> list[ir.Node]:
    """The token embedding: Gathers of a 2-D float initializer along axis 0 by the ``input_ids`` input."""
    found = []
    for node in graph:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        data, ids = node.inputs
        if data is None or data.const_value is None or data.is_graph_input() or ids is None:
            continue
        if ids.name != "input_ids" or not ids.is_graph_input() or ids.shape is None:
            continue
        if len(data.shape) != 2 or data.shape[1] % BLOCK or node.outputs[0].is_graph_output():
            continue
        if node.attributes.get_int("axis", 0) == 0 and data.const_value.dtype in _FLOATS:
            found.append(node)
    return found


_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)


def _quantize_gather(graph: ir.Graph, node: ir.Node, bits: int, shared: dict, i: int) -> None:
    """``Gather(W, ids)`` -> ``Reshape(GatherBlockQuantized(q, ids, scales', zero_points'), [..., K])``.

    ``shared`` maps an (N, K) initializer to the (packed, scales, zero points) values a MatMulNBits
    already holds for it; an embedding found there reuses them, any other is quantised here.
    GatherBlockQuantized blocks the last axis of its data, so on MatMulNBits' (N, K/block,
    block*bits/8) there is one block per (row, k-block): its scales and zero points are
    (N, K/block, 1), MatMulNBits' (N, K/block) reshaped (ORT folds the Reshape at load). 4-bit zero
    points are unpacked: MatMulNBits packs two per byte along K/block, this layout has one per byte.
    """
    data, ids = node.inputs
    n, k = data.shape[0], data.shape[1]
    blocks = k // BLOCK
    if data in shared:
        packed, scale, zero = shared[data]
    else:
        w = data.const_value.numpy()
        q, s, z = quantize_blockwise(w, bits)
        name = (data.name or f"embedding{i}") + f"_q{bits}"
        packed = _initializer(graph, name, q)
        scale = _initializer(graph, name + "_scales", s.astype(w.dtype))
        zero = _initializer(graph, name + "_zero_points", z)
    tape = ir.tape.Tape()
    blocked = tape.initializer(ir.tensor(np.array([n, blocks, 1], np.int64), name=f"{packed.name}_gbq_shape"))
    gbq_scale = tape.op("Reshape", [scale, blocked])
    if bits == 8:
        gbq_zero = tape.op("Reshape", [zero, blocked])
    else:
        z = zero.const_value.numpy()
        unpacked = np.stack([z & 0x0F, z >> 4], axis=-1).reshape(n, -1)[:, :blocks, None].astype(np.uint8)
        gbq_zero = tape.initializer(ir.tensor(unpacked, name=f"{packed.name}_gbq_zero_points"))
    rows = tape.op(
        "GatherBlockQuantized",
        [packed, ids, gbq_scale, gbq_zero],
        attributes={"bits": bits, "block_size": BLOCK, "gather_axis": 0, "quantize_axis": 2},
        domain="com.microsoft",
    )  # (*ids.shape, K/block, block)
    flat = tape.initializer(
        ir.tensor(np.array([0] * len(ids.shape) + [k], np.int64), name=f"{packed.name}_gbq_out_shape")
    )  # 0 = keep that axis of ids
    out = tape.op("Reshape", [rows, flat])
    out.shape, out.type = node.outputs[0].shape, node.outputs[0].type
    for init in tape.initializers:
        graph.register_initializer(init)
    graph.insert_before(node, tape.nodes)
    ir.convenience.replace_all_uses_with(node.outputs[0], out)
    graph.remove(node, safe=True)


def quantize_graph(model: ir.Model, bits: int, accuracy_level: int = 4, on_step=None) -> dict[str, int]:
    """Quantise ``model`` in place; returns how many MatMuls, MoEs and embeddings were rewritten."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    graph = model.graph
    counts = {"MatMulNBits": 0, "QMoE": 0, "GatherBlockQuantized": 0}
    shared: dict[ir.Value, tuple[ir.Value, ir.Value, ir.Value]] = {}  # (N, K) source -> its q tensors
    gathers = _embedding_gathers(graph)
    todo = [n for n in graph if (n.op_type, n.domain) in (("MatMul", ""), ("MoE", "com.microsoft"))]
    steps = len(todo) + len(gathers)
    for i, node in enumerate(todo):
        if node.op_type == "MatMul":
            w = _weight_of(node.inputs[1])
            if w is None or w.shape[0] % BLOCK:
                continue
            source = _transposed_source(node.inputs[1])
            if source is not None and source in shared:  # another MatMul by the same (N, K) weight
                inputs = [node.inputs[0], *shared[source]]
            else:
                packed, scale, zero = quantize_blockwise(w.T, bits)
                name = (source if source is not None else node.inputs[1]).name or f"matmul{i}"
                name += f"_q{bits}"
                inputs = [
                    node.inputs[0],
                    _initializer(graph, name, packed),
                    _initializer(graph, name + "_scales", scale.astype(w.dtype)),
                    _initializer(graph, name + "_zero_points", zero),
                ]
                if source is not None:
                    shared[source] = tuple(inputs[1:])
            attrs = {"K": w.shape[0], "N": w.shape[1], "bits": bits, "block_size": BLOCK}
            attrs["accuracy_level"] = accuracy_level
            new = ir.Node("com.microsoft", "MatMulNBits", inputs, ir.convenience.convert_attributes(attrs))
            counts["MatMulNBits"] += 1
        else:
            x, router, fc1, _, fc2 = (list(node.inputs) + [None] * 5)[:5]
            w1, w2 = fc1.const_value.numpy(), fc2.const_value.numpy()  # (E, 2I, C), (E, C, I)
            q1, s1 = _quantize_experts(w1, bits)
            q2, s2 = _quantize_experts(w2, bits)
            name = fc1.name or f"moe{i}"
            inputs = [
                x,
                router,
                _initializer(graph, name + f"_fc1_q{bits}", q1),
                _initializer(graph, name + "_fc1_scales", s1.astype(w1.dtype)),
                None,
                _initializer(graph, name + f"_fc2_q{bits}", q2),
                _initializer(graph, name + "_fc2_scales", s2.astype(w2.dtype)),
            ]
            attrs = {a.name: a for a in node.attributes.values()}  # routing and SwiGLU as the MoE had them
            quant = {
                "expert_weight_bits": bits,
                "block_size": BLOCK,
                "quant_type": "int",
                "weights_prepacked": 0,
                "accuracy_level": accuracy_level,
            }
            attrs.update({a.name: a for a in ir.convenience.convert_attributes(quant)})
            new = ir.Node("com.microsoft", "QMoE", inputs, list(attrs.values()))
            counts["QMoE"] += 1
        _replace(graph, node, new)
        if on_step:
            on_step(i + 1, steps)
    for j, node in enumerate(gathers):
        _quantize_gather(graph, node, bits, shared, j)
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
