"""The embedded default model as shipped: its shape, size, parity with transformers, its export,
and that it writes plausible Python."""

import ast
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.embedded import embedded_model_dir

try:
    MODEL = embedded_model_dir()
except FileNotFoundError:  # pragma: no cover - only before the model was committed
    pytest.skip("the embedded model is not installed", allow_module_level=True)

CONFIG = json.loads((MODEL / "config.json").read_text())


def test_config_has_the_mellum2_pattern_at_small_scale():
    c = CONFIG
    n = c["num_hidden_layers"]
    assert c["model_type"] == "mellum"
    assert c["layer_types"] == (["sliding_attention"] * 3 + ["full_attention"]) * (n // 4)
    assert c["mlp_layer_types"][0] == "dense" and set(c["mlp_layer_types"][1:]) == {"sparse"}
    assert c["num_attention_heads"] > c["num_key_value_heads"] > 0  # GQA
    assert c["num_local_experts"] >= 8 and c["num_experts_per_tok"] >= 2
    assert c["num_nextn_predict_layers"] == 1
    assert c["rope_parameters"]["full_attention"]["rope_type"] == "yarn"
    assert c["rope_parameters"]["sliding_attention"]["rope_type"] == "default"
    assert c["head_dim"] % 16 == 0
    assert c["max_position_embeddings"] >= 8192


def test_everything_shipped_stays_within_32_mb():
    total = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert total <= 32 * 2**20, total
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "model.onnx", "mtp.onnx",
                 "genai_config.json", "MODEL_CARD.md"):  # fmt: skip
        assert (MODEL / name).is_file(), name


def test_shipped_weights_match_transformers():
    from transformers import MellumForCausalLM

    from engine.checkpoint import load_model

    ref = MellumForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    ours = load_model(MODEL)
    ids = torch.randint(0, CONFIG["vocab_size"], (1, 700), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        delta = (ref(ids).logits - ours(ids, torch.arange(700)[None]).logits).abs().max()
    assert delta <= 1e-4


def test_the_shipped_export_agrees_with_the_torch_model():
    from engine.backends.ort_backend import OrtBackend
    from engine.backends.torch_backend import TorchBackend
    from engine.tokenizer import Tokenizer

    tok = Tokenizer.from_folder(MODEL)
    ids = tok.encode("import os\n\n\ndef walk(top):\n    for root, dirs, files in os.walk(top):\n        ")
    ort, pt = OrtBackend.load(str(MODEL)), TorchBackend.load(str(MODEL))
    a = ort.forward(ort.new_sequence(), ids, logits_to_keep=len(ids))
    b = pt.forward(pt.new_sequence(), ids, logits_to_keep=len(ids))
    agreement = float(np.mean(a.argmax(-1) == b.argmax(-1)))
    assert agreement >= 0.9, agreement  # int8 export vs fp32 reference


def test_fibonacci_prompt_gets_plausible_python():
    out = subprocess.run([sys.executable, "-m", "engine", "generate", "--prompt", "def fibonacci(n):",
                          "--max-new-tokens", "40", "--greedy", "--json"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["backend"] == "ort"  # the export is the default
    text = "def fibonacci(n):" + result["text"]
    lines = text.splitlines()
    assert len(lines) >= 2 and lines[1].startswith(" ")  # an indented body
    # the body up to the last complete line parses as Python
    body = "\n".join(lines[:-1]) if len(lines) > 2 else text
    ast.parse(body + ("\n    pass\n" if body.rstrip().endswith(":") else "\n"))
