"""The checkpoint loader: layouts it accepts and the errors that name what is wrong."""

import json
import shutil

import pytest
import torch
from hf_reference import hf_model
from safetensors.torch import load_file, save_file

from engine.checkpoint import CheckpointError, load_model, save_model


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _logits(model, n=12):
    ids = torch.arange(n)[None] % model.config.vocab_size
    with torch.no_grad():
        return model(ids, torch.arange(n)[None]).logits


def test_sharded_round_trip_with_index(checkpoints, tmp_path):
    model = load_model(checkpoints("default"))
    save_model(model, tmp_path / "sharded", shard_bytes=40_000)
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
    again = load_model(tmp_path / "sharded")
    assert torch.equal(_logits(model), _logits(again))
    # transformers reads our layout too
    assert (hf_model(tmp_path / "sharded")(torch.arange(12)[None]).logits - _logits(model)).abs().max() < 1e-4


def test_bf16_checkpoint_loads_as_auto_dtype(checkpoints, tmp_path):
    model = load_model(checkpoints("default"))
    save_model(model, tmp_path / "bf16", dtype="bf16")
    assert next(load_model(tmp_path / "bf16", dtype="auto").parameters()).dtype == torch.bfloat16


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path)


def test_unknown_model_type(checkpoints, tmp_path):
    d = _copy(checkpoints("default"), tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "llama"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type is 'llama', expected 'mellum'"):
        load_model(d)


def test_missing_weights_file(checkpoints, tmp_path):
    d = _copy(checkpoints("default"), tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors or model.safetensors.index.json"):
        load_model(d)


def test_missing_shard(checkpoints, tmp_path):
    save_model(load_model(checkpoints("default")), tmp_path / "s", shard_bytes=40_000)
    next(iter(sorted((tmp_path / "s").glob("model-*.safetensors")))).unlink()
    with pytest.raises(
        CheckpointError, match=r"shard model-00001-of-\d+\.safetensors listed in .* is missing"
    ):
        load_model(tmp_path / "s")


def test_missing_tensor_is_named(checkpoints, tmp_path):
    d = _copy(checkpoints("default"), tmp_path / "m")
    state = load_file(str(d / "model.safetensors"))
    del state["model.layers.2.mlp.experts.3.up_proj.weight"]
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"'model\.layers\.2\.mlp\.experts\.3\.up_proj\.weight' is missing"
    ):
        load_model(d)


def test_wrong_shape_names_both_shapes(checkpoints, tmp_path):
    d = _copy(checkpoints("default"), tmp_path / "m")
    state = load_file(str(d / "model.safetensors"))
    state["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(16, 64)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"k_proj\.weight' .* has shape \(16, 64\), expected \(32, 64\)"
    ):
        load_model(d)


def test_truncated_file_names_file_and_tensor(checkpoints, tmp_path):
    d = _copy(checkpoints("default"), tmp_path / "m")
    path = d / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated: tensor '.+' ends at byte"):
        load_model(d)


def test_partial_mtp_weights_are_an_error(checkpoints, tmp_path):
    d = _copy(checkpoints("default"), tmp_path / "m")
    state = load_file(str(d / "model.safetensors"))
    del state["mtp.fc.weight"]
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'mtp\.fc\.weight' is missing"):
        load_model(d)


def test_bad_architecture_values_are_named(checkpoints, tmp_path):
    d = _copy(checkpoints("default"), tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["layer_types"] = cfg["layer_types"][:3]
    cfg["num_key_value_heads"] = 3
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as e:
        load_model(d)
    assert "layer_types has 3 entries, expected num_hidden_layers=4" in str(e.value)
    assert "num_attention_heads (4) must be divisible by num_key_value_heads (3)" in str(e.value)
