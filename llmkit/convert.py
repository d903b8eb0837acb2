"""Meta LLaMA <-> Hugging Face: tensor names, the q/k rotary permutation and model-parallel splits.

SPEC.md section 4 (Meta -> HF) and the inverse used by ``merge-lora --format pth`` (section 3):

- names: ``model.embed_tokens.weight`` <-> ``tok_embeddings.weight``, ``model.norm.weight`` <->
  ``norm.weight``, ``lm_head.weight`` <-> ``output.weight``, and per layer ``self_attn.{q,k,v,o}_proj`` <->
  ``attention.w{q,k,v,o}``, ``mlp.{gate,down,up}_proj`` <-> ``feed_forward.w{1,2,3}``,
  ``input_layernorm`` <-> ``attention_norm``, ``post_attention_layernorm`` <-> ``ffn_norm``;
- wq and wk rows: Meta's interleaved rotary pairs <-> HF's rotate-half halves (per head);
- model-parallel shards (13B = 2): q/k/v, w1, w3 and output split on dim 0, wo, w2 and tok_embeddings on
  dim 1, norms replicated. ``output`` may split unevenly (49953 rows): the last shard gets the remainder,
  as the Chinese-LLaMA-Alpaca merge script does.

Everything here works on one tensor at a time; nothing reads or writes files.
"""

from __future__ import annotations

import math
import re

import torch

from llmkit.errors import InputError
from llmkit.io.sources import meta_shard_dim

# Top-level tensors (HF name -> Meta name).
HF_TO_META_TOP: dict[str, str] = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
# Per-layer tensors (HF suffix after ``model.layers.N.`` -> Meta suffix after ``layers.N.``).
HF_TO_META_LAYER: dict[str, str] = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
META_TO_HF_TOP = {v: k for k, v in HF_TO_META_TOP.items()}
META_TO_HF_LAYER = {v: k for k, v in HF_TO_META_LAYER.items()}

# Model-parallel shard counts of Meta's releases, by hidden size (7B, 13B, 33B, 65B).
META_SHARDS_BY_DIM = {4096: 1, 5120: 2, 6656: 4, 8192: 8}

_HF_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_META_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")
# Buffers of old checkpoints that Meta's layout has no place for (the Chinese-LLaMA-Alpaca script drops them).
_HF_DROPPED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def hf_to_meta_name(name: str) -> str | None:
    """The Meta name of an HF LLaMA tensor; None for buffers Meta does not store (``rotary_emb.inv_freq``)."""
    if name in HF_TO_META_TOP:
        return HF_TO_META_TOP[name]
    if _HF_DROPPED.search(name):
        return None
    m = _HF_LAYER_RE.match(name)
    if m and m.group(2) in HF_TO_META_LAYER:
        return f"layers.{m.group(1)}.{HF_TO_META_LAYER[m.group(2)]}"
    raise InputError(f"tensor {name!r} has no place in Meta's LLaMA layout",
                     hint="--format pth handles LLaMA models only; write safetensors or bin instead")


def meta_to_hf_name(name: str) -> str | None:
    """The HF name of a Meta LLaMA tensor; None for ``rope.freqs`` (recomputed by transformers)."""
    if name in META_TO_HF_TOP:
        return META_TO_HF_TOP[name]
    if name == "rope.freqs":
        return None
    m = _META_LAYER_RE.match(name)
    if m and m.group(2) in META_TO_HF_LAYER:
        return f"model.layers.{m.group(1)}.{META_TO_HF_LAYER[m.group(2)]}"
    raise InputError(f"tensor {name!r} is not part of Meta's LLaMA layout")


def _check_heads(w: torch.Tensor, n_heads: int) -> None:
    if w.dim() != 2 or n_heads <= 0 or w.shape[0] % (2 * n_heads):
        raise InputError(f"cannot permute a {tuple(w.shape)} tensor for {n_heads} heads "
                         "(rows must be a multiple of 2 x heads)")


def permute_meta_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """wq/wk rows: Meta interleaved rotary pairs -> HF rotate-half (transformers' conversion script)."""
    _check_heads(w, n_heads)
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def unpermute_hf_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """wq/wk rows: HF rotate-half -> Meta interleaved (the exact inverse of :func:`permute_meta_to_hf`)."""
    _check_heads(w, n_heads)
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_split_sizes(name: str, shape: tuple[int, ...], parts: int) -> list[tuple[int, ...]]:
    """The shape of ``name`` in each of ``parts`` Meta shards (SPEC.md section 3's split rules)."""
    if parts == 1:
        return [tuple(shape)]
    dim = meta_shard_dim(name)
    if dim is None:
        return [tuple(shape)] * parts
    size = shape[dim]
    if size % parts == 0:
        pieces = [size // parts] * parts
    elif name == "output.weight":
        # Chinese-LLaMA-Alpaca: 49953 rows over 2 shards -> [24976, 24977] (the last takes the remainder).
        pieces = [size // parts] * parts
        pieces[-1] += size % parts
    else:
        raise InputError(f"{name}: dim {dim} of size {size} does not split into {parts} equal model-parallel parts",
                         hint="choose another --pth-shards")
    out = []
    for p in pieces:
        s = list(shape)
        s[dim] = p
        out.append(tuple(s))
    return out


def meta_split(name: str, tensor: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """Cut one Meta tensor into its model-parallel pieces (views; norms are the same tensor each time)."""
    if parts == 1:
        return [tensor]
    dim = meta_shard_dim(name)
    if dim is None:
        return [tensor] * parts
    sizes = [s[dim] for s in meta_split_sizes(name, tuple(tensor.shape), parts)]
    return list(torch.split(tensor, sizes, dim=dim))


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


def meta_params(config: dict) -> dict:
    """``params.json`` for an HF LLaMA ``config.json`` (keys and order as in Meta's and Chinese-LLaMA's files)."""
    try:
        dim = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        layers = int(config["num_hidden_layers"])
    except (KeyError, TypeError, ValueError):
        raise InputError("config.json lacks hidden_size / num_attention_heads / num_hidden_layers",
                         hint="--format pth needs a LLaMA config.json beside the base weights") from None
    params: dict = {"dim": dim}
    intermediate = config.get("intermediate_size")
    multiple_of = llama_multiple_of(dim, int(intermediate)) if intermediate else 256
    params["multiple_of"] = multiple_of if multiple_of is not None else 256
    params["n_heads"] = heads
    params["n_layers"] = layers
    params["norm_eps"] = float(config.get("rms_norm_eps", 1e-6))
    params["vocab_size"] = -1
    kv = config.get("num_key_value_heads")
    if kv is not None and int(kv) != heads:
        params["n_kv_heads"] = int(kv)
    return params
