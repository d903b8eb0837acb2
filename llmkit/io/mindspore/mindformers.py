"""MindFormers' LLaMA parameter names ⇄ Hugging Face (SPEC.md section 5), and LLaMA configs against shapes.

The names are ordered string replacements with the ``model.`` prefix kept (``model.layers.0.self_attn.
q_proj.weight`` ⇄ ``model.layers.0.attention.wq.weight``). Only the tensors of a LLaMA have a
MindFormers name; anything else (``rotary_emb.inv_freq`` buffers, a training checkpoint's optimizer
moments) maps to None and the job decides (kept, dropped or refused with ``--strict``).

Rotary layout: MindFormers r0.7 and later read Hugging Face's rotate-half wq/wk rows as they are;
MindFormers r0.6 (August 2023, the TechGPT-2.0 card's era) expects Meta's interleaved rows
(``llmkit.io.meta.names.unpermute_hf_to_meta``).

Configs: :func:`guessed_config` derives one from the shapes only for a published LLaMA size
(:data:`KNOWN_LLAMA_SHAPES`: only those decide the head count), :func:`check_config` checks a given one
against the shapes, and :func:`check_complete` refuses a checkpoint lacking a tensor of its config (the one
check of ``llmkit.io.core.llama_tensors``).
"""

from __future__ import annotations

import re

from llmkit.errors import InputError
from llmkit.io.core.llama_tensors import check_tensors
from llmkit.io.core.llama_weights import layers_seen, llama_config, llama_shapes
from llmkit.io.core.naming import Naming, is_hf, register_naming

_RULES = (
    ("embed_tokens.weight", "tok_embeddings.embedding_weight"),
    (".self_attn.q_proj.", ".attention.wq."),
    (".self_attn.k_proj.", ".attention.wk."),
    (".self_attn.v_proj.", ".attention.wv."),
    (".self_attn.o_proj.", ".attention.wo."),
    (".mlp.gate_proj.", ".feed_forward.w1."),
    (".mlp.down_proj.", ".feed_forward.w2."),
    (".mlp.up_proj.", ".feed_forward.w3."),
    (".input_layernorm.", ".attention_norm."),
    (".post_attention_layernorm.", ".ffn_norm."),
    (".norm.", ".norm_out."),
)


_MF = re.compile(
    r"^(model\.tok_embeddings\.embedding_weight|model\.norm_out\.weight|lm_head\.weight|model\.layers\.\d+\."
    r"(attention\.w[qkvo]|feed_forward\.w[123]|attention_norm|ffn_norm)\.weight)$"
)


ROTARY_LAYOUTS = ("hf", "meta")


def is_mindformers(name: str) -> bool:
    return _MF.match(name) is not None


def hf_to_mindformers(name: str) -> str | None:
    """The MindFormers name of an HF LLaMA tensor; None when it has none."""
    if not is_hf(name):
        return None
    for hf, mf in _RULES:
        name = name.replace(hf, mf)
    return name


def mindformers_to_hf(name: str) -> str | None:
    """The HF name of a MindFormers LLaMA tensor; None when it has none."""
    if not is_mindformers(name):
        return None
    for hf, mf in reversed(_RULES):
        name = name.replace(mf, hf)
    return name


def llama_hf_name(name: str) -> str | None:
    """The HF name of a LLaMA tensor stored under either naming (HF or MindFormers); None when it has none."""
    return name if is_hf(name) else mindformers_to_hf(name)


def rotary_role(hf_name: str) -> str | None:
    """``q`` or ``k`` for the tensors whose rows carry the rotary layout (HF names), else None."""
    if hf_name.endswith(".self_attn.q_proj.weight"):
        return "q"
    if hf_name.endswith(".self_attn.k_proj.weight"):
        return "k"
    return None


# (hidden_size, intermediate_size) -> (model, num_attention_heads) of the published LLaMA configs (Meta's
# params.json of LLaMA 7B/13B/30B/65B, the Llama-2 7B/13B/70B config.json): the only shapes that decide the
# head count (head_dim 128 in all of them; Llama-2-70B has 8 key/value heads, read off k_proj).
KNOWN_LLAMA_SHAPES = {
    (4096, 11008): ("LLaMA-7B / Llama-2-7B", 32),
    (5120, 13824): ("LLaMA-13B / Llama-2-13B", 40),
    (6656, 17920): ("LLaMA-33B", 52),
    (8192, 22016): ("LLaMA-65B", 64),
    (8192, 28672): ("Llama-2-70B", 64),
}


_EMBED, _GATE, _K = (
    "model.embed_tokens.weight",
    "model.layers.0.mlp.gate_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
)


def _undecided(what: str, path) -> InputError:
    return InputError(
        f"cannot derive config.json from the tensor shapes: {what}",
        path=path,
        hint="pass --config with the model's config.json (or its Hugging Face folder)",
    )


def guessed_config(shapes: dict, dtype, path=None) -> tuple[dict, list[str]]:
    """An HF LLaMA ``config.json`` from the tensor shapes (HF names -> shape), and the keys that were
    guessed rather than read off a shape (LLaMA-1 defaults). Only a published LLaMA size
    (:data:`KNOWN_LLAMA_SHAPES`) decides the head count; anything else is an :class:`InputError` asking for
    ``--config``, as is a missing ``lm_head`` (no published size ties it to the embedding)."""
    embed, gate, k = shapes.get(_EMBED), shapes.get(_GATE), shapes.get(_K)
    if embed is None or len(embed) != 2:
        raise _undecided("no model.embed_tokens.weight (tok_embeddings.embedding_weight)", path)
    if gate is None or len(gate) != 2:
        raise _undecided("no feed-forward weights (w1) to read intermediate_size from", path)
    vocab, hidden = embed
    known = KNOWN_LLAMA_SHAPES.get((hidden, gate[0]))
    if known is None:
        raise _undecided(
            f"hidden_size {hidden} with intermediate_size {gate[0]} is not a published LLaMA size, "
            "so num_attention_heads is not known",
            path,
        )
    model, heads = known
    head_dim = hidden // heads
    kv_heads = k[0] // head_dim if k is not None and len(k) == 2 and k[0] % head_dim == 0 else 0
    if not kv_heads or heads % kv_heads:
        raise _undecided(f"wk has shape {list(k) if k else None}, which fits no key/value head count of {model}", path)
    if "lm_head.weight" not in shapes:
        raise _undecided(
            "no lm_head.weight (every published LLaMA size has an output layer of its own; "
            "a config with tie_word_embeddings true settles it)",
            path,
        )
    cfg = llama_config(
        hidden=hidden,
        intermediate=gate[0],
        heads=heads,
        kv_heads=kv_heads,
        layers=layers_seen(shapes),
        vocab=vocab,
        dtype=dtype,
    )
    guessed = [
        f"num_attention_heads={heads} (the {model} shapes)",
        "rms_norm_eps=1e-06",
        "max_position_embeddings=2048",
        "rope_theta=10000.0",
    ]
    return cfg, guessed


def check_complete(cfg: dict, shapes: dict, source, config_path=None) -> None:
    """Refuse a checkpoint (``shapes``: name -> shape) that lacks a weight of the model ``cfg`` describes,
    holds one twice or in another shape, or holds a damaged name of one (:func:`llmkit.io.core.llama_tensors.
    check_tensors`): a lost or renamed record is named, not converted into a model without it."""
    llama_shapes(cfg, config_path)  # a config without its sizes cannot describe the model
    check_tensors(shapes, path=source, cfg=cfg, config_path=config_path)


def check_config(cfg: dict, shapes: dict, path) -> None:
    """Refuse a ``--config`` whose sizes disagree with the tensors (naming the key and the file)."""
    embed = shapes.get("model.embed_tokens.weight")
    facts = {}
    if embed is not None and len(embed) == 2:
        facts["vocab_size"], facts["hidden_size"] = embed
    gate = shapes.get("model.layers.0.mlp.gate_proj.weight")
    if gate is not None:
        facts["intermediate_size"] = gate[0]
    layers = layers_seen(shapes)
    if layers:
        facts["num_hidden_layers"] = layers
    for key, value in facts.items():
        if key in cfg and cfg[key] != value:
            raise InputError(
                f"config says {key}={cfg[key]} but the checkpoint's tensors give {value}",
                path=path,
                hint="pass the config.json of the model this checkpoint was made from",
            )
    hidden, heads = cfg.get("hidden_size"), cfg.get("num_attention_heads")
    if not isinstance(heads, int) or not isinstance(hidden, int) or heads <= 0 or hidden % heads:
        raise InputError(
            f"config has no usable num_attention_heads ({heads!r} for hidden_size {hidden!r})",
            path=path,
            hint="pass the model's own config.json",
        )


def hf_named(src):
    """``src`` (a :class:`~llmkit.io.core.source.TensorSource`) with MindFormers names seen under their HF names
    (other names kept), so a ``.ckpt`` compares tensor by tensor with the model it came from; ``src`` itself
    when nothing would be renamed."""
    from llmkit.io.core.renamed import RenamedSource

    mapping = {n: llama_hf_name(n) or n for n in src.keys()}
    if all(k == v for k, v in mapping.items()) or len(set(mapping.values())) != len(mapping):
        return src
    return RenamedSource(src, mapping)


register_naming(Naming("mindformers", rank=10, owns=is_mindformers, to_hf=mindformers_to_hf, from_hf=hf_to_mindformers))
