"""``python -m engine generate`` and ``plan`` as a user runs them."""

import json
import subprocess
import sys

import torch
from hf_reference import hf_model


def run_engine(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_greedy_generate_json_equals_transformers_generate(checkpoints):
    folder = checkpoints("default")
    prompt = [5, 17, 3, 99, 42, 7, 8, 150, 1, 2, 3]
    out = json.loads(
        run_engine(
            "generate",
            "--model",
            str(folder),
            "--prompt-ids",
            ",".join(map(str, prompt)),
            "--max-new-tokens",
            "32",
            "--greedy",
            "--json",
            "--backend",
            "torch",
        ).stdout
    )
    ref = hf_model(folder)
    want = ref.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
    assert out["ids"] == want[0, len(prompt) :].tolist()
    assert len(out["logprobs"]) == 32 and all(lp <= 0 for lp in out["logprobs"])
    # logprobs are the log-softmax of the chosen token under the raw distribution
    with torch.no_grad():
        logits = ref(want[:, :-1]).logits[0, len(prompt) - 1 :]
    expected = torch.log_softmax(logits.double(), -1).gather(-1, torch.tensor(out["ids"])[:, None])[:, 0]
    assert max(abs(a - b) for a, b in zip(out["logprobs"], expected.tolist(), strict=True)) < 1e-4
    assert set(out["timing"]) == {"prefill_s", "decode_s"}
    assert out["text"] is None  # no tokenizer in this folder, none needed


def test_sampling_is_reproducible_with_a_seed(checkpoints):
    folder = str(checkpoints("default"))
    args = (
        "generate",
        "--model",
        folder,
        "--prompt-ids",
        "1,2,3",
        "--max-new-tokens",
        "16",
        "--json",
        "--temperature",
        "1.0",
        "--top-p",
        "0.9",
        "--seed",
        "7",
        "--backend",
        "torch",
    )
    a, b = (json.loads(run_engine(*args).stdout)["ids"] for _ in range(2))
    assert a == b


def test_generate_errors_are_clear(checkpoints, tmp_path):
    folder = str(checkpoints("default"))
    p = run_engine("generate", "--model", folder, "--prompt-ids", "1,2,999", "--json", check=False)
    assert p.returncode != 0 and "outside the model's vocabulary" in p.stderr
    p = run_engine("generate", "--model", folder, "--prompt-ids", "1,x", check=False)
    assert p.returncode != 0 and "comma-separated integers" in p.stderr
    p = run_engine("generate", "--model", str(tmp_path), "--prompt-ids", "1", check=False)
    assert p.returncode != 0 and "the folder is empty" in p.stderr
    p = run_engine("generate", "--model", folder, "--prompt", "hello", check=False)
    assert p.returncode != 0 and "tokenizer.json" in p.stderr


def test_plan_for_mellum2_12b_agrees_with_design_numbers():
    out = json.loads(run_engine("plan", "--config", "mellum2-12b", "--context", "131072", "--json").stdout)
    assert 23e9 < out["weight_bytes"]["bf16"] < 26e9  # ≈ 24 GB of bf16 weights
    assert 6e9 < out["weight_bytes"]["int4"] < 7e9  # ≈ 6.5 GB int4 with scales
    per_token_full = 7 * 2 * 4 * 128 * 2  # 14 KB
    assert (
        out["kv_bytes_windowed"] == per_token_full * 131072 + 21 * 1024 * 2 * 4 * 128 * 2
    )  # ≈ 1.8 GB + 44 MB
    assert out["kv_bytes_full"] == 28 * 131072 * 2 * 4 * 128 * 2  # ≈ 7.5 GB
    assert 2.2e9 < out["active_params"] < 2.6e9  # "2.5B active"
    text = run_engine("plan", "--config", "mellum2-12b", "--context", "131072").stdout
    assert "with sliding layers windowed" in text
