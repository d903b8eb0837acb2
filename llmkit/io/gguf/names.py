"""llama.cpp's LLaMA tensor names and the q/k row order GGUF stores (torch only for the tensor math).

- names: ``model.embed_tokens.weight`` <-> ``token_embd.weight``, ``model.norm.weight`` <->
  ``output_norm.weight``, ``lm_head.weight`` <-> ``output.weight``, and per layer ``self_attn.{q,k,v,o}_proj``
  <-> ``blk.N.attn_{q,k,v,output}``, ``mlp.{gate,up,down}_proj`` <-> ``blk.N.ffn_{gate,up,down}``,
  ``input_layernorm`` <-> ``blk.N.attn_norm``, ``post_attention_layernorm`` <-> ``blk.N.ffn_norm`` (the names
  of ``gguf.get_tensor_name_map(MODEL_ARCH.LLAMA, n)``; a test holds the two equal);
- q and k rows: Hugging Face's rotate-half halves -> Meta's interleaved pairs, per head (k per kv head), as
  ``convert_hf_to_gguf.py`` stores them (``LlamaModel.permute``); the reader applies the inverse.
"""

from __future__ import annotations

import re

import torch

HF_TO_GGUF_TOP: dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}

HF_TO_GGUF_LAYER: dict[str, str] = {
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}

GGUF_TO_HF_TOP = {v: k for k, v in HF_TO_GGUF_TOP.items()}
GGUF_TO_HF_LAYER = {v: k for k, v in HF_TO_GGUF_LAYER.items()}

_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_GGUF_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")
_ROTARY = re.compile(r"(^|\.)self_attn\.(?P<role>[qk])_proj\.weight$")
DROPPED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")  # a buffer transformers recomputes: not stored


def gguf_name(hf: str) -> str | None:
    """The GGUF name of a LLaMA weight under its Hugging Face name, else None."""
    if hf in HF_TO_GGUF_TOP:
        return HF_TO_GGUF_TOP[hf]
    m = _HF_LAYER.match(hf)
    if m and m.group(2) in HF_TO_GGUF_LAYER:
        return f"blk.{m.group(1)}.{HF_TO_GGUF_LAYER[m.group(2)]}"
    return None


def hf_of_gguf(name: str) -> str | None:
    """The Hugging Face name of a LLaMA weight under its GGUF name, else None."""
    if name in GGUF_TO_HF_TOP:
        return GGUF_TO_HF_TOP[name]
    m = _GGUF_LAYER.match(name)
    if m and m.group(2) in GGUF_TO_HF_LAYER:
        return f"model.layers.{m.group(1)}.{GGUF_TO_HF_LAYER[m.group(2)]}"
    return None


def rotary_role(hf: str) -> str | None:
    """``q`` or ``k`` for an attention weight whose rows GGUF stores interleaved, else None."""
    m = _ROTARY.search(hf)
    return m.group("role") if m else None


def to_interleaved(w: torch.Tensor, heads: int) -> torch.Tensor:
    """q/k rows: rotate-half halves -> interleaved pairs, per head (``convert_hf_to_gguf.py``'s permute)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def from_interleaved(w: torch.Tensor, heads: int) -> torch.Tensor:
    """q/k rows: interleaved pairs -> rotate-half halves (the exact inverse of :func:`to_interleaved`)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
