"""Backends side by side: ONNX Runtime (ours) vs PyTorch eager vs onnxruntime-genai, one exported model.

    mellum-lsp bench backends [--model DIR] [--onnx DIR] [--context 1536] [--decode 64]
                              [--reps 5] [--threads 1] [--no-genai] [--json]

Measures, interleaving the backends within every repetition and reporting medians:
- decode tokens/s: greedy decoding of ``--decode`` tokens after a ``--context``-token prompt;
- keystroke latency: the prompt is held in the cache, one character is typed, the tail is
  re-tokenised (the cache is rolled back to the last unchanged token) and the time to the first
  new token's logits is taken -- what an editor waits for after each key press.
``--onnx`` defaults to a fresh export of ``--model`` into a temporary folder. ``--threads``
defaults to 1: on a machine whose cores are busy with other work, PyTorch's OpenMP pool with more
threads than free cores stalls (measured here: a 1.5K-token prefill took 16 s with 2 threads,
0.24 s with 1), which would flatter the ONNX Runtime numbers; pass ``--threads 2`` on an idle
machine. With ``--json`` the output is one object: ``ort_tok_s``, ``torch_tok_s``,
``genai_tok_s``, ``ort_keystroke_ms``, ``torch_keystroke_ms``, ``genai_keystroke_ms`` and the
settings.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _prompt(model_dir: Path, vocab: int, n: int) -> tuple[list[int], list[int], int]:
    """A ~``n``-token prompt cut inside a word, the ids after typing the word's next character,
    and the length both share (the cache rolls back to it)."""
    from engine.tokenizer import Tokenizer, TokenizerError

    try:
        tok = Tokenizer.from_folder(model_dir)
    except (TokenizerError, OSError):  # no tokenizer: random ids
        tok = None
    if tok is None:  # random ids: the typed character regrows the last token into two
        rng = np.random.default_rng(0)
        ids = rng.integers(0, vocab, n).tolist()
        return ids, ids[:-1] + rng.integers(0, vocab, 2).tolist(), n - 1
    import inspect
    import json as json_module

    text = inspect.getsource(json_module.decoder) * 8
    cut = len(tok.decode(tok.encode(text)[:n]))
    while not (text[cut - 1].isalpha() and text[cut].isalpha()):  # stop in the middle of a word
        cut += 1
    ids, typed = tok.encode(text[:cut]), tok.encode(text[: cut + 1])
    common = next((i for i, (a, b) in enumerate(zip(ids, typed, strict=False)) if a != b), len(ids))
    return ids, typed, common


class _Engine:
    """Our Backend interface: prefill once, decode, type a key."""

    def __init__(self, backend, prompt: list[int]) -> None:
        self.backend, self.prompt = backend, prompt
        self.seq = backend.new_sequence()
        for i in range(0, len(prompt), 512):
            logits = backend.forward(self.seq, prompt[i : i + 512])
        self.first = int(logits[-1].argmax())

    def decode(self, n: int) -> float:
        b, seq = self.backend, self.seq
        token = self.first
        t0 = time.perf_counter()
        for _ in range(n):
            token = int(b.forward(seq, [token])[-1].argmax())
        rate = n / (time.perf_counter() - t0)
        b.truncate(seq, len(self.prompt))
        return rate

    def keystroke(self, typed: list[int], common: int) -> float:
        b, seq = self.backend, self.seq
        t0 = time.perf_counter()
        b.truncate(seq, common)
        int(b.forward(seq, typed[common:])[-1].argmax())
        ms = (time.perf_counter() - t0) * 1e3
        b.truncate(seq, common)  # back to the held prompt for the next repetition
        if common < len(self.prompt):
            b.forward(seq, self.prompt[common:])
        return ms


class _Genai:
    """onnxruntime-genai over the same folder: a generator holding the prompt."""

    def __init__(self, folder: Path, prompt: list[int], threads: int | None, max_length: int) -> None:
        import onnxruntime_genai as og

        config = og.Config(str(folder))
        if threads:
            config.overlay(
                json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}})
            )
        self.og, self.model, self.prompt = og, og.Model(config), prompt
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, do_sample=False)
        self.gen = og.Generator(self.model, params)
        self.gen.append_tokens(prompt)

    def decode(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            self.gen.generate_next_token()
        rate = n / (time.perf_counter() - t0)
        self.gen.rewind_to(len(self.prompt))
        return rate

    def keystroke(self, typed: list[int], common: int) -> float:
        t0 = time.perf_counter()
        self.gen.rewind_to(common)
        self.gen.append_tokens(typed[common:])
        int(np.asarray(self.gen.get_logits())[0, -1].argmax())
        ms = (time.perf_counter() - t0) * 1e3
        self.gen.rewind_to(common)
        if common < len(self.prompt):
            self.gen.append_tokens(self.prompt[common:])
        return ms


def run(a: argparse.Namespace) -> dict:
    from engine.backends.ort_backend import OrtBackend
    from engine.backends.torch_backend import TorchBackend

    model_dir = Path(a.model) if a.model else _embedded()
    onnx_dir = Path(a.onnx) if a.onnx else None
    tmp = None
    if onnx_dir is None:
        from export.cli import main as export_main

        tmp = tempfile.TemporaryDirectory(prefix="bench-backends-")
        onnx_dir = Path(tmp.name) / "onnx"
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the results
            if export_main(["--model", str(model_dir), "--out", str(onnx_dir)]) != 0:
                raise SystemExit("export failed")
    torch_backend = TorchBackend.load(str(model_dir), threads=a.threads)
    ort_backend = OrtBackend.load(onnx_dir, threads=a.threads)
    prompt, typed, common = _prompt(model_dir, ort_backend.config.vocab_size, a.context)
    engines = {"ort": _Engine(ort_backend, prompt), "torch": _Engine(torch_backend, prompt)}
    if not a.no_genai:
        max_length = len(prompt) + max(a.decode, len(typed) - common) + 8
        engines["genai"] = _Genai(onnx_dir, prompt, a.threads, max_length)
    rates = {k: [] for k in engines}
    keys = {k: [] for k in engines}
    for e in engines.values():  # warm-up
        e.decode(4)
    for _ in range(a.reps):
        for name, e in engines.items():
            rates[name].append(e.decode(a.decode))
            keys[name].append(e.keystroke(typed, common))
    out = {
        "context": len(prompt),
        "decode_tokens": a.decode,
        "reps": a.reps,
        "threads": a.threads,
        "keystroke_rollback": len(prompt) - common,  # tokens the typed character re-tokenised
        "keystroke_tokens": len(typed) - common,  # tokens run to get the first new token
    }
    for name in engines:
        out[f"{name}_tok_s"] = statistics.median(rates[name])
        out[f"{name}_keystroke_ms"] = statistics.median(keys[name])
    out["ort_vs_torch_decode"] = out["ort_tok_s"] / out["torch_tok_s"]
    if "genai_tok_s" in out:
        out["ort_vs_genai_decode"] = out["ort_tok_s"] / out["genai_tok_s"]
    if tmp is not None:
        tmp.cleanup()
    return out


def _embedded() -> Path:
    from engine.embedded import embedded_model_dir

    return embedded_model_dir()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mellum-lsp bench backends", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint folder (default: the embedded model)")
    p.add_argument("--onnx", help="its export (default: export --model into a temporary folder)")
    p.add_argument("--context", type=int, default=1536, help="prompt tokens held in the cache")
    p.add_argument("--decode", type=int, default=64, help="tokens per decode measurement")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="threads per backend (see the module docstring)")
    p.add_argument("--no-genai", action="store_true", help="skip onnxruntime-genai")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    out = run(a)
    if a.json:
        print(json.dumps(out))
        return 0
    print(
        f"context {out['context']} tokens, {out['decode_tokens']} decoded, {a.reps} reps, {a.threads} threads"
    )
    print(f"{'backend':<8} {'decode tok/s':>13} {'keystroke ms':>13}")
    for name in ("ort", "torch", "genai"):
        if f"{name}_tok_s" in out:
            print(f"{name:<8} {out[f'{name}_tok_s']:>13.1f} {out[f'{name}_keystroke_ms']:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
