#!/usr/bin/env bash
# GPU check for a lent machine with one NVIDIA GPU, in one go (about 5-8 minutes):
#
#   bash benchmarks/gpu_check.sh                 # needs an NVIDIA GPU and its driver
#   bash benchmarks/gpu_check.sh --self-test-cpu # the same steps on the CPU, small sizes (CI)
#
# 1. installs onnxruntime-gpu (with its CUDA/cuDNN wheels) and the export tools in a fresh venv;
# 2. exports the embedded model and the mellum2-12b-shaped model (random int4 weights) for CUDA:
#    fp16, q/k RMSNorm fused into GroupQueryAttention (--target cuda, DESIGN.md section 4), one
#    KV buffer per layer that lives on the GPU and that the op writes in place (--kv-layout
#    contiguous); and the embedded model for the CPU, as the reference;
# 3. checks parity of the GPU runs against the CPU reference (logits, top-1 agreement);
# 4. prints decode tokens/s, warm keystroke latency at 4K / 32K / 128K tokens (128K: the 12B only,
#    whose context is 128K; caches filled with random rows, as bench_scale does) and memory.
#
# Exits 2 with a message that says what is missing when there is no GPU. Env: MELLUM_GPU_WORK (work
# folder, default a new temporary one), PYTHON (the interpreter that makes the venv).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
START=$(date +%s)
MODE=gpu
case "${1:-}" in
  --self-test-cpu) MODE=cpu ;;
  -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "gpu_check: unknown argument '$1' (expected --self-test-cpu or --help)" >&2; exit 2 ;;
esac

fail() { echo "gpu_check: FAILED: $*" >&2; exit 2; }
step() { echo "[$(($(date +%s) - START))s] $*" >&2; }

if [[ $MODE == gpu ]]; then
  command -v nvidia-smi >/dev/null 2>&1 || fail "no NVIDIA GPU here: nvidia-smi is not installed. This check needs \
a machine with one NVIDIA GPU and its driver; on a CPU, measure with: python -m benchmarks.bench_scale --model DIR"
  GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  [[ "$GPUS" -ge 1 ]] || fail "no NVIDIA GPU here: nvidia-smi lists none (is the driver loaded?)"
  [[ "$GPUS" -eq 1 ]] || echo "gpu_check: $GPUS GPUs found, using GPU 0" >&2
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
fi

WORK=${MELLUM_GPU_WORK:-$(mktemp -d -t mellum-gpu-check.XXXXXX)}
mkdir -p "$WORK"
step "work folder $WORK"

if [[ $MODE == gpu ]]; then
  step "installing onnxruntime-gpu and the export tools in $WORK/venv"
  "${PYTHON:-python3}" -m venv "$WORK/venv"
  PY="$WORK/venv/bin/python"
  "$PY" -m pip install -q --upgrade pip
  "$PY" -m pip install -q "onnxruntime-gpu[cuda,cudnn]>=1.31.1,<1.33" \
    "torch==2.13.0" --extra-index-url https://download.pytorch.org/whl/cpu \
    "onnx>=1.17" "onnxscript>=0.7" "onnx-ir>=1.0" "numpy>=1.26" "safetensors>=0.4" "tokenizers>=0.20" \
    "jinja2>=3" "msgpack>=1.0" || fail "pip could not install onnxruntime-gpu and the export tools"
  TARGET=cuda; DTYPE=fp16
  SMALL=""
else
  PY=${PYTHON:-python3}
  TARGET=cpu; DTYPE=fp32
  # the 12B shape cut down, as tests/unit/test_scale_export.py does: the same code path in seconds
  SMALL='{"num_hidden_layers": 4, "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention",
    "full_attention"], "mlp_layer_types": ["dense", "sparse", "sparse", "sparse"], "hidden_size": 256,
    "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 512,
    "moe_intermediate_size": 128, "num_local_experts": 8, "num_experts_per_tok": 2, "vocab_size": 12288,
    "sliding_window": 64, "max_position_embeddings": 8192}'
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

EMBEDDED="$ROOT/engine/embedded/mellum-tiny-py"
step "exporting the embedded model for $TARGET ($DTYPE)"
"$PY" -m export --model "$EMBEDDED" --out "$WORK/embedded-$TARGET" --quant int8 --target "$TARGET" \
  --dtype "$DTYPE" --kv-layout contiguous >&2 || fail "the embedded model's $TARGET export failed"
step "exporting the embedded model for the CPU reference"
"$PY" -m export --model "$EMBEDDED" --out "$WORK/embedded-ref" --quant int8 --kv-dtype fp32 >&2 \
  || fail "the embedded model's CPU export failed"
step "exporting the mellum2-12b-shaped model (random int4) for $TARGET"
"$PY" -m export --random-config mellum2-12b --quant int4 --out "$WORK/m12b-$TARGET" --target "$TARGET" \
  --dtype "$DTYPE" --kv-layout contiguous ${SMALL:+--config-override "$SMALL"} >&2 \
  || fail "the 12B-shaped $TARGET export failed"
step "exporting the same random weights for the CPU reference"
"$PY" -m export --random-config mellum2-12b --quant int4 --out "$WORK/m12b-ref" --kv-dtype fp32 \
  ${SMALL:+--config-override "$SMALL"} >&2 || fail "the 12B-shaped CPU export failed"

step "parity and speed"
GPU_CHECK_MODE=$MODE GPU_CHECK_WORK=$WORK GPU_CHECK_START=$START "$PY" - <<'PYTHON'
"""Runs the device exports with their KV cache on the device (one buffer per layer, written in place
by GroupQueryAttention through IO binding), against the CPU reference through OrtBackend."""
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

mode, work = os.environ["GPU_CHECK_MODE"], Path(os.environ["GPU_CHECK_WORK"])
gpu = mode == "gpu"
if gpu:
    ort.preload_dlls()  # the CUDA and cuDNN wheels pip installed
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit(f"gpu_check: FAILED: onnxruntime {ort.__version__} has no CUDA provider: {ort.get_available_providers()}")
providers = ["CUDAExecutionProvider"] if gpu else ["CPUExecutionProvider"]
device = "cuda" if gpu else "cpu"
NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}

from engine.backends.ort_backend import OrtBackend  # noqa: E402


def gpu_memory_mb() -> float | None:
    if not gpu:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True).stdout
    return float(out.split()[0]) if out.strip() else None


class DeviceDecoder:
    """A contiguous-layout export with its KV cache on the device: positions [0, n)."""

    def __init__(self, folder: Path, max_len: int) -> None:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(folder / "model.onnx"), so, providers=providers)
        if self.session.get_providers()[0] != providers[0]:
            sys.exit(f"gpu_check: FAILED: {folder} runs on {self.session.get_providers()[0]}, not {providers[0]}")
        c = json.loads((folder / "config.json").read_text())
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.kv_dtype = NP[inputs["past_key_values.0.key"].type]
        shape = (1, c["num_key_value_heads"], max_len, c["head_dim"])
        self.vocab, self.layers, self.max_len = c["vocab_size"], c["num_hidden_layers"], max_len
        self.kv = [[ort.OrtValue.ortvalue_from_shape_and_type(shape, self.kv_dtype, device, 0) for _ in (0, 1)]
                   for _ in range(self.layers)]
        self.io = self.session.io_binding()
        for i, (k, v) in enumerate(self.kv):  # one buffer as past and present: written in place
            for kind, value in (("key", k), ("value", v)):
                self.io.bind_ortvalue_input(f"past_key_values.{i}.{kind}", value)
                self.io.bind_ortvalue_output(f"present.{i}.{kind}", value)
        self.n = 0

    def forward(self, ids: list[int], keep: int = 1) -> np.ndarray:
        s = len(ids)
        if self.n + s > self.max_len:
            raise ValueError(f"{self.n + s} positions exceed the {self.max_len} allocated")
        io = self.io
        io.bind_cpu_input("input_ids", np.asarray([ids], np.int64))
        io.bind_cpu_input("attention_mask", np.ones((1, self.n + s), np.int64))
        io.bind_cpu_input("position_ids", np.arange(self.n, self.n + s, dtype=np.int64)[None])
        keep = min(keep, s)
        self.keep = np.array([keep], np.int64)  # an input with a default: bound by pointer
        io.bind_input("num_logits_to_keep", "cpu", 0, np.int64, [1], self.keep.ctypes.data)
        logits = np.empty((1, keep, self.vocab), np.float32)  # (rebound: shapes follow the run's tokens)
        io.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        io.bind_output("hidden_states", device)
        self.session.run_with_iobinding(io)
        self.n += s
        return logits[0]

    def fill(self, n: int, seed: int = 0) -> None:
        """Hold ``n`` positions of random rows (a cache as a prefill of random weights would leave)."""
        rng = np.random.default_rng(seed)
        for pair in self.kv:
            for value in pair:
                rows = np.zeros(value.shape(), self.kv_dtype)
                rows[:, :, :n] = rng.standard_normal((*rows.shape[:2], n, rows.shape[3]))
                value.update_inplace(rows)
        self.n = n


def median_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds + 1):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[1:])


def check(name: str, folder: Path, reference: Path, contexts: list[int], prompt: int) -> dict:
    rng = np.random.default_rng(0)
    ref = OrtBackend.load(reference)
    vocab = min(ref.config.vocab_size, 8000)
    ids = rng.integers(10, vocab, prompt).tolist()
    mem0 = gpu_memory_mb()
    t0 = time.perf_counter()
    dec = DeviceDecoder(folder, max(contexts) + 64)
    load_s = time.perf_counter() - t0
    # parity: the last 32 prompt positions, then 16 greedy steps fed the reference's tokens
    got = [dec.forward(ids, keep=32)]
    seq = ref.new_sequence()
    want = [ref.forward(seq, ids, logits_to_keep=32)]
    token = int(want[0][-1].argmax())
    for _ in range(16):
        got.append(dec.forward([token]))
        want.append(ref.forward(seq, [token]))
        token = int(want[-1][-1].argmax())
    got, want = np.concatenate(got), np.concatenate(want)
    parity = {"max_abs_logit_diff": float(np.abs(got - want).max()),
              "top1_agreement": float((got.argmax(-1) == want.argmax(-1)).mean())}
    # decode speed after the prompt
    token = int(got[-1].argmax())
    steps = []
    for _ in range(48):
        t = time.perf_counter()
        token = int(dec.forward([token])[-1].argmax())
        steps.append(time.perf_counter() - t)
    decode = 1 / statistics.median(steps[4:])
    # warm keystrokes: roll back the last token, run two, over caches of each size
    keystrokes = {}
    for n in contexts:
        dec.fill(n)

        def keystroke(n=n):
            dec.n = n - 1
            dec.forward(rng.integers(10, vocab, 2).tolist())

        keystrokes[str(n)] = round(median_ms(keystroke, 5), 2)
    rss = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1e6
    mem1 = gpu_memory_mb()
    out = {"model": name, "load_s": round(load_s, 1), "parity": parity, "decode_tok_s": round(decode, 1),
           "keystroke_ms": keystrokes, "host_rss_gb": round(rss, 2),
           "gpu_memory_mb": None if mem1 is None else round(mem1 - (mem0 or 0))}
    print(f"{name}: {json.dumps(out)}", flush=True)
    return out


small = not gpu
results = [
    check("embedded", work / f"embedded-{device}", work / "embedded-ref",
          [512, 2048] if small else [4096, 32000], 288),
    check("mellum2-12b", work / f"m12b-{device}", work / "m12b-ref",
          [512, 4096] if small else [4096, 32768, 131000], 512 if small else 256),
]
problems = []
for r in results:
    # fp16 on the GPU against fp32 on the CPU; the embedded model is trained, the 12B one random
    floor = 0.9 if r["model"] == "embedded" or not gpu else 0.5
    if not r["parity"]["top1_agreement"] >= floor:
        problems.append(f"{r['model']}: top-1 agreement with the CPU {r['parity']['top1_agreement']:.0%} < {floor:.0%}")
elapsed = time.time() - int(os.environ["GPU_CHECK_START"])
print(json.dumps({"mode": mode, "results": results, "elapsed_s": round(elapsed)}, indent=2))
if problems:
    sys.exit("gpu_check: FAILED: " + "; ".join(problems))
if gpu and elapsed > 480:
    print(f"gpu_check: note: took {elapsed:.0f} s, over the 8-minute budget", file=sys.stderr)
PYTHON
step "done"
