"""Custom torch ops for the export path and their ONNX translations.

Offers ``torch.library`` ops, each with an eager reference implementation and a fake (shape)
implementation for ``torch.export``:

- ``mellum::rms_norm`` and ``mellum::add_rms_norm`` (the residual add fused in) -- to ORT's
  ``SimplifiedLayerNormalization`` and ``com.microsoft::SkipSimplifiedLayerNormalization``;
- ``mellum::group_query_attention`` -- sliding-window GQA over a past/present KV cache, with
  rotary taken from per-layer-type cos/sin caches at ``position_ids`` (the contract of ONNX
  Runtime's ``com.microsoft::GroupQueryAttention``);
- ``mellum::paged_attention`` and ``mellum::segment_prefill_attention`` (``export.paged_ops``):
  attention over a KV cache given as segments that a runtime can share between sequences;
- ``mellum::moe`` -- top-k routed SwiGLU experts (the contract of ``com.microsoft::MoE``).

``translation_table(portable)`` maps the ops to onnxscript functions: the contrib ops, or the
same computation in standard ONNX ops only (``portable=True``, for runtimes without ORT's contrib
kernels). ``register_contrib_schemas`` copies ORT's own schemas of the contrib ops into
``onnx.defs`` so that onnxscript can build nodes for them.

Legend: B = batch, S = new tokens, P = past positions, T = P + S, H = query heads, K = KV heads,
D = head dim, g = H / K, N = tokens (B * S), E = experts, I = expert width, C = hidden size.
"""

from __future__ import annotations

import math

import onnx
import torch
import torch.nn.functional as F
from onnxscript import values

MSFT = values.Opset("com.microsoft", 1)
OP = values.Opset("", 18)
# ONNX Runtime's contrib ops we emit, by domain (SimplifiedLayerNormalization lives in the ONNX domain).
CONTRIB_OPS = (
    ("com.microsoft", "GroupQueryAttention"),
    ("com.microsoft", "RotaryEmbedding"),
    ("com.microsoft", "MoE"),
    ("com.microsoft", "QMoE"),
    ("com.microsoft", "MatMulNBits"),
    ("com.microsoft", "SkipSimplifiedLayerNormalization"),
    ("", "SimplifiedLayerNormalization"),
)


def register_contrib_schemas(ops: tuple[tuple[str, str], ...] = CONTRIB_OPS) -> None:
    """Register ONNX Runtime's schemas of ``ops`` (domain, name) in ``onnx.defs`` (idempotent)."""
    from onnx.defs import OpSchema
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    wanted = {(d, n) for d, n in ops if not onnx.defs.has(n, d)}
    if not wanted:
        return
    found = {(s.domain, s.name): s for s in ort_c.get_all_operator_schema() if (s.domain, s.name) in wanted}
    missing = wanted - set(found)
    if missing:
        raise RuntimeError(f"this onnxruntime has no schema for {sorted(missing)}")

    def param(p):
        option = OpSchema.FormalParameterOption.__members__[p.option.name]
        return OpSchema.FormalParameter(p.name, p.typeStr, "", param_option=option)

    for s in found.values():
        attributes = [
            OpSchema.Attribute(name, OpSchema.AttrType.__members__[a.type.name], "", required=a.required)
            for name, a in s.attributes.items()
        ]
        onnx.defs.register_schema(
            OpSchema(
                s.name,
                s.domain,
                s.since_version,
                "",
                inputs=[param(p) for p in s.inputs],
                outputs=[param(p) for p in s.outputs],
                type_constraints=[
                    (t.type_param_str, list(t.allowed_type_strs), "") for t in s.type_constraints
                ],
                attributes=attributes,
            )
        )


# ---------------------------------------------------------------------------------------------
# helpers: the same math in torch (eager implementations) and in ONNX ops (portable lowering)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def static_dim(value, axis: int, what: str) -> int:
    dim = value.shape[axis] if value.shape is not None else None
    if not isinstance(dim, int):
        raise ValueError(f"the portable export needs a static {what}, got {dim!r}")
    return dim


def const(v, dtype=torch.int64):
    return OP.Constant(value=onnx.numpy_helper.from_array(torch.tensor(v, dtype=dtype).numpy()))


def _rms_onnx(x, weight, eps: float):
    h = OP.Cast(x, to=onnx.TensorProto.FLOAT)
    ms = OP.ReduceMean(OP.Mul(h, h), const([-1]), keepdims=1)
    normed = OP.Mul(h, OP.Reciprocal(OP.Sqrt(OP.Add(ms, const([eps], torch.float32)))))
    return OP.Mul(weight, OP.CastLike(normed, x))


# ---------------------------------------------------------------------------------------------
# mellum::rms_norm, mellum::add_rms_norm


@torch.library.custom_op("mellum::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis, computed in fp32 (Mellum's ``RMSNorm``)."""
    return _rms(x, weight, eps)


@rms_norm.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape)


@torch.library.custom_op("mellum::add_rms_norm", mutates_args=())
def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pre-norm residual step: s = x + residual -> (rms_norm(s), s)."""
    s = x + residual
    return _rms(s, weight, eps), s


@add_rms_norm.register_fake
def _(x, residual, weight, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape)


def _rms_norm_contrib(x, weight, eps: float):
    return OP.SimplifiedLayerNormalization(x, weight, axis=-1, epsilon=eps, stash_type=1)[0]


def _add_rms_norm_contrib(x, residual, weight, eps: float):
    out = MSFT.SkipSimplifiedLayerNormalization(x, residual, weight, None, epsilon=eps)
    return out[0], out[3]


def _rms_norm_portable(x, weight, eps: float):
    return _rms_onnx(x, weight, eps)


def _add_rms_norm_portable(x, residual, weight, eps: float):
    s = OP.Add(x, residual)
    return _rms_onnx(s, weight, eps), s


# ---------------------------------------------------------------------------------------------
# mellum::group_query_attention


@torch.library.custom_op("mellum::group_query_attention", mutates_args=())
def group_query_attention(
    query: torch.Tensor,
    key: torch.Tensor | None,
    value: torch.Tensor | None,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    seqlens_k: torch.Tensor,
    total_sequence_length: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    position_ids: torch.Tensor,
    q_norm_weight: torch.Tensor | None,
    k_norm_weight: torch.Tensor | None,
    num_heads: int,
    kv_num_heads: int,
    local_window_size: int,
    norm_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """query (B, S, H*D), key/value (B, S, K*D), past (B, K, P, D) -> out (B, S, H*D), present (B, K, T, D).

    Without key and value, query is the packed (B, S, (H + 2K)*D) projection. The S new tokens
    sit at cache rows P..T-1 and at rotary positions ``position_ids``; the query at row r sees the
    keys of rows r-W+1..r (``local_window_size`` = W; -1 = every earlier row). Keys are stored
    after rotary. With ``q_norm_weight``/``k_norm_weight`` the per-head RMSNorm comes first. This
    eager version keeps every past row (it assumes ``seqlens_k`` = T - 1).
    """
    b, s, _ = query.shape
    d, p = past_key.shape[-1], past_key.shape[2]
    if key is None or value is None:
        query, key, value = query.split([num_heads * d, kv_num_heads * d, kv_num_heads * d], dim=-1)
    q = query.reshape(b, s, num_heads, d)
    k = key.reshape(b, s, kv_num_heads, d)
    if q_norm_weight is not None and k_norm_weight is not None:
        q, k = _rms(q, q_norm_weight, norm_eps), _rms(k, k_norm_weight, norm_eps)
    cos = torch.cat([cos_cache[position_ids]] * 2, dim=-1).unsqueeze(1).to(query.dtype)  # (B, 1, S, D)
    sin = torch.cat([sin_cache[position_ids]] * 2, dim=-1).unsqueeze(1).to(query.dtype)
    q = rotate(q.transpose(1, 2), cos, sin)  # (B, H, S, D)
    k = rotate(k.transpose(1, 2), cos, sin).to(past_key.dtype)
    v = value.reshape(b, s, kv_num_heads, d).transpose(1, 2).to(past_value.dtype)
    present_key = torch.cat([past_key, k], dim=2)  # (B, K, T, D), in the cache dtype
    present_value = torch.cat([past_value, v], dim=2)
    rows = torch.arange(p, p + s, device=query.device)[:, None]
    cols = torch.arange(p + s, device=query.device)[None, :]
    allowed = cols <= rows
    if local_window_size > 0:
        allowed &= cols > rows - local_window_size
    keys, values = present_key.to(q.dtype), present_value.to(q.dtype)
    y = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed, enable_gqa=True)
    return y.transpose(1, 2).reshape(b, s, num_heads * d), present_key, present_value


@group_query_attention.register_fake
def _(
    query,
    key,
    value,
    past_key,
    past_value,
    seqlens_k,
    total_sequence_length,
    cos_cache,
    sin_cache,
    position_ids,
    q_norm_weight,
    k_norm_weight,
    num_heads,
    kv_num_heads,
    local_window_size,
    norm_eps,
):
    b, s, _ = query.shape
    kv, p, d = past_key.shape[1], past_key.shape[2], past_key.shape[3]
    return (
        query.new_empty(b, s, num_heads * d),
        past_key.new_empty(b, kv, p + s, d),
        past_value.new_empty(b, kv, p + s, d),
    )


def _gqa_contrib(
    query,
    key,
    value,
    past_key,
    past_value,
    seqlens_k,
    total_sequence_length,
    cos_cache,
    sin_cache,
    position_ids,
    q_norm_weight,
    k_norm_weight,
    num_heads: int,
    kv_num_heads: int,
    local_window_size: int,
    norm_eps: float,
):
    fused_norm = {"qk_norm_epsilon": norm_eps} if q_norm_weight is not None else {}
    return MSFT.GroupQueryAttention(
        query,
        key,
        value,
        past_key,
        past_value,
        seqlens_k,
        total_sequence_length,
        cos_cache,
        sin_cache,
        position_ids,
        None,  # attention_bias
        None,  # head_sink
        None,  # k_scale
        None,  # v_scale
        q_norm_weight,
        k_norm_weight,
        num_heads=num_heads,
        kv_num_heads=kv_num_heads,
        local_window_size=local_window_size,
        do_rotary=1,
        rotary_interleaved=0,
        **fused_norm,
    )


def _gqa_portable(
    query,
    key,
    value,
    past_key,
    past_value,
    seqlens_k,
    total_sequence_length,
    cos_cache,
    sin_cache,
    position_ids,
    q_norm_weight,
    k_norm_weight,
    num_heads: int,
    kv_num_heads: int,
    local_window_size: int,
    norm_eps: float,
):
    """The same attention in standard ONNX ops; the cache is concatenated, so P = past_key's length."""
    half = static_dim(cos_cache, 1, "cos_cache width")
    d, g = 2 * half, num_heads // kv_num_heads
    if key is None:
        sizes = const([num_heads * d, kv_num_heads * d, kv_num_heads * d])
        query, key, value = OP.Split(query, sizes, axis=-1, num_outputs=3)
    q = OP.Transpose(OP.Reshape(query, const([0, 0, num_heads, d])), perm=[0, 2, 1, 3])  # (B, H, S, D)
    k = OP.Transpose(OP.Reshape(key, const([0, 0, kv_num_heads, d])), perm=[0, 2, 1, 3])  # (B, K, S, D)
    v = OP.Transpose(OP.Reshape(value, const([0, 0, kv_num_heads, d])), perm=[0, 2, 1, 3])
    if q_norm_weight is not None:
        q, k = _rms_onnx(q, q_norm_weight, norm_eps), _rms_onnx(k, k_norm_weight, norm_eps)
    cos = OP.Unsqueeze(OP.Concat(*[OP.Gather(cos_cache, position_ids)] * 2, axis=-1), const([1]))  # (B,1,S,D)
    sin = OP.Unsqueeze(OP.Concat(*[OP.Gather(sin_cache, position_ids)] * 2, axis=-1), const([1]))

    def rotate(x):
        x1 = OP.Slice(x, const([0]), const([half]), const([3]))
        x2 = OP.Slice(x, const([half]), const([d]), const([3]))
        return OP.Add(OP.Mul(x, cos), OP.Mul(OP.Concat(OP.Neg(x2), x1, axis=-1), sin))

    q, k = rotate(q), rotate(k)
    present_key = OP.Concat(past_key, k, axis=2)  # (B, K, T, D)
    present_value = OP.Concat(past_value, v, axis=2)
    # Query heads h = i*g + j share KV head i: group them as (B, K, g*S, D), rows j*S + s.
    qg = OP.Reshape(q, const([0, kv_num_heads, -1, d]))
    scores = OP.Mul(
        OP.MatMul(qg, OP.Transpose(present_key, perm=[0, 1, 3, 2])),
        OP.CastLike(const([1.0 / math.sqrt(d)], torch.float32), query),
    )  # (B, K, g*S, T)
    past = OP.Shape(past_key, start=2, end=3)
    new = OP.Shape(query, start=1, end=2)
    total = OP.Add(past, new)
    q_pos = OP.Tile(OP.Range(OP.Squeeze(past), OP.Squeeze(total), const(1)), const([g]))  # (g*S,)
    k_pos = OP.Range(const(0), OP.Squeeze(total), const(1))  # (T,)
    rows, cols = OP.Unsqueeze(q_pos, const([1])), OP.Unsqueeze(k_pos, const([0]))
    allowed = OP.LessOrEqual(cols, rows)
    if local_window_size > 0:
        allowed = OP.And(allowed, OP.Greater(cols, OP.Sub(rows, const(local_window_size))))
    masked = OP.CastLike(const([-1e30], torch.float32), scores)  # -inf in fp16: a query always sees itself
    probs = OP.Softmax(OP.Where(allowed, scores, masked), axis=-1)
    y = OP.MatMul(probs, present_value)  # (B, K, g*S, D)
    y = OP.Transpose(OP.Reshape(y, const([0, num_heads, -1, d])), perm=[0, 2, 1, 3])  # (B, S, H, D)
    return OP.Reshape(y, const([0, 0, num_heads * d])), present_key, present_value


# ---------------------------------------------------------------------------------------------
# mellum::moe


def interleave_gate_up(gate_up: torch.Tensor) -> torch.Tensor:
    """(E, 2I, C) as [gate; up] -> rows g0, u0, g1, u1, ... (ORT's ``swiglu_fusion=1`` layout)."""
    e, two_i, c = gate_up.shape
    gate, up = gate_up.view(e, 2, two_i // 2, c).unbind(1)
    return torch.stack([gate, up], dim=2).reshape(e, two_i, c)


@torch.library.custom_op("mellum::moe", mutates_args=())
def moe(
    x: torch.Tensor,
    router_logits: torch.Tensor,
    fc1: torch.Tensor,
    fc2: torch.Tensor,
    top_k: int,
    normalize: bool,
) -> torch.Tensor:
    """x (N, C), router logits (N, E), fc1 (E, 2I, C) gate/up interleaved, fc2 (E, C, I) -> (N, C).

    Softmax over all E logits in fp32 -> top-k -> renormalised when ``normalize``; each expert is
    ``fc2 @ (silu(gate) * up)``.
    """
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, experts = torch.topk(probs, top_k, dim=-1)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    dense = torch.zeros_like(probs).scatter(1, experts, weights).to(x.dtype)  # (N, E)
    h = torch.einsum("eoc,nc->eno", fc1, x)  # (E, N, 2I)
    act = F.silu(h[..., 0::2]) * h[..., 1::2]  # (E, N, I)
    out = torch.einsum("eci,eni->enc", fc2, act)  # (E, N, C)
    return torch.einsum("enc,ne->nc", out, dense)


@moe.register_fake
def _(x, router_logits, fc1, fc2, top_k, normalize):
    return x.new_empty(x.shape)


def _moe_contrib(x, router_logits, fc1, fc2, top_k: int, normalize: bool):
    return MSFT.MoE(
        x,
        router_logits,
        fc1,
        None,
        fc2,
        k=top_k,
        activation_type="swiglu",
        swiglu_fusion=1,
        activation_alpha=1.0,
        activation_beta=0.0,
        normalize_routing_weights=int(normalize),
    )


def _moe_portable(x, router_logits, fc1, fc2, top_k: int, normalize: bool):
    """Every expert runs on every token and the routing weights zero the unchosen ones (E/k x the work)."""
    probs = OP.Softmax(OP.Cast(router_logits, to=onnx.TensorProto.FLOAT), axis=-1)  # (N, E)
    weights, experts = OP.TopK(probs, const([top_k]), axis=-1)
    if normalize:
        weights = OP.Div(weights, OP.ReduceSum(weights, const([-1]), keepdims=1))
    dense = OP.ScatterElements(OP.Mul(probs, const([0.0], torch.float32)), experts, weights, axis=1)
    dense = OP.CastLike(OP.Unsqueeze(OP.Transpose(dense, perm=[1, 0]), const([1])), x)  # (E, 1, N)
    h = OP.MatMul(fc1, OP.Transpose(x, perm=[1, 0]))  # (E, 2I, N)
    big = const([2**62])
    gate = OP.Slice(h, const([0]), big, const([1]), const([2]))
    up = OP.Slice(h, const([1]), big, const([1]), const([2]))
    act = OP.Mul(OP.Mul(gate, OP.Sigmoid(gate)), up)  # (E, I, N)
    out = OP.ReduceSum(OP.Mul(OP.MatMul(fc2, act), dense), const([0]), keepdims=0)  # (C, N)
    return OP.Transpose(out, perm=[1, 0])


def translation_table(portable: bool = False) -> dict:
    """``custom_translation_table`` for ``torch.onnx.export``: contrib ops, or standard ops only."""
    from . import paged_ops  # noqa: F401 -- registers mellum::paged_attention and its prefill twin

    register_contrib_schemas()
    mellum = torch.ops.mellum
    if portable:
        return {
            mellum.rms_norm.default: _rms_norm_portable,
            mellum.add_rms_norm.default: _add_rms_norm_portable,
            mellum.group_query_attention.default: _gqa_portable,
            mellum.moe.default: _moe_portable,
        }
    return {
        mellum.rms_norm.default: _rms_norm_contrib,
        mellum.add_rms_norm.default: _add_rms_norm_contrib,
        mellum.group_query_attention.default: _gqa_contrib,
        mellum.paged_attention.default: paged_ops.paged_attention_contrib,
        mellum.segment_prefill_attention.default: paged_ops.segment_prefill_contrib,
        mellum.moe.default: _moe_contrib,
    }
