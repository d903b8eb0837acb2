"""Meta's LLaMA names and tensor rules (SPEC.md sections 3 and 4), torch only for the tensor math:

- names: ``model.embed_tokens.weight`` <-> ``tok_embeddings.weight``, ``model.norm.weight`` <->
  ``norm.weight``, ``lm_head.weight`` <-> ``output.weight``, and per layer ``self_attn.{q,k,v,o}_proj`` <->
  ``attention.w{q,k,v,o}``, ``mlp.{gate,down,up}_proj`` <-> ``feed_forward.w{1,2,3}``,
  ``input_layernorm`` <-> ``attention_norm``, ``post_attention_layernorm`` <-> ``ffn_norm``;
- wq and wk rows: Meta's interleaved rotary pairs <-> HF's rotate-half halves (per head);
- model-parallel shards (13B = 2): q/k/v, w1, w3 and output split on dim 0, wo, w2 and tok_embeddings on
  dim 1, norms replicated. ``output`` may split unevenly (49953 rows): the last shard gets the remainder,
  as the Chinese-LLaMA-Alpaca merge script does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from llmkit.errors import InputError
from llmkit.io.core.naming import Naming, register_naming

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


_HF_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


_META_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")


# Buffers of old checkpoints that Meta's layout has no place for (the Chinese-LLaMA-Alpaca script drops them).
_HF_DROPPED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def _mapped(
    name: str, top: Mapping[str, str], layer_re: re.Pattern[str], layers: Mapping[str, str], prefix: str
) -> str | None:
    """``name`` through one direction's tables: a top-level name, or ``<prefix>N.<suffix>`` for a layer's
    tensor (``layer_re`` gives N and the suffix); None for any other name."""
    if name in top:
        return top[name]
    m = layer_re.match(name)
    if m and m.group(2) in layers:
        return f"{prefix}{m.group(1)}.{layers[m.group(2)]}"
    return None


def hf_name_of_meta(name: str) -> str | None:
    """The HF name of a Meta LLaMA weight; None for any other name (``rope.freqs`` included)."""
    return _mapped(name, META_TO_HF_TOP, _META_LAYER_RE, META_TO_HF_LAYER, "model.layers.")


def hf_to_meta_name(name: str, path: str | os.PathLike[str] | None = None) -> str | None:
    """The Meta name of an HF LLaMA tensor; None for buffers Meta does not store (``rotary_emb.inv_freq``).
    ``path``: the model it comes from, named by the error."""
    meta = _mapped(name, HF_TO_META_TOP, _HF_LAYER_RE, HF_TO_META_LAYER, "layers.")
    if meta is not None or _HF_DROPPED.search(name):
        return meta
    raise InputError(
        f"tensor {name!r} has no place in Meta's LLaMA layout",
        path=path,
        hint="--format pth handles LLaMA models only; write safetensors or bin instead",
    )


def meta_to_hf_name(name: str, path: str | os.PathLike[str] | None = None) -> str | None:
    """The HF name of a Meta LLaMA tensor; None for ``rope.freqs`` (recomputed by transformers). ``path``: the
    file holding it, named by the error."""
    hf = hf_name_of_meta(name)
    if hf is not None or name == "rope.freqs":
        return hf
    raise InputError(
        f"tensor {name!r} is not part of Meta's LLaMA layout",
        path=path,
        hint="from-meta reads Meta's consolidated.NN.pth files of a LLaMA model only",
    )


_HF_ROTARY = re.compile(r"(^|\.)self_attn\.(?P<role>[qk])_proj\.weight$")


def check_rotary_heads(
    shapes: Mapping[str, tuple[int, ...]],
    heads: int,
    kv_heads: int,
    *,
    path: str | os.PathLike[str] | None = None,
    config: str = "config.json",
) -> None:
    """Before any output: every q/k projection (HF names) holds whole rotary pairs for its head count.
    ``path``: the config file the head counts come from (``config``: its kind), named by the error."""
    fields = ("n_heads", "n_kv_heads") if config == "params.json" else ("num_attention_heads", "num_key_value_heads")
    for name, shape in shapes.items():
        m = _HF_ROTARY.search(name)
        if m is None:
            continue
        n, field = (heads, fields[0]) if m.group("role") == "q" else (kv_heads, fields[1])
        if len(shape) != 2 or n <= 0 or shape[0] % (2 * n):
            raise InputError(
                f"{config} gives {n} heads ({field}), but {name} is {tuple(shape)}: its rows are not "
                f"a multiple of 2 x {n} (a rotary pair per head), so they cannot be permuted",
                path=path,
                hint=f"use the {config} of these weights",
            )


def _check_heads(w: torch.Tensor, n_heads: int) -> None:
    """The last line of defence (planning runs :func:`check_rotary_heads` first)."""
    if w.dim() != 2 or n_heads <= 0 or w.shape[0] % (2 * n_heads):
        raise InputError(
            f"cannot permute a {tuple(w.shape)} tensor for {n_heads} heads (rows must be a multiple of 2 x heads)"
        )


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
        raise InputError(
            f"{name}: dim {dim} of size {size} does not split into {parts} equal model-parallel parts",
            hint="choose another shard count",
        )
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


_META_CAT_DIM0 = ("attention.wq.", "attention.wk.", "attention.wv.", "feed_forward.w1.", "feed_forward.w3.", "output.")


_META_CAT_DIM1 = ("attention.wo.", "feed_forward.w2.", "tok_embeddings.")


def meta_shard_dim(name: str) -> int | None:
    """The dim along which Meta model-parallel shards split ``name`` (SPEC.md section 4).

    None means replicated in every shard (norms, ``rope.freqs``): shard 0's copy is used.
    """
    if any(name.startswith(p) or f".{p}" in name for p in _META_CAT_DIM0):
        return 0
    if any(name.startswith(p) or f".{p}" in name for p in _META_CAT_DIM1):
        return 1
    return None


# Meta's naming is the one a name belongs to when no other naming claims it (how the checks have always read it).
register_naming(Naming("meta", rank=20, owns=lambda name: True, to_hf=hf_name_of_meta, from_hf=hf_to_meta_name))
