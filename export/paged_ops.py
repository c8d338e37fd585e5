"""Attention over a paged KV cache: custom torch ops for the export path and their ONNX lowerings.

- ``mellum::paged_attention`` -- GQA over a KV cache given as segments (views of the first
  ``past_lengths[j]`` rows of each bound buffer, read in place) plus the new rows, which it
  returns in the cache dtype for the runtime to store; an optional window, or the runtime's
  additive mask. Lowered to ``com.microsoft::RotaryEmbedding`` and standard ops (one MatMul per
  segment, one softmax), so a runtime can share KV pages between sequences without ever
  concatenating them.
- ``mellum::segment_prefill_attention`` -- the same for long chunks, lowered to one
  GroupQueryAttention over the segments concatenated (its scores tiled inside the kernel).

``paged_attention_contrib`` and ``segment_prefill_contrib`` are the lowerings that
``export.ops.translation_table`` maps the ops to. Legend as in ``export.ops``.
"""

from __future__ import annotations

import math

import onnx
import torch
import torch.nn.functional as F

from .ops import MSFT, OP, const, rotate, static_dim


@torch.library.custom_op("mellum::paged_attention", mutates_args=())
def paged_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_keys: list[torch.Tensor],
    past_values: list[torch.Tensor],
    past_lengths: torch.Tensor,
    past_start: torch.Tensor,
    extra_key: torch.Tensor | None,
    extra_value: torch.Tensor | None,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    position_ids: torch.Tensor,
    bias: torch.Tensor | None,
    num_heads: int,
    kv_num_heads: int,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """query (1, S, H*D), key/value (1, S, K*D) (q/k normed, not rotated) -> out (1, S, H*D), and the
    new key rows (after rotary) and value rows (1, K, S, D) in the cache dtype.

    Keys, in position order: rows [0, past_lengths[j]) of each ``past_keys[j]`` (1, K, C_j, D),
    from position ``past_start``; then ``extra_key`` (1, K, E, D), already rotated, in the compute
    dtype (rows an unrolled graph made and does not store); then the new rows, read back from the
    cache dtype so that attention sees what is stored. A query at position q sees keys at
    positions <= q, and only the last ``window`` of them when window > 0. Batch 1.

    ``bias`` (S, C_0 + ... + E + S), when given, replaces that rule: an additive mask (0 or -inf)
    over every bound row, spare capacity included, which the runtime builds once per run rather
    than each layer building it from the lengths and positions.
    """
    b, s, _ = query.shape
    d = 2 * cos_cache.shape[1]
    cos = torch.cat([cos_cache[position_ids]] * 2, dim=-1).unsqueeze(2).to(query.dtype)  # (1, S, 1, D)
    sin = torch.cat([sin_cache[position_ids]] * 2, dim=-1).unsqueeze(2).to(query.dtype)
    q = rotate(query.reshape(b, s, num_heads, d), cos, sin).transpose(1, 2)  # (1, H, S, D)
    k = rotate(key.reshape(b, s, kv_num_heads, d), cos, sin).transpose(1, 2)  # (1, K, S, D)
    v = value.reshape(b, s, kv_num_heads, d).transpose(1, 2)
    cache = past_keys[0].dtype
    key_rows, value_rows = k.to(cache, copy=True), v.to(cache, copy=True)  # outputs may not alias inputs
    lengths = [pk.shape[2] for pk in past_keys] if bias is not None else [int(n) for n in past_lengths]
    keys = [pk[:, :, :n].to(query.dtype) for pk, n in zip(past_keys, lengths, strict=True)]
    values = [pv[:, :, :n].to(query.dtype) for pv, n in zip(past_values, lengths, strict=True)]
    if extra_key is not None and extra_value is not None:
        keys.append(extra_key)
        values.append(extra_value)
    keys.append(key_rows.to(query.dtype))
    values.append(value_rows.to(query.dtype))
    k_all, v_all = torch.cat(keys, dim=2), torch.cat(values, dim=2)  # (1, K, T, D)
    if bias is not None:
        allowed = bias.to(query.dtype)
    else:
        q_pos = position_ids[0][:, None]
        k_pos = int(past_start[0]) + torch.arange(k_all.shape[2])[None, :]
        allowed = k_pos <= q_pos
        if window > 0:
            allowed &= k_pos > q_pos - window
    y = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=allowed, enable_gqa=True)
    return y.transpose(1, 2).reshape(b, s, num_heads * d), key_rows, value_rows


@paged_attention.register_fake
def _(
    query,
    key,
    value,
    past_keys,
    past_values,
    past_lengths,
    past_start,
    extra_key,
    extra_value,
    cos_cache,
    sin_cache,
    position_ids,
    bias,
    num_heads,
    kv_num_heads,
    window,
):
    b, s, _ = query.shape
    d = 2 * cos_cache.shape[1]
    rows = past_keys[0].new_empty(b, kv_num_heads, s, d)
    return query.new_empty(b, s, num_heads * d), rows, past_values[0].new_empty(rows.shape)


def paged_attention_contrib(
    query,
    key,
    value,
    past_keys,
    past_values,
    past_lengths,
    past_start,
    extra_key,
    extra_value,
    cos_cache,
    sin_cache,
    position_ids,
    bias,
    num_heads: int,
    kv_num_heads: int,
    window: int,
):
    """One MatMul per segment (read in place, rows past its length masked), one softmax over all."""
    half = static_dim(cos_cache, 1, "cos_cache width")
    d, g = 2 * half, num_heads // kv_num_heads
    to_bnsd = [0, 2, 1, 3]
    q = MSFT.RotaryEmbedding(query, position_ids, cos_cache, sin_cache, num_heads=num_heads, interleaved=0)
    k = MSFT.RotaryEmbedding(key, position_ids, cos_cache, sin_cache, num_heads=kv_num_heads, interleaved=0)
    k = OP.Transpose(OP.Reshape(k, const([0, 0, kv_num_heads, d])), perm=to_bnsd)  # (1, K, S, D)
    v = OP.Transpose(OP.Reshape(value, const([0, 0, kv_num_heads, d])), perm=to_bnsd)
    cache_type = past_keys[0].dtype
    same = cache_type == query.dtype
    key_rows = k if same else OP.Cast(k, to=cache_type)
    value_rows = v if same else OP.Cast(v, to=cache_type)
    k_new = k if same else OP.CastLike(key_rows, query)  # attention reads what is stored
    v_new = v if same else OP.CastLike(value_rows, query)
    qg = OP.Reshape(
        OP.Transpose(OP.Reshape(q, const([0, 0, num_heads, d])), perm=to_bnsd),
        const([0, kv_num_heads, -1, d]),
    )  # (1, K, g*S, D): query head h = i*g + j at row j*S + s of KV head i
    qg = OP.Mul(qg, OP.CastLike(const([1.0 / math.sqrt(d)], torch.float32), query))

    def scores(keys):
        return OP.MatMul(qg, OP.Transpose(keys, perm=[0, 1, 3, 2]))  # (1, K, g*S, rows)

    parts, vals, pos, valid, sizes = [], [], [], [], []
    offset = past_start  # [1]: position of the next segment's first row
    for j, (pk, pv) in enumerate(zip(past_keys, past_values, strict=True)):
        rows = OP.Shape(pk, start=2, end=3)  # [1]: capacity of the bound buffer
        parts.append(scores(pk if same else OP.CastLike(pk, query)))
        vals.append(pv if same else OP.CastLike(pv, query))
        sizes.append(rows)
        if bias is None:
            index = OP.Range(const(0), OP.Squeeze(rows), const(1))
            n = OP.Slice(past_lengths, const([j]), const([j + 1]))
            pos.append(OP.Add(index, offset))
            valid.append(OP.Less(index, n))
            offset = OP.Add(offset, n)
    q_pos = OP.Reshape(position_ids, const([-1]))  # (S,)
    new = OP.Shape(q_pos)
    true = OP.Cast(const(1), to=onnx.TensorProto.BOOL)
    if extra_key is not None:
        e = OP.Shape(extra_key, start=2, end=3)
        first = OP.Sub(OP.Slice(q_pos, const([0]), const([1])), e)
        parts.append(scores(extra_key))
        vals.append(extra_value)
        pos.append(OP.Add(OP.Range(const(0), OP.Squeeze(e), const(1)), first))
        valid.append(OP.Expand(true, e))
        sizes.append(e)
    parts.append(scores(k_new))
    vals.append(v_new)
    pos.append(q_pos)
    valid.append(OP.Expand(true, new))
    sizes.append(new)
    if bias is not None:  # the runtime's mask, rows j*S + s of every KV head's group alike
        probs = OP.Softmax(
            OP.Add(OP.Concat(*parts, axis=-1), OP.Tile(OP.CastLike(bias, query), const([g, 1]))), axis=-1
        )
    else:
        k_pos = OP.Unsqueeze(OP.Concat(*pos, axis=0), const([0]))  # (1, T)
        rows_pos = OP.Unsqueeze(q_pos, const([1]))  # (S, 1)
        allowed = OP.And(OP.Unsqueeze(OP.Concat(*valid, axis=0), const([0])), OP.LessOrEqual(k_pos, rows_pos))
        if window > 0:
            allowed = OP.And(allowed, OP.Greater(k_pos, OP.Sub(rows_pos, const(window))))
        allowed = OP.Tile(allowed, const([g, 1]))  # (g*S, T)
        masked = OP.CastLike(const([-1e30], torch.float32), query)
        probs = OP.Softmax(OP.Where(allowed, OP.Concat(*parts, axis=-1), masked), axis=-1)
    out, begin = None, const([0])
    for size, rows_v in zip(sizes, vals, strict=True):
        end = OP.Add(begin, size)
        term = OP.MatMul(OP.Slice(probs, begin, end, const([3])), rows_v)  # (1, K, g*S, D)
        out = term if out is None else OP.Add(out, term)
        begin = end
    y = OP.Transpose(OP.Reshape(out, const([0, num_heads, -1, d])), perm=to_bnsd)  # (1, S, H, D)
    return OP.Reshape(y, const([0, 0, num_heads * d])), key_rows, value_rows


@torch.library.custom_op("mellum::segment_prefill_attention", mutates_args=())
def segment_prefill_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    past_keys: list[torch.Tensor],
    past_values: list[torch.Tensor],
    past_lengths: torch.Tensor,
    past_start: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    position_ids: torch.Tensor,
    num_heads: int,
    kv_num_heads: int,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``paged_attention`` (no extra rows) for long chunks: the same result, lowered to one
    GroupQueryAttention over the segments' rows concatenated (a copy of the cache per call, which a
    long chunk amortises) so that the scores are tiled inside the kernel instead of materialised."""
    return paged_attention(query, key, value, past_keys, past_values, past_lengths, past_start, None, None,
                           cos_cache, sin_cache, position_ids, None, num_heads, kv_num_heads, window)  # fmt: skip


@segment_prefill_attention.register_fake
def _(query, key, value, past_keys, past_values, past_lengths, past_start, cos_cache, sin_cache, position_ids,
      num_heads, kv_num_heads, window):  # fmt: skip
    b, s, _ = query.shape
    d = 2 * cos_cache.shape[1]
    rows = past_keys[0].new_empty(b, kv_num_heads, s, d)
    return query.new_empty(b, s, num_heads * d), rows, past_values[0].new_empty(rows.shape)


def segment_prefill_contrib(
    query,
    key,
    value,
    past_keys,
    past_values,
    past_lengths,
    past_start,
    cos_cache,
    sin_cache,
    position_ids,
    num_heads: int,
    kv_num_heads: int,
    window: int,
):
    """Rotary and the rounding to the cache dtype first (GroupQueryAttention would attend to the
    unrounded new rows and rotate after), then the op on the concatenated segments (do_rotary=0)."""
    half = static_dim(cos_cache, 1, "cos_cache width")
    d = 2 * half
    to_bnsd = [0, 2, 1, 3]
    q = MSFT.RotaryEmbedding(query, position_ids, cos_cache, sin_cache, num_heads=num_heads, interleaved=0)
    k = MSFT.RotaryEmbedding(key, position_ids, cos_cache, sin_cache, num_heads=kv_num_heads, interleaved=0)
    cache_type = past_keys[0].dtype
    same = cache_type == query.dtype
    k_store = k if same else OP.Cast(k, to=cache_type)  # (1, S, K*D)
    v_store = value if same else OP.Cast(value, to=cache_type)
    k_att = k if same else OP.CastLike(k_store, query)
    v_att = value if same else OP.CastLike(v_store, query)
    shape = const([0, 0, kv_num_heads, d])
    key_rows = OP.Transpose(OP.Reshape(k_store, shape), perm=to_bnsd)  # (1, K, S, D)
    value_rows = OP.Transpose(OP.Reshape(v_store, shape), perm=to_bnsd)
    axis = const([2])
    keys, values = [], []
    for j, (pk, pv) in enumerate(zip(past_keys, past_values, strict=True)):
        n = OP.Slice(past_lengths, const([j]), const([j + 1]))
        keys.append(OP.Slice(pk, const([0]), n, axis))
        values.append(OP.Slice(pv, const([0]), n, axis))
    past_k = keys[0] if len(keys) == 1 else OP.Concat(*keys, axis=2)  # (1, K, P, D)
    past_v = values[0] if len(values) == 1 else OP.Concat(*values, axis=2)
    total = OP.Add(OP.ReduceSum(past_lengths, keepdims=0), OP.Shape(query, start=1, end=2))  # [1]: P + S
    seqlens = OP.Cast(OP.Sub(total, const([1])), to=onnx.TensorProto.INT32)
    total = OP.Cast(OP.Squeeze(total), to=onnx.TensorProto.INT32)
    out = MSFT.GroupQueryAttention(
        q,
        k_att,
        v_att,
        past_k,
        past_v,
        seqlens,
        total,
        num_heads=num_heads,
        kv_num_heads=kv_num_heads,
        local_window_size=window,
        do_rotary=0,
    )[0]
    return out, key_rows, value_rows
