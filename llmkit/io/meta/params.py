"""``params.json`` of a Meta checkpoint: made from a Hugging Face ``config.json`` (:func:`meta_params`),
the number of model-parallel shards of Meta's releases, and LLaMA's ``multiple_of`` rule (SPEC.md 3).
"""

from __future__ import annotations

import math
import os

from llmkit.errors import InputError
from llmkit.io.core.jsonfile import int_field, number_field

# Model-parallel shard counts of Meta's releases, by hidden size (7B, 13B, 33B, 65B).
META_SHARDS_BY_DIM = {4096: 1, 5120: 2, 6656: 4, 8192: 8}


def default_meta_shards(hidden_size: int) -> int:
    """How many ``consolidated.NN.pth`` files Meta used for this size (1 for unknown sizes)."""
    return META_SHARDS_BY_DIM.get(hidden_size, 1)


def llama_multiple_of(dim: int, intermediate: int) -> int | None:
    """The ``multiple_of`` that makes Meta's FFN size formula give ``intermediate`` (256 for LLaMA-1)."""
    base = int(2 * (4 * dim) / 3)
    for m in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if m * math.ceil(base / m) == intermediate:
            return m
    return None


def meta_params(config: dict, path: str | os.PathLike[str] | None = None) -> dict:
    """``params.json`` for an HF LLaMA ``config.json`` (keys and order as in Meta's and Chinese-LLaMA's files).
    A setting of the wrong type is an InputError naming the file (``path``, else ``config.path`` when read
    by read_json)."""
    where = path if path is not None else getattr(config, "path", None)
    sizes = {
        key: int_field(config, key, path=where)
        for key in ("hidden_size", "num_attention_heads", "intermediate_size", "num_key_value_heads")
    }
    sizes["num_hidden_layers"] = int_field(config, "num_hidden_layers", path=where, positive=False)
    if sizes["num_hidden_layers"] is not None and sizes["num_hidden_layers"] < 0:  # 0: a model of no layers
        raise InputError(
            f"num_hidden_layers must not be negative, found {sizes['num_hidden_layers']}",
            path=where,
            hint="the file is damaged or was edited by hand; download it again",
        )
    dim, heads, layers = sizes["hidden_size"], sizes["num_attention_heads"], sizes["num_hidden_layers"]
    if dim is None or heads is None or layers is None:
        raise InputError(
            "config.json lacks hidden_size / num_attention_heads / num_hidden_layers",
            path=where,
            hint="--format pth needs a LLaMA config.json beside the base weights",
        )
    eps = number_field(config, "rms_norm_eps", path=where)
    params: dict = {"dim": dim}
    intermediate = sizes["intermediate_size"]
    multiple_of = llama_multiple_of(dim, intermediate) if intermediate else 256
    params["multiple_of"] = multiple_of if multiple_of is not None else 256
    params["n_heads"] = heads
    params["n_layers"] = layers
    params["norm_eps"] = eps if eps is not None else 1e-6
    params["vocab_size"] = -1
    kv = sizes["num_key_value_heads"]
    if kv is not None and kv != heads:
        params["n_kv_heads"] = kv
    return params


PARAMS_JSON = "params.json"
