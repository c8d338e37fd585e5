"""Hugging Face model folders: read and write Mellum checkpoints in the HF safetensors layout.

Offers ``read_config``, ``load_model`` (memory-mapped reads, per-expert weights packed on load,
fp32/bf16/fp16), ``save_model`` (the same layout back, optionally sharded), ``hf_name`` mappings and
``CheckpointError``. Every failure names the folder, file and tensor at fault.

Layout (DESIGN.md §2): ``model.embed_tokens.weight``, ``model.layers.N.self_attn.{q,k,v,o}_proj``,
``...{q,k}_norm``, ``...{input,post_attention}_layernorm``, dense ``...mlp.{gate,up,down}_proj``,
sparse ``...mlp.gate`` and ``...mlp.experts.E.{gate,up,down}_proj``, ``model.norm``, ``lm_head``
(absent when tied), and the MTP layer as ``mtp.{fc,pre_fc_norm_embedding,pre_fc_norm_hidden,norm}``
plus ``mtp.layers.0.*``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import struct
from pathlib import Path

import torch

from .model.config import ConfigError, MellumConfig, from_hf, to_hf
from .model.mellum import Mellum

log = logging.getLogger(__name__)

DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
}  # fmt: skip
_ST_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_EXPERT = re.compile(r"^(mtp\.)?(layers\.\d+\.mlp)\.(gate_up_proj|down_proj)$")


class CheckpointError(RuntimeError):
    """A model folder that cannot be loaded as it is."""


def read_config(folder: str | Path) -> MellumConfig:
    folder = Path(folder)
    path = folder / "config.json"
    if not folder.is_dir():
        raise CheckpointError(f"model folder {folder} does not exist")
    if not path.is_file():
        raise CheckpointError(f"no config.json in model folder {folder}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    try:
        return from_hf(raw)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def hf_name(name: str) -> str:
    """Our parameter name -> its checkpoint name (packed experts keep ours; see ``_expert_names``)."""
    if name.startswith("mtp.") or name == "lm_head.weight":
        return name
    return "model." + name


def _expert_names(name: str, num_experts: int) -> list[list[str]]:
    """Checkpoint names of the per-expert tensors packed into our ``gate_up_proj``/``down_proj``."""
    m = _EXPERT.match(name)
    assert m is not None
    prefix = ("mtp." if m.group(1) else "model.") + m.group(2) + ".experts"
    parts = ["gate_proj", "up_proj"] if m.group(3) == "gate_up_proj" else ["down_proj"]
    return [[f"{prefix}.{e}.{p}.weight" for p in parts] for e in range(num_experts)]


def _read_header(path: Path) -> dict:
    """The safetensors header of ``path``, checked against the file's size."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated: {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise CheckpointError(f"{path} is truncated: its header needs {8 + n} bytes, the file has {size}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} has a corrupt safetensors header: {e}") from None
    header.pop("__metadata__", None)
    for name, info in header.items():
        begin, end = info["data_offsets"]
        if 8 + n + end > size:
            raise CheckpointError(
                f"{path} is truncated: tensor {name!r} ends at byte {8 + n + end}, the file has {size} bytes"
            )
        expected = math.prod(info["shape"]) * _ST_DTYPE_BYTES.get(info["dtype"], 0)
        if end - begin != expected:
            raise CheckpointError(
                f"{path}: tensor {name!r} holds {end - begin} bytes, its shape {info['shape']} "
                f"and dtype {info['dtype']} need {expected}"
            )
    return header


def tensor_files(folder: Path) -> dict[str, Path]:
    """Checkpoint tensor name -> the safetensors file holding it."""
    index = folder / "model.safetensors.index.json"
    single = folder / "model.safetensors"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from None
        files = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise CheckpointError(f"shard {shard} listed in {index} is missing from {folder}")
            files[shard] = folder / shard
        out = {}
        for shard, path in files.items():
            held = _read_header(path)
            for name, s in weight_map.items():
                if s == shard and name not in held:
                    raise CheckpointError(f"{index} says tensor {name!r} is in {shard}, but it is not there")
            out.update({name: path for name in held})
        return out
    if single.is_file():
        return {name: single for name in _read_header(single)}
    raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {folder}")


def _resolve_dtype(dtype: str | torch.dtype | None, folder: Path, headers_dtype: str | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return {"BF16": torch.bfloat16, "F16": torch.float16}.get(headers_dtype or "", torch.float32)
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; expected one of fp32, bf16, fp16")
    return DTYPES[dtype]


def load_model(
    folder: str | Path,
    dtype: str | torch.dtype | None = "fp32",
    device: str | torch.device = "cpu",
    mtp: bool = True,
) -> Mellum:
    """Load a Mellum checkpoint folder into our model (eval mode).

    Tensors are read one at a time from the memory-mapped files straight into the model's
    parameters, so peak memory is the model plus one tensor. Without ``mtp.*`` tensors the model
    loads with MTP disabled (one warning).
    """
    from safetensors import safe_open

    folder = Path(folder)
    config = read_config(folder)
    files = tensor_files(folder)
    has_mtp = any(n.startswith("mtp.") for n in files)
    if config.mtp is not None and (not has_mtp or not mtp):
        if not has_mtp:
            log.warning(
                "%s: config declares an MTP layer but the checkpoint has no mtp.* tensors; MTP disabled",
                folder,
            )
        config = _without_mtp(config)
    first = next(iter(files.values()), None)
    ck_dtype = None
    if first is not None:
        header = _read_header(first)
        ck_dtype = next((v["dtype"] for v in header.values() if v["dtype"] in ("F32", "BF16", "F16")), None)
    dtype = _resolve_dtype(dtype, folder, ck_dtype)

    with torch.device("meta"):
        model = Mellum(config)
    handles: dict[Path, object] = {}

    def read(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        path = files.get(name)
        if path is None:
            raise CheckpointError(f"tensor {name!r} is missing from the checkpoint in {folder}")
        if path not in handles:
            handles[path] = safe_open(str(path), framework="pt", device="cpu")
        t = handles[path].get_tensor(name)
        if tuple(t.shape) != shape:
            raise CheckpointError(
                f"tensor {name!r} in {path.name} has shape {tuple(t.shape)}, expected {shape} for this config"
            )
        return t

    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name, meta in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        shape = tuple(meta.shape)
        if _EXPERT.match(name):
            out = torch.empty(shape, dtype=dtype, device=device)
            for e, names in enumerate(_expert_names(name, shape[0])):
                parts = [read(n, (shape[1] // len(names), shape[2])) for n in names]
                out[e].copy_(torch.cat(parts, dim=0) if len(parts) > 1 else parts[0])
                used.update(names)
        else:
            out = read(hf_name(name), shape).to(dtype=dtype, device=device)
            used.add(hf_name(name))
        state[name] = out
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    unexpected = sorted(n for n in set(files) - used if config.mtp is not None or not n.startswith("mtp."))
    if unexpected:
        log.warning("%s: %d unexpected tensors ignored, e.g. %s", folder, len(unexpected), unexpected[:3])
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()


def _without_mtp(config: MellumConfig) -> MellumConfig:
    import dataclasses

    return dataclasses.replace(config, mtp=None)


def checkpoint_state(model: Mellum, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Our parameters under their checkpoint names, experts split per expert."""
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        t = t.detach().to(dtype or t.dtype).contiguous()
        if _EXPERT.match(name):
            for e, names in enumerate(_expert_names(name, t.shape[0])):
                for n, part in zip(names, t[e].chunk(len(names), dim=0), strict=True):
                    out[n] = part.contiguous()
        else:
            out[hf_name(name)] = t
    return out


def save_model(
    model: Mellum, folder: str | Path, dtype: str | torch.dtype | None = None, shard_bytes: int = 0
) -> None:
    """Write ``config.json`` and safetensors weights (sharded with an index when ``shard_bytes`` > 0)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dt = _resolve_dtype(dtype, folder, None) if dtype is not None else next(model.parameters()).dtype
    state = checkpoint_state(model, dt)
    config = to_hf(model.config)
    config["dtype"] = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dt]
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if shard_bytes <= 0:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
