"""The Hugging Face ``config.json`` of the LLaMA a GGUF file holds, from its metadata: the inverse of what
``convert_hf_to_gguf.py`` writes (``llmkit.io.gguf.metadata.add_llama_parameters``).

``llama.embedding_length`` -> ``hidden_size``, ``feed_forward_length`` -> ``intermediate_size``,
``block_count`` -> ``num_hidden_layers``, ``attention.head_count(_kv)`` -> ``num_attention_heads`` /
``num_key_value_heads``, ``attention.layer_norm_rms_epsilon`` -> ``rms_norm_eps``, ``rope.freq_base`` ->
``rope_theta``, ``context_length`` -> ``max_position_embeddings``, ``vocab_size`` (else the embedding's rows),
``attention.key_length`` -> ``head_dim``, ``rope.scaling.*`` (linear, YaRN) -> ``rope_scaling``; the token ids
from ``tokenizer.ggml.*``; ``tie_word_embeddings`` when the file has no ``output.weight``; ``torch_dtype``
from ``general.file_type``. GGUF stores the floats as float32: each is written as the shortest decimal that
float32 value prints as (``1e-06``, not ``9.999999974752427e-07``), the number the original config held.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmkit.errors import InputError
from llmkit.io.core.llama_weights import llama_config

ARCH = "llama"
FILE_DTYPES = {0: torch.float32, 1: torch.float16, 32: torch.bfloat16}  # general.file_type -> the weights' dtype
_HINT = "the file's metadata is damaged; download or convert it again"


def f32_decimal(value: float) -> float:
    """A float32 value as the shortest decimal that rounds to it (``1e-06`` for float32(1e-6))."""
    return float(str(np.float32(value)))


def meta_int(meta: dict[str, Any], key: str, path: Path, *, default: int | None = None) -> int | None:
    """A positive integer of the metadata (absent: ``default``); any other value is one error naming the key."""
    value = meta.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"GGUF metadata {key} is {value!r}, not a positive integer", path=path, hint=_HINT)
    return value


def meta_float(meta: dict[str, Any], key: str, path: Path, default: float | None = None) -> float | None:
    value = meta.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise InputError(f"GGUF metadata {key} is {value!r}, not a number", path=path, hint=_HINT)
    return f32_decimal(value)


def _rope_scaling(meta: dict[str, Any], path: Path) -> dict | None:
    """``rope_scaling`` from ``llama.rope.scaling.*`` (linear or YaRN, as the converter writes them)."""
    kind = meta.get(f"{ARCH}.rope.scaling.type")
    factor = meta_float(meta, f"{ARCH}.rope.scaling.factor", path)
    if kind not in ("linear", "yarn") or factor is None:
        return None
    rope: dict[str, Any] = {"rope_type": kind, "factor": factor}
    if kind == "yarn":
        orig = meta_int(meta, f"{ARCH}.rope.scaling.original_context_length", path)
        if orig is not None:
            rope["original_max_position_embeddings"] = orig
        for key, suffix in (
            ("extrapolation_factor", "yarn_ext_factor"),
            ("attention_factor", "yarn_attn_factor"),
            ("beta_fast", "yarn_beta_fast"),
            ("beta_slow", "yarn_beta_slow"),
        ):
            value = meta_float(meta, f"{ARCH}.rope.scaling.{suffix}", path)
            if value is not None:
                rope[key] = value
    return rope


def file_dtype(meta: dict[str, Any]) -> torch.dtype:
    """The dtype of the weights as read: ``general.file_type`` F32/F16/BF16, else float32 (dequantized)."""
    return FILE_DTYPES.get(meta.get("general.file_type", -1), torch.float32)


def hf_config(meta: dict[str, Any], shapes: dict[str, tuple[int, ...]], layers: int, path: Path) -> dict:
    """``config.json`` of the HF LLaMA in a GGUF file: ``meta`` its metadata, ``shapes`` its tensors under HF
    names (row-major), ``layers`` the blocks its names show (when ``llama.block_count`` is absent)."""
    vocab, hidden = shapes.get("model.embed_tokens.weight", (None, None))
    gate = shapes.get("model.layers.0.mlp.gate_proj.weight", (None,))[0]
    heads = meta_int(meta, f"{ARCH}.attention.head_count", path)
    hidden = meta_int(meta, f"{ARCH}.embedding_length", path, default=hidden)
    inter = meta_int(meta, f"{ARCH}.feed_forward_length", path, default=gate)
    vocab = meta_int(meta, f"{ARCH}.vocab_size", path, default=vocab)
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = vocab or (len(tokens) if isinstance(tokens, list) else None)
    for what, value in (
        ("head_count", heads),
        ("embedding_length", hidden),
        ("feed_forward_length", inter),
        ("vocab_size", vocab),
    ):
        if value is None:
            raise InputError(f"the GGUF metadata has no {ARCH}.{what}", path=path, hint=_HINT)
    assert heads is not None and hidden is not None and inter is not None and vocab is not None
    cfg = llama_config(
        hidden=hidden,
        intermediate=inter,
        heads=heads,
        kv_heads=meta_int(meta, f"{ARCH}.attention.head_count_kv", path, default=heads) or heads,
        layers=meta_int(meta, f"{ARCH}.block_count", path, default=layers) or layers,
        vocab=vocab,
        dtype=file_dtype(meta),
        rms_norm_eps=meta_float(meta, f"{ARCH}.attention.layer_norm_rms_epsilon", path, 1e-6) or 1e-6,
        max_position_embeddings=meta_int(meta, f"{ARCH}.context_length", path, default=2048) or 2048,
        rope_theta=meta_float(meta, f"{ARCH}.rope.freq_base", path, 10000.0) or 10000.0,
    )
    head_dim = meta_int(meta, f"{ARCH}.attention.key_length", path)
    if head_dim is not None:
        cfg["head_dim"] = head_dim
    rope = _rope_scaling(meta, path)
    if rope is not None:
        cfg["rope_scaling"] = rope
    for key in ("bos", "eos", "padding"):
        value = meta.get(f"tokenizer.ggml.{key}_token_id")
        cfg[f"{'pad' if key == 'padding' else key}_token_id"] = value if isinstance(value, int) else None
    cfg["tie_word_embeddings"] = "lm_head.weight" not in shapes
    return cfg


def generation_config(cfg: dict) -> dict:
    """``generation_config.json``: the token ids of the config (those it has)."""
    return {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if cfg.get(k) is not None}


def json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
