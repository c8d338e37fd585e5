"""The peer benchmark: the GGUF of llama.cpp's ``mellum`` architecture, llama.cpp agreeing with our
engine on the embedded model, a small run of ``bench_peers``, and ``bench_engine`` without PyTorch.

The GGUF and llama.cpp tests need the ``peers`` extra (``gguf``, ``llama-cpp-python``) and skip with
a message naming it otherwise; the no-torch test needs neither.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from engine.embedded import embedded_model_dir

ROOT = Path(__file__).resolve().parents[2]
MODEL = embedded_model_dir()
EXTRA = "the peers extra is not installed (pip install 'mellum-lsp[peers]')"


def _need(module: str):
    return pytest.importorskip(module, reason=f"{EXTRA}: no {module}")


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory) -> dict:
    _need("gguf")
    from benchmarks.gguf_export import export_gguf

    out = tmp_path_factory.mktemp("gguf")
    return {(q, lay): export_gguf(MODEL, out / f"{q}-{lay}.gguf", q, lay)
            for q, lay in (("f32", "exact"), ("q8_0", "exact"), ("f32", "timing"))}  # fmt: skip


def _tensors(path: str) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    return {
        t.name: np.asarray(t.data).reshape(tuple(int(x) for x in reversed(t.shape))) for t in reader.tensors
    }


def _silu(x):
    return x / (1 + np.exp(-x))


def test_gguf_has_llama_cpp_mellum_names_and_real_weights(gguf_files):
    import gguf
    from safetensors.numpy import load_file

    report = gguf_files[("f32", "exact")]
    reader = gguf.GGUFReader(report.path)
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "mellum"
    t = _tensors(report.path)
    w = {k: v.astype(np.float32) for k, v in load_file(MODEL / "model.safetensors").items()}
    # llama.cpp's mellum graph reads a separate output.weight; the tied embedding is written twice
    assert np.array_equal(t["output.weight"], w["model.embed_tokens.weight"])
    assert np.array_equal(t["token_embd.weight"], w["model.embed_tokens.weight"])
    assert np.array_equal(t["blk.5.attn_q_norm.weight"], w["model.layers.5.self_attn.q_norm.weight"])
    assert np.array_equal(t["blk.3.attn_k.weight"], w["model.layers.3.self_attn.k_proj.weight"])
    assert np.array_equal(
        t["blk.2.ffn_down_exps.weight"][6, :, :128], w["model.layers.2.mlp.experts.6.down_proj.weight"]
    )
    assert not t["blk.2.ffn_down_exps.weight"][:, :, 128:].any()  # zero padding up to the dense width
    assert report.expert_width == 512 and report.dense_layers == (0,)
    assert set(t) == {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(8) for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
        "attn_q_norm", "attn_k_norm", "ffn_norm", "ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps")
    }  # fmt: skip


def test_exact_layout_turns_the_dense_layer_into_experts_with_the_same_output(gguf_files):
    """llama.cpp's mellum layers are all MoE (softmax, top-k, renormalised): layer 0's dense MLP written
    as experts must compute the MLP exactly; the timing layout must not claim to."""
    from safetensors.numpy import load_file

    w = {k: v.astype(np.float32) for k, v in load_file(MODEL / "model.safetensors").items()}
    x = np.random.default_rng(0).standard_normal((5, 192)).astype(np.float32)
    dense = (_silu(x @ w["model.layers.0.mlp.gate_proj.weight"].T) * (x @ w["model.layers.0.mlp.up_proj.weight"].T)
             ) @ w["model.layers.0.mlp.down_proj.weight"].T  # fmt: skip

    def moe(t):
        logits = x @ t["blk.0.ffn_gate_inp.weight"].T
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        top = np.argsort(-probs, -1, kind="stable")[:, :2]
        out = np.zeros_like(x)
        for r in range(len(x)):
            weights = probs[r, top[r]] / probs[r, top[r]].sum()
            for e, g in zip(top[r], weights, strict=True):
                h = _silu(t["blk.0.ffn_gate_exps.weight"][e] @ x[r]) * (
                    t["blk.0.ffn_up_exps.weight"][e] @ x[r]
                )
                out[r] += g * (t["blk.0.ffn_down_exps.weight"][e] @ h)
        return out

    np.testing.assert_allclose(moe(_tensors(gguf_files[("f32", "exact")].path)), dense, rtol=1e-4, atol=1e-5)
    assert not np.allclose(moe(_tensors(gguf_files[("f32", "timing")].path)), dense, atol=1e-3)


def test_heldout_texts_were_held_out_of_training(monkeypatch):
    from benchmarks.bench_peers import HELDOUT

    spec = importlib.util.spec_from_file_location("tools_corpus", ROOT / "tools" / "corpus.py")
    corpus = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tools_corpus", corpus)  # its dataclasses look their module up
    spec.loader.exec_module(corpus)
    _, heldout = corpus.split_files(corpus.collect_files(corpus.default_stdlib_root()))
    assert set(HELDOUT) <= set(heldout)


def test_llama_cpp_agrees_with_our_engine_on_held_out_text(gguf_files, tmp_path):
    _need("llama_cpp")
    from benchmarks.bench_peers import (
        LlamaContext,
        LlamaModel,
        Ours,
        agreement,
        heldout_windows,
        same_theta_reference,
    )
    from engine.backends import load_backend
    from engine.tokenizer import Tokenizer

    windows = [w[:256] for w in heldout_windows(Tokenizer.from_folder(MODEL), 256)[:2]]
    ours = Ours(load_backend(MODEL, "ort", threads=1))
    models = {q: LlamaModel(gguf_files[(q, "exact")].path) for q in ("f32", "q8_0")}
    ctx = {q: LlamaContext(m, threads=1, flash_attn=False, n_ctx=512) for q, m in models.items()}
    try:
        # llama.cpp rotates the sliding layers with the full layers' theta: related, not equal
        got = agreement(ours, ctx["q8_0"], windows)
        assert got["positions"] == 512 and got["top1"] > 0.5, got
        # a warm keystroke (roll back one, run two) computes what a cold prefill does, on both sides
        for runner in (ours, ctx["q8_0"]):
            runner.clear()
            runner.forward(windows[0][:200])
            runner.truncate(199)
            warm = runner.forward(windows[0][199:201])[-1]
            runner.clear()
            cold = runner.forward(windows[0][:201])[-1]
            assert np.abs(warm - cold).max() < 1e-2
        pytest.importorskip("torch", reason="the same-theta control runs our PyTorch backend")
        # given llama.cpp's sliding theta, our reference and the converted GGUF compute the same function
        reference = Ours(load_backend(same_theta_reference(str(MODEL), tmp_path), "torch", threads=1))
        exact = agreement(reference, ctx["f32"], windows)
        assert exact["top1"] > 0.98 and exact["median_max_abs_logit_diff"] < 0.02, exact
        assert agreement(reference, ctx["q8_0"], windows)["top1"] > 0.95
    finally:
        for c in ctx.values():
            c.close()
        for m in models.values():
            m.close()


def test_bench_peers_quick_run_writes_both_sides_and_ratios():
    _need("gguf")
    _need("llama_cpp")
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_peers", "--quick", "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert 0.5 < out["agreement_top1"] <= 1.0
    control = out["agreement"]["control_same_sliding_theta"]
    assert control["f32"]["top1"] > 0.98 if "skipped" not in control else "PyTorch" in control["skipped"]
    run = out["runs"][0]
    assert run["ours"]["decode_spec_tok_s"] > 0 and run["llama_cpp"]["best"]["decode_tok_s"] > 0
    assert run["ours"]["spec_identical_to_plain"]
    for name in ("ours", "fa_off", "fa_on"):
        check = (run["ours"] if name == "ours" else run["llama_cpp"][name])["check"]
        assert check["warm_equals_cold_top1"], (name, check)
    assert out["ratios"]["decode_spec"] > 0
    assert set(out["ratios"]["warm_keystroke"]) == set(out["ratios"]["cold_prefill"]) == {"512"}
    assert run["overheads"]["plain"]["step_ms"] > run["overheads"]["plain"]["inside_ort_ms"] > 0


NO_TORCH = textwrap.dedent(
    """
    import sys

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ImportError(f"{name} is blocked: this process runs without it")
            return None

    sys.meta_path.insert(0, _NoTorch())
    """
)


def test_bench_engine_runs_without_torch(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NO_TORCH)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p),
    }
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_engine", "--quick", "--json", "--rounds", "1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert any("transformers comparison skipped" in n and "blocked" in n for n in out["notes"])
    assert out["decode"]["transformers_tok_s"] is None and out["decode"]["ours_tok_s"] > 0
    assert out["keystroke"][0]["warm_first_token_ms"] > 0
