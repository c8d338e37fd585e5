"""``--random-config``: the real configuration's export path with random int4 weights, shrunk for CI
(the full 12B-shaped export runs by hand), served by the engine and measured by ``bench scale``."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

from benchmarks import bench_scale
from engine.backends.ort_backend import OrtBackend
from engine.jobs import Job
from engine.model.config import MELLUM2_12B_HF, SLIDING
from engine.protocol import CompleteParams, Sampling
from engine.service import Engine, EngineConfig
from engine.tokenizer import Tokenizer
from export.cli import main as export_main
from export.random_export import random_config

# mellum2-12b with its layer pattern, widths and vocabulary cut down: the same code path, seconds to run
SMALL = {
    "num_hidden_layers": 4,
    "layer_types": [SLIDING] * 3 + ["full_attention"],
    "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"],
    "hidden_size": 256,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "intermediate_size": 512,
    "moe_intermediate_size": 128,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "vocab_size": 12288,
    "sliding_window": 64,
    "max_position_embeddings": 8192,
}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("random") / "small-12b"
    code = export_main(["--random-config", "mellum2-12b", "--quant", "int4", "--out", str(out),
                        "--config-override", json.dumps(SMALL)])  # fmt: skip
    assert code == 0
    return out


def test_the_preset_is_the_real_configuration():
    c = random_config("mellum2-12b")
    assert (c.vocab_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (
        98304, 2304, 28, 32, 4, 128,
    )  # fmt: skip
    assert (c.moe.num_experts, c.moe.top_k, c.moe.intermediate_size, c.sliding_window) == (64, 8, 896, 1024)
    assert c.layer_types == tuple(MELLUM2_12B_HF["layer_types"]) and c.mtp is not None
    with pytest.raises(ValueError, match="unknown --random-config 'mellum9'"):
        random_config("mellum9")


def test_weights_are_int4_blocks_of_the_configured_shapes_and_nothing_float_is_large(small):
    c = random_config("mellum2-12b", **SMALL)
    report = json.loads((small / "export_report.json").read_text())
    assert report["graphs"]["model.onnx"] == {
        "MatMulNBits": 2 * 4 + 3 + 1,  # per layer q/k/v packed and o_proj; the dense MLP; the lm_head
        "QMoE": 3,
        "GatherBlockQuantized": 1,
    }
    graph = onnx.load(str(small / "model.onnx"), load_external_data=False).graph
    nodes = {n.op_type for n in graph.node}
    assert {"MatMulNBits", "QMoE", "GatherBlockQuantized", "GroupQueryAttention", "If"} <= nodes
    assert "MoE" not in nodes
    assert all(a.i == 4 for n in graph.node for a in n.attribute if a.name in ("bits", "expert_weight_bits"))
    assert {a.i for n in graph.node for a in n.attribute if a.name == "block_size"} == {64}  # int4's default
    floats = [
        t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 2**16
    ]
    assert [n for n in floats if not n.endswith("_scales")] == []  # every matrix is packed int4
    # the data file holds int4 codes (+ one fp32 scale per block of 64) of exactly the configured matrices
    h, e, i = c.hidden_size, c.moe.num_experts, c.moe.intermediate_size
    attention = h * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim + c.num_heads * c.head_dim * h
    params = c.num_layers * attention + 3 * h * c.intermediate_size + 3 * 3 * e * i * h + 2 * c.vocab_size * h
    data = (small / "model.onnx.data").stat().st_size
    assert 0.9 * params * (0.5 + 4 / 64) < data < 1.1 * params * (0.5 + 4 / 64) + 2**20


def test_the_folder_loads_in_the_engine_and_serves_completions(small):
    backend = OrtBackend.load(small, threads=1)
    tok = Tokenizer.from_folder(small)
    assert tok.vocab_size == backend.config.vocab_size == SMALL["vocab_size"]  # the padded tokenizer
    assert tok.encode("def f(x):") == Tokenizer.from_folder(_embedded()).encode("def f(x):")
    seq = backend.new_sequence()
    logits = backend.forward(seq, tok.encode("import os\n" * 40))
    assert np.isfinite(logits).all() and logits.std() > 0.1  # random, but not degenerate
    assert len(backend.draft(seq, int(logits[-1].argmax()), 3)) == 3
    engine = Engine(backend, tok, EngineConfig())
    params = CompleteParams("def f(", "):\n", (), "a.py", "doc", Sampling(max_tokens=6))
    out = engine.execute(
        Job(1, "complete", params, emit=lambda p: None, finish=lambda r, e: None, document="doc")
    )
    assert out["tokens"] >= 1 and out["served"] == "model"


def test_bench_scale_reports_every_figure(small):
    out = bench_scale.run(small, threads=1, contexts=[512, 2048], prompt=256, decode=6)
    assert set(out) >= {"weights_gb", "rss_gb", "decode_tok_s", "prefill_tok_s", "keystroke_ms",
                        "roofline_tok_s", "mtp_draft_cost_ratio"}  # fmt: skip
    assert set(out["keystroke_ms"]) == {"512", "2048"} and all(v > 0 for v in out["keystroke_ms"].values())
    assert out["decode_tok_s"] > 0 and out["roofline_tok_s"] > 0 and 0 < out["mtp_draft_cost_ratio"] < 10
    d = out["details"]
    assert d["bytes_per_token_gb"]["weights"] < out["weights_gb"]  # experts: top-2 of 8 are read


def _embedded():
    from engine.embedded import embedded_model_dir

    return embedded_model_dir()


# -- benchmarks/gpu_check.sh --------------------------------------------------------------------

GPU_CHECK = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"


def _no_gpu_path(tmp_path) -> dict:
    """An environment whose PATH has no nvidia-smi (this machine has no GPU either way)."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sed", "grep", "date", "mktemp", "dirname", "mkdir"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    return {**os.environ, "PATH": str(bin_dir)}


def test_gpu_check_fails_clearly_without_a_gpu(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi: the script would run the real check")
    p = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, timeout=60,
                       env=_no_gpu_path(tmp_path))  # fmt: skip
    assert p.returncode == 2
    assert "gpu_check: FAILED: no NVIDIA GPU here: nvidia-smi is not installed" in p.stderr
    assert "bench_scale" in p.stderr  # what to run instead
    p = subprocess.run(["bash", str(GPU_CHECK), "--bogus"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "unknown argument '--bogus'" in p.stderr


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_the_cpu(tmp_path):
    """--self-test-cpu: the exports, the device-resident in-place KV decoder (on CPU OrtValues), the
    parity against the CPU reference and the timings, at small sizes."""
    import os
    import sys

    env = {**os.environ, "MELLUM_GPU_WORK": str(tmp_path / "work"), "PYTHON": sys.executable}
    p = subprocess.run(["bash", str(GPU_CHECK), "--self-test-cpu"], capture_output=True, text=True,
                       timeout=900, env=env)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout[p.stdout.index('{\n  "mode"') :])
    assert report["mode"] == "cpu" and [r["model"] for r in report["results"]] == ["embedded", "mellum2-12b"]
    for r in report["results"]:
        assert r["parity"]["top1_agreement"] >= 0.9, r  # the contiguous fp32 export against the paged one
        assert r["decode_tok_s"] > 0 and all(v > 0 for v in r["keystroke_ms"].values())
