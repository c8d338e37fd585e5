"""``mellum-lsp export --random-config NAME``: a real configuration exported with random weights.

The shapes decide the speed, so a 12B-shaped model with random weights measures what users of the
real checkpoint will see, without the checkpoint. The model is built on torch's meta device (no
weight has data), exported through the very path of a real export (``export.onnx_export``), and
quantised by ``export.quantize.quantize_graph`` with ``RandomWeights``: every weight is generated
straight into its packed int4/int8 layout, lazily, one tensor at a time while the file is written.
No weight ever exists in float (the 12B-shaped export peaks well under 1 GB of memory).

Offers ``RandomWeights``, ``random_config`` (a ``MellumConfig`` from ``engine.model.config.PRESETS``
or a JSON file, optionally resized for tests), ``extended_tokenizer`` (the embedded model's
tokenizer padded with unreachable tokens to the config's vocabulary, so the engine can decode any
id the random model picks) and ``run`` (the export, called by ``export.cli``).
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import onnx_ir as ir

from engine.model.config import PRESETS, MellumConfig, from_hf, to_hf

_SPREAD = {4: float(np.std(np.arange(16) - 8)), 8: float(np.std(np.arange(256) - 128))}  # of uniform codes


class RandomWeights:
    """Uniformly random symmetric codes (zero point 2^(bits-1)) with one scale per tensor, so that
    each weight has standard deviation 1/sqrt(input features): the activations stay in range."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def _codes(self, name: str, shape: tuple[int, ...]) -> ir.LazyTensor:
        def make() -> ir.TensorProtocol:
            rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
            return ir.tensor(rng.integers(0, 256, shape, dtype=np.uint8), name=name)

        return ir.LazyTensor(make, ir.DataType.UINT8, ir.Shape(shape), name=name)

    @staticmethod
    def _scales(name: str, shape: tuple[int, ...], k: int, bits: int, dtype: ir.DataType) -> ir.LazyTensor:
        value = 1.0 / (np.sqrt(k) * _SPREAD[bits])

        def make() -> ir.TensorProtocol:
            return ir.tensor(np.full(shape, value, dtype.numpy()), name=name)

        return ir.LazyTensor(make, dtype, ir.Shape(shape), name=name)

    def blocks(self, source: ir.Value, rows_first: bool, bits: int, block: int, name: str) -> tuple:
        n, k = source.shape if rows_first else tuple(reversed(source.shape))
        packed = self._codes(name, (n, k // block, block * bits // 8))
        return packed, self._scales(name + "_scales", (n, k // block), k, bits, source.dtype), None

    def experts(self, source: ir.Value, bits: int, block: int, name: str) -> tuple:
        e, n, k = source.shape
        packed = self._codes(name, (e, n, k * bits // 8))
        return packed, self._scales(name + "_scales", (e, n, k // block), k, bits, source.dtype)


def random_config(name: str, **resize) -> MellumConfig:
    """The preset ``name`` (``engine.model.config.PRESETS``) or a ``config.json`` path, with the
    HF config keys in ``resize`` replaced (small configs for tests)."""
    if name in PRESETS:
        d = dict(PRESETS[name])
    elif Path(name).is_file():
        d = json.loads(Path(name).read_text())
    else:
        raise ValueError(
            f"unknown --random-config {name!r}: expected one of {sorted(PRESETS)} or a config.json path"
        )
    d.update(resize)
    return from_hf(d)


def extended_tokenizer(source: Path, out: Path, vocab_size: int) -> None:
    """Copy the tokenizer in ``source`` to ``out``, its BPE vocabulary padded to ``vocab_size`` with
    tokens no merge can produce (``\\n#<id>``, byte-level): text encodes as before, and every id a
    random model samples decodes to something."""
    tok = json.loads((source / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    have = len(vocab) + sum(1 for t in tok.get("added_tokens", []) if t["content"] not in vocab)
    if have > vocab_size:
        raise ValueError(
            f"the tokenizer in {source} has {have} tokens, more than the config's vocab_size {vocab_size}"
        )
    taken = set(vocab.values()) | {t["id"] for t in tok.get("added_tokens", [])}
    for i in range(vocab_size):
        if i not in taken:
            vocab[f"Ċ#{i}"] = i  # "Ċ" is the byte-level form of "\n"
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    shutil.copy2(source / "tokenizer_config.json", out / "tokenizer_config.json")


def run(a, progress, tmp: Path, options) -> dict:
    """Write the random export into ``tmp`` (``export.cli`` renames it to ``--out``); returns the report."""
    import torch

    from engine.embedded import embedded_model_dir
    from engine.model.mellum import Mellum

    from .mtp_export import export_mtp
    from .onnx_export import export_decoder, save
    from .quantize import quantize_graph

    resize = json.loads(a.config_override) if a.config_override else {}
    config = random_config(a.random_config, **resize)
    from .cli import default_block

    a.block_size = a.block_size or default_block(config, options.quant)
    bits = {"int8": 8, "int4": 4}.get(options.quant or "")
    if bits is None:
        raise ValueError("--random-config needs --quant int4 or int8: its weights are generated quantised")
    progress.update("load", 0, f"{a.random_config} on the meta device")
    from .onnx_export import DTYPES

    with torch.device("meta"):
        model = Mellum(config).to(DTYPES[options.dtype])
    weights = RandomWeights(a.seed)
    report: dict = {"options": {k: v for k, v in vars(a).items() if k != "out"}, "graphs": {}, "timing_s": {}}
    graphs = [("decoder", export_decoder, "model.onnx")] + (
        [("mtp", export_mtp, "mtp.onnx")] if config.mtp else []
    )
    for step, build, filename in graphs:
        t0 = time.perf_counter()
        progress.update(step, 0.05, "torch.export + translation (weights without data)")
        graph = build(model, options)
        progress.update(step, 0.6, f"random int{bits} weights")
        accuracy = 4 if options.target == "cpu" else 0
        report["graphs"][filename] = quantize_graph(
            graph, bits, accuracy, weights=weights, block=a.block_size
        )
        progress.update(f"{step}-save", 0, filename)
        save(graph, tmp / filename, on_tensor=lambda i, n, s=step: progress.update(f"{s}-save", i / n))
        report["timing_s"][filename] = round(time.perf_counter() - t0, 1)
        del graph
    progress.update("files", 0, "config, tokenizer")
    (tmp / "config.json").write_text(json.dumps(to_hf(config), indent=2) + "\n")
    extended_tokenizer(embedded_model_dir(), tmp, config.vocab_size)
    sizes = {p.name: p.stat().st_size for p in tmp.iterdir()}
    report["bytes"] = sizes
    report["verify"] = "skipped: random weights (there is no reference to compare with)"
    return report
