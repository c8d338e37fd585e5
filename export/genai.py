"""``genai_config.json`` for onnxruntime-genai (a peer runtime) over an exported folder.

Model type ``decoder`` runs our custom architecture: genai feeds ``input_ids``,
``attention_mask`` and ``position_ids``, binds ``past_key_values.N.key/value`` ->
``present.N.key/value`` and reads ``logits``; it leaves our optional inputs
(``sliding_cache_start``, ``num_logits_to_keep``) at their defaults, so every layer, sliding
ones included, gets the full-length cache it allocates (GroupQueryAttention's
``local_window_size`` does the windowing). ``mtp`` describes ``mtp.onnx`` for genai's MTP runner.
"""

from __future__ import annotations

from typing import Any

from engine.model.config import MellumConfig


def genai_config(config: MellumConfig, max_length: int | None = None, mtp: bool = False) -> dict[str, Any]:
    eos = list(config.eos_token_id) or [config.pad_token_id or 0]
    pad = config.pad_token_id if config.pad_token_id is not None else eos[0]
    kv = {
        "past_key_names": "past_key_values.%d.key",
        "past_value_names": "past_key_values.%d.value",
    }
    presents = {"present_key_names": "present.%d.key", "present_value_names": "present.%d.value"}
    model: dict[str, Any] = {
        "type": "decoder",
        "bos_token_id": config.bos_token_id if config.bos_token_id is not None else pad,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "context_length": config.max_position_embeddings,
        "vocab_size": config.vocab_size,
        "decoder": {
            "filename": "model.onnx",
            "session_options": {
                "log_id": "onnxruntime-genai",
                "log_severity_level": 3,
                "session.intra_op.allow_spinning": "0",  # as OrtBackend: no spinning on shared cores
                "provider_options": [],
            },
            "head_size": config.head_dim,
            "hidden_size": config.hidden_size,
            "num_attention_heads": config.num_heads,
            "num_hidden_layers": config.num_layers,
            "num_key_value_heads": config.num_kv_heads,
            "inputs": {
                "input_ids": "input_ids",
                "attention_mask": "attention_mask",
                "position_ids": "position_ids",
                **kv,
            },
            "outputs": {"logits": "logits", "hidden_states": "hidden_states", **presents},
        },
    }
    if mtp:
        model["mtp"] = {
            "filename": "mtp.onnx",
            "num_hidden_layers": 1,
            "num_key_value_heads": config.num_kv_heads,
            "head_size": config.head_dim,
            "main_hidden_states": "hidden_states",
            "inputs": {
                "input_ids": "input_ids",
                "hidden_states": "hidden_states",
                "attention_mask": "attention_mask",
                "position_ids": "position_ids",
                **kv,
            },
            "outputs": {"logits": "logits", "hidden_states": "hidden_states_out", **presents},
        }
    return {
        "model": model,
        "search": {
            "do_sample": False,
            "early_stopping": True,
            "max_length": min(max_length or config.max_position_embeddings, config.max_position_embeddings),
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": True,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }
