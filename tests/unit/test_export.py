"""``mellum-lsp export``: the custom ops, the graphs it writes, the folder, and its failure modes."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hf_reference import FULL, SLIDING
from onnx import TensorProto
from onnx import helper as oh
from test_export_fixtures import export_once

from engine.backends.ort_backend import OrtBackend
from engine.backends.torch_backend import TorchBackend
from engine.checkpoint import load_model
from engine.generate import SamplingParams, generate
from export import ops, paged_ops
from export.cli import main as export_main
from export.onnx_export import ExportOptions, MellumForExport
from export.quantize import dequantize_blockwise, quantize_blockwise

W = 8  # sliding_window of the tiny checkpoints


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory):
    """exports(name, *cli_args) -> the folder ``mellum-lsp export`` wrote (once per test run)."""
    return lambda *args, **overrides: export_once(checkpoints, tmp_path_factory, *args, **overrides)


def _graph(folder, name="model.onnx"):
    return onnx.load(str(folder / name), load_external_data=False).graph


def _nodes(graph):
    """Every node of ``graph``, those of its If branches included."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(a.g)


def _attr(node, name, default=None):
    return next((oh.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _session(folder, name="model.onnx", **config):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for k, v in config.items():
        so.add_session_config_entry(k, v)
    return ort.InferenceSession(str(folder / name), so, providers=["CPUExecutionProvider"])


_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _prefill_feeds(config, ids, sess=None):
    """Feeds of a prompt with an empty cache: every past input of ``sess`` (by default the
    contiguous layout's) empty, in its dtype; no segment rows counted."""
    n = len(ids)
    feeds = {
        "input_ids": np.array([ids], np.int64),
        "attention_mask": np.ones((1, n), np.int64),
        "position_ids": np.arange(n, dtype=np.int64)[None],
    }
    empty = (1, config.num_kv_heads, 0, config.head_dim)
    if sess is None:
        for i in range(config.num_layers):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = np.zeros(empty, np.float32)
        return feeds
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            feeds[i.name] = np.zeros(empty, _NP[i.type])
        elif i.name == "past_lengths":
            feeds[i.name] = np.zeros(i.shape, np.int64)
        elif i.name == "attention_bias":  # read by few-token runs only
            feeds[i.name] = np.zeros((n, n), np.float32) + np.triu(np.full((n, n), -1e30, np.float32), 1)
    return feeds


def _torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]), torch.arange(len(ids))[None]).logits[0].numpy()


def _ids(n, vocab=160, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, n).tolist()


# -- the GroupQueryAttention facts the export relies on (DESIGN.md §4), on this ORT version ----


def _gqa_session(window: int, heads=4, kv_heads=2, head_dim=16, qk_norm=False):
    names = ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total", "cos", "sin", "pos"]
    types = [TensorProto.FLOAT] * 5 + [TensorProto.INT32] * 2 + [TensorProto.FLOAT] * 2 + [TensorProto.INT64]
    inputs = names + (["", "", "", "", "q_norm", "k_norm"] if qk_norm else [])
    node = oh.make_node(
        "GroupQueryAttention",
        inputs,
        ["out", "present_key", "present_value"],
        domain="com.microsoft",
        num_heads=heads,
        kv_num_heads=kv_heads,
        local_window_size=window,
        do_rotary=1,
    )
    if qk_norm:
        names, types = names + ["q_norm", "k_norm"], types + [TensorProto.FLOAT] * 2
    graph = oh.make_graph(
        [node],
        "gqa",
        [oh.make_tensor_value_info(n, t, None) for n, t in zip(names, types, strict=True)],
        [oh.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node.output],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _one_token_feeds(heads=4, kv_heads=2, d=16):
    return {
        "query": np.zeros((1, 1, heads * d), np.float32),
        "key": np.zeros((1, 1, kv_heads * d), np.float32),
        "value": np.zeros((1, 1, kv_heads * d), np.float32),
        "past_key": np.zeros((1, kv_heads, 0, d), np.float32),
        "past_value": np.zeros((1, kv_heads, 0, d), np.float32),
        "seqlens_k": np.array([0], np.int32),
        "total": np.array(1, np.int32),
        "cos": np.ones((8, d // 2), np.float32),
        "sin": np.zeros((8, d // 2), np.float32),
        "pos": np.zeros((1, 1), np.int64),
    }


@pytest.mark.parametrize("window", [1, 3, 8])
def test_gqa_local_window_sees_w_keys_including_itself(window):
    """Uniform attention (q = 0) over one-hot values reveals exactly which keys each query saw."""
    heads, kv_heads, d, n = 4, 2, 16, 12
    sess = _gqa_session(window, heads, kv_heads, d)
    values = np.zeros((1, n, kv_heads, d), np.float32)
    values[0, np.arange(n), :, np.arange(n)] = 1.0  # value of position p = e_p (n <= d)
    zeros_cache = np.zeros((64, d // 2), np.float32)
    out = sess.run(
        None,
        {
            "query": np.zeros((1, n, heads * d), np.float32),
            "key": np.random.default_rng(0).standard_normal((1, n, kv_heads * d)).astype(np.float32),
            "value": values.reshape(1, n, kv_heads * d),
            "past_key": np.zeros((1, kv_heads, 0, d), np.float32),
            "past_value": np.zeros((1, kv_heads, 0, d), np.float32),
            "seqlens_k": np.array([n - 1], np.int32),
            "total": np.array(n, np.int32),
            "cos": np.ones((64, d // 2), np.float32),
            "sin": zeros_cache,
            "pos": np.arange(n, dtype=np.int64)[None],
        },
    )[0]
    weights = out.reshape(n, heads, d)[:, 0, :n]  # (query, key position)
    for q in range(n):
        seen = list(range(max(0, q - window + 1), q + 1))
        expected = np.zeros(n)
        expected[seen] = 1 / len(seen)
        np.testing.assert_allclose(weights[q], expected, atol=1e-6)


def test_gqa_head_size_constraint_and_cpu_rejects_fused_qk_norm():
    with pytest.raises(Exception, match="multiple of 16"):  # do_rotary=1 needs head_size % 16 == 0
        _gqa_session(4, head_dim=24).run(None, _one_token_feeds(d=24))
    feeds = {**_one_token_feeds(), "q_norm": np.ones(16, np.float32), "k_norm": np.ones(16, np.float32)}
    with pytest.raises(Exception, match="q_norm_weight"):  # hence the q/k norms outside the op on CPU
        _gqa_session(4, qk_norm=True).run(None, feeds)
    assert _gqa_session(4).run(None, _one_token_feeds())[0].shape == (1, 1, 64)


# -- the export path in torch ------------------------------------------------------------------


@pytest.mark.parametrize("target", ["cpu", "cuda"])  # cuda: packed QKV and q/k norms inside the op
@pytest.mark.parametrize("layout", ["paged", "contiguous"])
def test_export_wrapper_with_eager_custom_ops_matches_the_model(checkpoints, target, layout):
    model = load_model(checkpoints("default"))
    c = model.config
    options = ExportOptions(target=target, kv_layout=layout, kv_dtype="fp32")
    wrapper = MellumForExport(model, options)
    ids = _ids(21)
    empty = torch.zeros(1, c.num_kv_heads, 0, c.head_dim)
    past = []
    for t in c.layer_types:  # a paged full layer reads kv_segments (empty) segments
        past += [empty, empty] * (options.kv_segments if layout == "paged" and t == FULL else 1)
    with torch.no_grad():
        logits, hidden, *presents = wrapper(
            torch.tensor([ids]),
            torch.ones(1, 21, dtype=torch.long),
            torch.arange(21)[None],
            torch.zeros(1, dtype=torch.long),
            torch.zeros(options.kv_segments, dtype=torch.long),
            None,  # attention_bias: none, the layers mask by lengths and positions
            past,
        )
        want = model(torch.tensor([ids]), torch.arange(21)[None])
    assert (logits - want.logits).abs().max() < 1e-5
    assert (hidden - want.hidden).abs().max() < 1e-5
    assert all(p.shape == (1, c.num_kv_heads, 21, c.head_dim) for p in presents)


def test_paged_attention_reads_segments_in_place_and_matches_one_buffer():
    """Keys split over segments (rows past a segment's length ignored), extra rows and a window give
    the same attention as one contiguous cache; the new rows come back in the cache dtype."""
    g = torch.Generator().manual_seed(0)
    heads, kv, d, s, past = 4, 2, 16, 3, 11
    q, k, v = (torch.randn(1, s, n * d, generator=g) for n in (heads, kv, kv))
    keys, values = torch.randn(1, kv, past, d, generator=g), torch.randn(1, kv, past, d, generator=g)
    cos, sin = torch.randn(64, d // 2, generator=g), torch.randn(64, d // 2, generator=g)
    pos = torch.arange(20 + past, 20 + past + s)[None]
    for window in (-1, 6):
        one = paged_ops.paged_attention(q, k, v, [keys], [values], torch.tensor([past]), torch.tensor([20]), None,
                                  None, cos, sin, pos, None, heads, kv, window)  # fmt: skip
        pad = torch.full((1, kv, 5, d), 1e4)  # spare capacity holding another sequence's rows
        seg_k = [torch.cat([keys[:, :, :4], pad], 2), torch.cat([keys[:, :, 4:9], pad], 2)]
        seg_v = [torch.cat([values[:, :, :4], pad], 2), torch.cat([values[:, :, 4:9], pad], 2)]
        split = paged_ops.paged_attention(q, k, v, seg_k, seg_v, torch.tensor([4, 5]), torch.tensor([20]),
                                    keys[:, :, 9:], values[:, :, 9:], cos, sin, pos, None, heads, kv, window)  # fmt: skip
        assert (one[0] - split[0]).abs().max() < 1e-5, window
        assert torch.equal(one[1], split[1]) and torch.equal(one[2], split[2])
    # the runtime's additive mask over every bound row gives the same as the lengths and positions
    pad = torch.full((1, kv, 5, d), 1e4)
    seg_k = [torch.cat([keys[:, :, :4], pad], 2), torch.cat([keys[:, :, 4:9], pad], 2)]
    seg_v = [torch.cat([values[:, :, :4], pad], 2), torch.cat([values[:, :, 4:9], pad], 2)]
    pos9 = torch.arange(9, 9 + s)[None]
    masked = paged_ops.paged_attention(q, k, v, seg_k, seg_v, torch.tensor([4, 5]), torch.tensor([0]), None, None,
                                 cos, sin, pos9, None, heads, kv, -1)  # fmt: skip
    bias = torch.full((s, 9 + 10 + s), -1e30)
    bias[:, :4], bias[:, 9:14] = 0, 0
    bias[:, 19:] = torch.triu(torch.full((s, s), -1e30), 1)
    biased = paged_ops.paged_attention(q, k, v, seg_k, seg_v, torch.tensor([4, 5]), torch.tensor([0]), None, None,
                                 cos, sin, pos9, bias, heads, kv, -1)  # fmt: skip
    assert (masked[0] - biased[0]).abs().max() < 1e-5
    half = paged_ops.paged_attention(q, k, v, [keys.half()], [values.half()], torch.tensor([past]), torch.tensor([20]),
                               None, None, cos, sin, pos, None, heads, kv, -1)  # fmt: skip
    assert half[1].dtype == torch.float16 and half[0].dtype == torch.float32


def test_interleave_gate_up_and_blockwise_quantisation_round_trip():
    gate_up = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # E=2, I=2, C=3
    inter = ops.interleave_gate_up(gate_up)
    assert torch.equal(inter[0, 0], gate_up[0, 0]) and torch.equal(inter[0, 1], gate_up[0, 2])
    assert torch.equal(inter[1, 3], gate_up[1, 3])
    w = np.random.default_rng(0).standard_normal((24, 64)).astype(np.float32)
    for bits in (4, 8):
        for symmetric in (False, True):
            packed, scale, zero = quantize_blockwise(w, bits, symmetric=symmetric)
            assert packed.shape == (24, 2, 32 * bits // 8) and scale.shape == (24, 2)
            err = np.abs(dequantize_blockwise(packed, scale, zero, bits) - w).reshape(24, 2, 32)
            assert (err <= scale[..., None] * (0.5 if not symmetric else 1.0) + 1e-6).all()


# -- the exported folder -----------------------------------------------------------------------


@pytest.mark.slow
def test_folder_layout_and_report(exports, checkpoints):
    out = exports()
    for name in ("model.onnx", "model.onnx.data", "mtp.onnx", "config.json"):
        assert (out / name).is_file(), name
    assert not (out / "genai_config.json").exists()  # genai cannot bind paged segments
    report = json.loads((out / "export_report.json").read_text())
    # against PyTorch with the same fp16 KV cache (the rounding of a key can differ by one ulp)
    assert report["verify"]["max_abs"] <= 1e-3 and report["verify"]["mtp_drafts_equal"]
    exact = json.loads((exports("default", "--kv-dtype", "fp32") / "export_report.json").read_text())
    assert exact["verify"]["max_abs"] <= 1e-4 and exact["verify"]["mtp_drafts_equal"]
    out = exports("default", "--kv-layout", "contiguous")
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["model"]["type"] == "decoder"
    assert genai["model"]["decoder"]["inputs"]["past_key_names"] == "past_key_values.%d.key"
    assert genai["model"]["decoder"]["outputs"]["present_value_names"] == "present.%d.value"
    assert not list(out.parent.glob(".export.partial-*"))


@pytest.mark.slow
def test_graph_has_gqa_with_window_per_layer_and_moe(exports, checkpoints):
    config = load_model(checkpoints("default")).config
    graph = _graph(exports("default", "--kv-layout", "contiguous"))
    gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert all(n.domain == "com.microsoft" for n in gqa)
    assert [_attr(n, "local_window_size") for n in gqa] == [
        W if t == SLIDING else -1 for t in config.layer_types
    ]
    assert all(_attr(n, "do_rotary") == 1 and len(n.input) <= 10 for n in gqa)  # q/k norm not fused on CPU
    # each layer type has its own rotary caches (YaRN only on the full layers)
    cos = {t: n.input[7] for n, t in zip(gqa, config.layer_types, strict=True)}
    assert cos[SLIDING] != cos[FULL]
    moe = [n for n in graph.node if n.op_type == "MoE"]
    assert len(moe) == config.mlp_layer_types.count("sparse")
    for n in moe:
        assert (_attr(n, "activation_type"), _attr(n, "swiglu_fusion"), _attr(n, "k")) == (b"swiglu", 1, 2)
        assert _attr(n, "normalize_routing_weights") == 1 and _attr(n, "activation_alpha") == 1.0
    inputs = [i.name for i in graph.input]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert {"sliding_cache_start", "num_logits_to_keep"} <= {i.name for i in graph.initializer}
    outputs = [o.name for o in graph.output]
    assert outputs[:2] == ["logits", "hidden_states"] and "present.3.value" in outputs
    mtp = _graph(exports("default", "--kv-layout", "contiguous"), "mtp.onnx")
    assert [n.op_type for n in mtp.node].count("GroupQueryAttention") == 1
    assert [o.name for o in mtp.output][:2] == ["logits", "hidden_states_out"]


@pytest.mark.slow
def test_paged_graph_reads_full_layers_as_segments_and_drafts_in_one_call(exports, checkpoints):
    config = load_model(checkpoints("default")).config
    out = exports()
    graph = _graph(out)
    gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == config.layer_types.count(SLIDING)  # sliding layers keep the in-place op
    assert all(_attr(n, "local_window_size") == W for n in gqa)
    inputs = {i.name: i for i in graph.input}
    full = config.layer_types.index(FULL)
    for j in range(2):  # kv_segments, fp16 (the default KV dtype of full layers)
        for kind in ("key", "value"):
            x = inputs[f"past_key_values.{full}.{kind}.{j}"]
            assert x.type.tensor_type.elem_type == TensorProto.FLOAT16
    assert inputs["past_key_values.0.key"].type.tensor_type.elem_type == TensorProto.FLOAT  # sliding
    assert "past_lengths" in inputs
    # per full layer: an If between the MatMul attention over the segments (a few new tokens) and
    # GroupQueryAttention over them concatenated (a long chunk), each rotating q and k
    assert sum(n.op_type == "If" for n in graph.node) == config.layer_types.count(FULL)
    assert sum(n.op_type == "RotaryEmbedding" for n in _nodes(graph)) == 4 * config.layer_types.count(FULL)
    meta = json.loads({p.key: p.value for p in onnx.load(str(out / "model.onnx"), load_external_data=False)
                       .metadata_props}["mellum.export"])  # fmt: skip
    assert (meta["kv_cache"], meta["kv_dtype"], meta["kv_segments"]) == ("paged", "fp16", 2)
    mtp = _graph(out, "mtp.onnx")
    assert [o.name for o in mtp.output] == ["drafts", "present.0.key", "present.0.value", "hidden_states_out"]
    assert sum(n.op_type == "ArgMax" for n in mtp.node) == 3  # --mtp-drafts 3, unrolled


@pytest.mark.slow
def test_onnx_prefill_and_mtp_match_torch(exports, checkpoints):
    model = load_model(checkpoints("default"))
    c = model.config
    ids = _ids(3 * W + 5)
    paged = exports("default", "--kv-dtype", "fp32")  # bit-level parity: fp32 KV (fp16 rounds the keys)
    for out in (paged, exports("default", "--kv-layout", "contiguous")):
        sess = _session(out)
        logits, hidden = sess.run(["logits", "hidden_states"], _prefill_feeds(c, ids, sess))
        assert np.abs(logits[0] - _torch_logits(model, ids)).max() <= 1e-4
    # the MTP graph on the main model's hidden states: entry p reads token p and hidden p-1
    mtp = _session(out, "mtp.onnx")
    n = len(ids) - 1
    feeds = {
        "input_ids": np.array([ids[1:]], np.int64),
        "hidden_states": hidden[:, :n],
        "attention_mask": np.ones((1, n), np.int64),
        "position_ids": np.arange(1, n + 1, dtype=np.int64)[None],
        "past_key_values.0.key": np.zeros((1, c.num_kv_heads, 0, c.head_dim), np.float32),
        "past_key_values.0.value": np.zeros((1, c.num_kv_heads, 0, c.head_dim), np.float32),
    }
    got = mtp.run(["logits"], feeds)[0]
    with torch.no_grad():
        h = model(torch.tensor([ids]), torch.arange(len(ids))[None]).hidden
        want, _, _ = model.mtp(model, torch.tensor([ids[1:]]), h[:, :n], torch.arange(1, n + 1)[None])
    assert np.abs(got[0] - want[0].numpy()).max() <= 1e-4
    # the paged layout's draft graph (a sliding MTP layer: GroupQueryAttention chained over its window):
    # the same rows, then three chained drafts, as the torch backend drafts
    mtp = _session(paged, "mtp.onnx")
    feeds.update({"input_ids": np.array([ids[1:] + [int(want[0, -1].argmax())]], np.int64),
                  "hidden_states": hidden, "attention_mask": np.ones((1, n + 1), np.int64),
                  "position_ids": np.arange(1, n + 2, dtype=np.int64)[None]})  # fmt: skip
    drafts = mtp.run(["drafts"], feeds)[0][0].tolist()
    backend = TorchBackend(model, kv_dtype="fp32")
    seq = backend.new_sequence()
    backend.forward(seq, ids)
    assert drafts == backend.draft(seq, int(want[0, -1].argmax()), 3)


@pytest.mark.slow
def test_portable_export_has_only_standard_ops_and_runs_without_contrib_kernels(exports, checkpoints):
    out = exports("default", "--portable")
    model = load_model(checkpoints("default"))
    for name in ("model.onnx", "mtp.onnx"):
        graph = _graph(out, name)
        assert {n.domain for n in graph.node} <= {"", "ai.onnx"}, name
    # the ONNX reference evaluator implements standard ONNX only: no contrib kernel can be involved
    from onnx.reference import ReferenceEvaluator

    ids = _ids(2 * W + 3, seed=1)
    ref = ReferenceEvaluator(onnx.load(str(out / "model.onnx")))
    logits = ref.run(["logits"], _prefill_feeds(model.config, ids))[0]
    assert np.abs(logits[0] - _torch_logits(model, ids)).max() <= 1e-4
    # and our backend runs it too (present = past + new rows: the "concat" path)
    backend = OrtBackend.load(out)
    assert not backend.main.in_place
    seq = backend.new_sequence(margin=2)
    torch_backend = TorchBackend(model)
    tseq = torch_backend.new_sequence(margin=2)
    worst = np.abs(backend.forward(seq, ids, 0) - torch_backend.forward(tseq, ids, 0)).max()
    for t in _ids(20, seed=2):
        worst = max(worst, np.abs(backend.forward(seq, [t]) - torch_backend.forward(tseq, [t])).max())
    assert worst <= 1e-3


@pytest.mark.slow
def test_cuda_target_fuses_qk_norm_into_gqa(exports):
    out = exports("default", "--target", "cuda")
    gqa = [n for n in _graph(out).node if n.op_type == "GroupQueryAttention"]
    assert gqa and all(len(n.input) == 16 and n.input[14] and n.input[15] for n in gqa)  # q/k norm weights
    assert all(n.input[1] == "" and n.input[2] == "" for n in gqa)  # packed QKV
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError, match="--target cuda"):
            OrtBackend.load(out)


def _float_initializer_bytes(graph, min_elements=0):
    """name -> bytes of the float initializers with at least ``min_elements`` elements."""
    out = {}
    for t in graph.initializer:
        n = int(np.prod(t.dims))
        if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16) and n >= min_elements:
            out[t.name] = n * (4 if t.data_type == TensorProto.FLOAT else 2)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("quant,min_agreement", [("int8", 0.8), ("int4", 0.4)])
def test_quantized_export_uses_matmulnbits_and_qmoe(exports, checkpoints, quant, min_agreement):
    out = exports("default", "--quant", quant)
    graph = _graph(out)
    ops_used = [(n.domain, n.op_type) for n in graph.node]
    assert ("com.microsoft", "MatMulNBits") in ops_used and ("com.microsoft", "QMoE") in ops_used
    assert ("com.microsoft", "MoE") not in ops_used
    weights = {t.name for t in graph.initializer}
    matmuls = [n for n in _nodes(graph) if n.op_type == "MatMul"]  # left: attention over the KV segments
    assert matmuls and not any(set(n.input) & weights for n in matmuls)
    bits = 8 if quant == "int8" else 4
    block = 32  # --block-size's default (int4 takes 64 only when every width divides: here 96 and 32 do not)
    for n in graph.node:
        if n.op_type == "MatMulNBits":
            assert (_attr(n, "bits"), _attr(n, "block_size"), _attr(n, "accuracy_level")) == (bits, block, 4)
        if n.op_type == "QMoE":
            assert (
                _attr(n, "expert_weight_bits"),
                _attr(n, "block_size"),
                _attr(n, "weights_prepacked"),
            ) == (bits, block, 0)
    model = load_model(checkpoints("default"))
    c = model.config
    for name in ("model.onnx", "mtp.onnx"):  # the (untied) embedding is quantised in both graphs
        g = _graph(out, name)
        gbq = [n for n in g.node if n.op_type == "GatherBlockQuantized"]
        # the draft graph embeds each chained step's draft: one table, read by every step
        assert len(gbq) == (1 if name == "model.onnx" else 3) and gbq[0].input[1] == "input_ids", name
        assert len({n.input[0] for n in gbq}) == 1
        assert (_attr(gbq[0], "bits"), _attr(gbq[0], "block_size"), _attr(gbq[0], "quantize_axis")) == (
            bits,
            block,
            2,
        )
        assert not _float_initializer_bytes(g, c.vocab_size * c.hidden_size), name  # no float table left
    ids = _ids(40, seed=3)
    sess = _session(out)
    logits = sess.run(["logits"], _prefill_feeds(c, ids, sess))[0][0]
    want = _torch_logits(model, ids)
    assert np.isfinite(logits).all()
    assert (logits.argmax(-1) == want.argmax(-1)).mean() >= min_agreement  # a random model is fragile
    report = json.loads((out / "export_report.json").read_text())
    assert report["graphs"]["model.onnx"]["GatherBlockQuantized"] == 1


TIED = dict(tie_word_embeddings=True)  # as the embedded model: one (V, C) table for embedding and lm_head


@pytest.mark.slow
def test_tied_int8_export_stores_the_table_once_per_graph_and_is_byte_identical_when_repeated(
    exports, checkpoints, tmp_path
):
    out = exports("tied", "--quant", "int8", **TIED)
    c = load_model(checkpoints("tied", **TIED)).config
    for name in ("model.onnx", "mtp.onnx"):
        g = _graph(out, name)
        gbq = [n for n in g.node if n.op_type == "GatherBlockQuantized"]
        heads = [n for n in g.node if n.op_type == "MatMulNBits" and _attr(n, "N") == c.vocab_size]
        assert len(heads) == (1 if name == "model.onnx" else 3), name  # the draft graph is unrolled
        # the embedding reads the lm_head's own quantised blocks: stored once
        assert {n.input[0] for n in gbq} == {n.input[1] for n in heads} == {gbq[0].input[0]}, name
        tables = [t.name for t in g.initializer if list(t.dims) == [c.vocab_size, c.hidden_size // 32, 32]]
        assert tables == [gbq[0].input[0]], (name, tables)
        assert not _float_initializer_bytes(g, c.vocab_size * c.hidden_size), name  # no float copy
        assert not any(t.name.startswith(("cos_", "sin_")) for t in g.initializer)  # computed, not stored
    # the same checkpoint and options again: byte-identical files (the embedded export is committed)
    again = tmp_path / "again"
    assert (
        export_main(["--model", str(checkpoints("tied", **TIED)), "--out", str(again), "--quant", "int8"])
        == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:  # the report too: it does not name the output folder
        assert (out / name).read_bytes() == (again / name).read_bytes(), name


@pytest.mark.slow
def test_rotary_caches_are_computed_in_graph_and_folded_by_onnxruntime(exports, tmp_path):
    out = exports()
    for name in ("model.onnx", "mtp.onnx"):
        g = _graph(out, name)
        assert not any(t.name.startswith(("cos_", "sin_")) for t in g.initializer), name
        assert {o for n in g.node for o in n.output} >= {"cos_sliding_attention", "sin_sliding_attention"}
    # ORT turns the constant nodes back into initializers when it loads the session
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out / "model.onnx"), so, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"), load_external_data=False).graph
    folded = {t.name for t in optimized.initializer}
    assert {"cos_sliding_attention", "sin_full_attention"} <= folded
    assert not {n.op_type for n in optimized.node} & {"Cos", "Sin"}  # (the paged attention has its own Range)
    # while the portable graph keeps them stored (a runtime without constant folding would recompute them)
    assert any(t.name.startswith("cos_") for t in _graph(exports("default", "--portable")).initializer)


@pytest.mark.slow
def test_onnxruntime_genai_generates_our_greedy_tokens(exports, checkpoints):
    og = pytest.importorskip("onnxruntime_genai")
    out = exports("default", "--kv-layout", "contiguous")  # genai binds one past buffer per layer
    prompt = _ids(13, seed=4)
    ours = generate(OrtBackend.load(out), prompt, SamplingParams(max_new_tokens=32)).ids
    assert (
        ours
        == generate(
            TorchBackend(load_model(checkpoints("default"))), prompt, SamplingParams(max_new_tokens=32)
        ).ids
    )
    assert _genai_greedy(og, out, prompt, 32) == ours


@pytest.mark.slow
def test_onnxruntime_genai_runs_the_tied_int8_export_as_we_do(exports):
    """The embedded model's layout: GatherBlockQuantized on the lm_head's blocks, computed rotary."""
    og = pytest.importorskip("onnxruntime_genai")
    out = exports("tied", "--quant", "int8", "--kv-layout", "contiguous", **TIED)
    prompt = _ids(13, seed=5)
    ours = generate(OrtBackend.load(out), prompt, SamplingParams(max_new_tokens=24)).ids
    assert len(set(ours)) > 1  # a random model, not stuck on one token: the comparison means something
    assert _genai_greedy(og, out, prompt, 24) == ours


def _genai_greedy(og, folder, prompt, n):
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + n, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)
    theirs = []
    while not gen.is_done():
        gen.generate_next_token()
        theirs.append(int(gen.get_next_tokens()[0]))
    return theirs


# -- failures ----------------------------------------------------------------------------------


def test_bad_config_fails_with_a_clear_message_and_writes_nothing(checkpoints, tmp_path, capsys):
    src = tmp_path / "bad"
    shutil.copytree(checkpoints("default"), src)
    config = json.loads((src / "config.json").read_text())
    config["num_key_value_heads"] = 3  # 4 attention heads are not divisible by 3
    (src / "config.json").write_text(json.dumps(config))
    (tmp_path / "exports").mkdir()
    out = tmp_path / "exports" / "bad-onnx"
    assert export_main(["--model", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "num_key_value_heads (3)" in err
    assert not out.exists()
    assert not [p for p in (tmp_path / "exports").iterdir()]  # no partial folder left behind

    (src / "config.json").write_text("{not json")
    assert export_main(["--model", str(src), "--out", str(out)]) == 2
    assert "not valid JSON" in capsys.readouterr().err and not out.exists()


def test_export_refuses_to_replace_a_folder_that_is_not_an_export(checkpoints, tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert export_main(["--model", str(checkpoints("default")), "--out", str(out)]) == 2
    assert "refusing" in capsys.readouterr().err and (out / "notes.txt").read_text() == "keep me"


def test_a_failure_late_in_the_export_leaves_no_partial_folder(checkpoints, tmp_path, monkeypatch):
    import export.verify

    def broken(*args, **kwargs):
        raise RuntimeError("verification crashed")

    monkeypatch.setattr(export.verify, "verify", broken)
    out = tmp_path / "late" / "onnx"
    with pytest.raises(RuntimeError, match="verification crashed"):
        export_main(["--model", str(checkpoints("default")), "--out", str(out)])
    assert not out.exists() and not list((tmp_path / "late").iterdir())
