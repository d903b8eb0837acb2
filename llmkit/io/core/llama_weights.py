"""What a complete LLaMA holds: its weights' names and shapes, and the names of what else a file may hold.

A LLaMA of a given config has exactly these weights (Hugging Face names; the MindFormers and Meta names
map one to one, :func:`hf_name`): ``model.embed_tokens.weight``, per layer ``self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``, ``input_layernorm``, ``post_attention_layernorm``, then
``model.norm.weight`` and ``lm_head.weight`` (left out only when the config says
``tie_word_embeddings``). The sizes come from ``config.json`` (or Meta's ``params.json``,
:func:`meta_config`): :func:`llama_shapes`; without them, the layer count is the one the names show and
the shapes are not judged (:func:`expected_from`). Besides the weights, names are sorted, never guessed:
``rotary_emb.inv_freq`` / ``rope.freqs`` buffers (:func:`is_buffer`) and training state
(:func:`is_training_state`: MindSpore's optimizer moments and loss-scale counters).
The check of a model against this is ``llmkit.io.core.llama_tensors``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.errors import InputError
from llmkit.io.core.jsonfile import int_field

if TYPE_CHECKING:
    import torch

PathArg = str | os.PathLike[str] | None  # the file a message names

EMBED, NORM, LM_HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"


LAYER_TENSORS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
    "input_layernorm.weight",
    "post_attention_layernorm.weight",
)


HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_HF_ORDER = tuple(n.removesuffix(".weight") for n in LAYER_TENSORS)  # a layer's modules, state-dict order


def hf_sort_key(name: str) -> tuple:
    """transformers' state-dict order: embed_tokens, layers 0..N (its modules in order), norm, lm_head."""
    if name == "model.embed_tokens.weight":
        return (0,)
    m = HF_LAYER.match(name)
    if m:
        rest = name[m.end() :].removesuffix(".weight")
        return (1, int(m.group(1)), _HF_ORDER.index(rest) if rest in _HF_ORDER else len(_HF_ORDER), rest)
    return (2, name != "model.norm.weight", name)


_BUFFER = re.compile(r"(^|\.)rotary_emb\.inv_freq$|^rope\.freqs$")


# Training state as MindSpore and MindFormers save it beside the weights (``save_checkpoint`` of a training
# cell): the optimizers' per-parameter state, ``Parameter.clone(prefix=...)`` of each weight (AdamWeightDecay
# adam_m/adam_v, Adam/LazyAdam/AdaMax moment1/moment2, Momentum/FTRL/LARS moments, FTRL linear, Lamb
# lamb_m/lamb_v, RMSProp mean_square/mean_grad/moment, Adagrad/SGD accum, SGD stat, Rprop prev/step_size,
# ASGD ax_/mu_/eta_, MindFormers' gradient accumulation accu_grads), and the scalars of the optimizers,
# the training loop and the loss-scale cells.
_STATE_PREFIX = re.compile(
    r"^((adam_m|adam_v|moment1|moment2|moments|moment|linear|lamb_m|lamb_v|mean_square|"
    r"mean_grad|accum|accu_grads|stat|prev|step_size|ax_)\.|(mu|eta)_)."
)


_STATE_NAMES = frozenset(
    {
        "global_step",
        "learning_rate",
        "momentum",
        "beta1_power",
        "beta2_power",
        "fake_lr",
        "fake_param",
        "scale_sense",
        "loss_scale",
        "current_iterator_step",
        "last_overflow_iterator_step",
        "scale_window_down_count",
        "epoch_num",
        "step_num",
    }
)


def is_training_state(name: str) -> bool:
    """True for the optimizer and training-loop tensors MindSpore saves beside a model's weights."""
    return name in _STATE_NAMES or _STATE_PREFIX.match(name) is not None


def is_buffer(name: str) -> bool:
    """True for the rotary ``inv_freq`` / ``rope.freqs`` buffers, which a LLaMA may or may not store."""
    return _BUFFER.search(name) is not None


def layers_seen(hf_names: Iterable[str]) -> int:
    """The layer count HF names show: one more than the highest ``model.layers.N``."""
    return 1 + max((int(m.group(1)) for n in hf_names if (m := HF_LAYER.match(n))), default=-1)


_SIZE_KEYS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "intermediate_size")


def _sizes(cfg: dict, path: PathArg) -> tuple[int, int, int, int, int, int, int] | None:
    """(hidden, heads, kv heads, head dim, layers, vocab, intermediate), None when a size is absent; a size
    that is not a positive integer is an :class:`InputError` naming ``path``."""
    hidden, heads, layers, vocab, inter = (int_field(cfg, k, path=path) for k in _SIZE_KEYS)
    kv = int_field(cfg, "num_key_value_heads", path=path)
    head_dim = int_field(cfg, "head_dim", path=path)
    if hidden is None or heads is None or layers is None or vocab is None or inter is None:
        return None
    return hidden, heads, kv or heads, head_dim or hidden // heads, layers, vocab, inter


def llama_shapes(cfg: dict, path: PathArg = None) -> dict[str, tuple[int, ...]]:
    """Every weight (HF name -> shape) of the LLaMA ``cfg`` describes; a size missing from it or not a
    positive integer is an :class:`InputError` naming ``path``."""
    sizes = _sizes(cfg, path)
    if sizes is None:
        missing = next(k for k in _SIZE_KEYS if cfg.get(k) is None)
        raise InputError(f"config has no {missing}", path=path, hint="pass the model's own config.json")
    hidden, heads, kv, head_dim, layers, vocab, inter = sizes
    out: dict[str, tuple[int, ...]] = {EMBED: (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out.update(
            {
                p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
                p + "self_attn.k_proj.weight": (kv * head_dim, hidden),
                p + "self_attn.v_proj.weight": (kv * head_dim, hidden),
                p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
                p + "mlp.gate_proj.weight": (inter, hidden),
                p + "mlp.up_proj.weight": (inter, hidden),
                p + "mlp.down_proj.weight": (hidden, inter),
                p + "input_layernorm.weight": (hidden,),
                p + "post_attention_layernorm.weight": (hidden,),
            }
        )
    out[NORM] = (hidden,)
    if not cfg.get("tie_word_embeddings", False):
        out[LM_HEAD] = (vocab, hidden)
    return out


def llama_config(
    *,
    hidden: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    layers: int,
    vocab: int,
    dtype: torch.dtype,
    rms_norm_eps: float = 1e-6,
    max_position_embeddings: int = 2048,
    rope_theta: float = 10000.0,
) -> dict:
    """The ``config.json`` of the HF LLaMA of these sizes (keys in transformers' order, LLaMA's token ids and
    LLaMA-1's defaults); ``dtype`` named as ``torch_dtype`` (``float16`` for a dtype config files do not name)."""
    from llmkit.io.core.dtypes import CONFIG_NAMES

    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers,
        "rms_norm_eps": rms_norm_eps,
        "vocab_size": vocab,
        "max_position_embeddings": max_position_embeddings,
        "rope_theta": rope_theta,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": CONFIG_NAMES.get(dtype, "float16"),
    }


def says_llama(cfg: dict | None) -> bool | None:
    """True when a config names the LLaMA architecture, False when it names another, None when it names none."""
    if not cfg:
        return None
    arch, kind = cfg.get("architectures"), cfg.get("model_type")
    if isinstance(kind, str) and kind:
        return kind == "llama"
    if isinstance(arch, list) and arch:
        return any(isinstance(a, str) and a.startswith("Llama") for a in arch)
    return None


@dataclass(frozen=True)
class Expected:
    """The weights a complete model has (HF name -> shape, or None where nothing gives the shape), and what
    says so (for messages: ``its config.json``, ``params.json``, ``its names: N layers``)."""

    shapes: dict[str, tuple[int, ...] | None]
    described: str
    where: Path | None = None  # the config.json / params.json that describes it
    optional: frozenset[str] = frozenset()  # expected names that may be absent (a tied lm_head)


def expected_from(
    cfg: dict | None, hf_names: Iterable[str], *, path: PathArg = None, described: str = "its config.json"
) -> Expected:
    """What ``cfg`` describes (sizes, so shapes too), or, for a config without sizes or no config, the
    names of a LLaMA with the layer count the config gives or ``hf_names`` show (shapes not judged)."""
    tied = bool(cfg.get("tie_word_embeddings", False)) if cfg else False
    optional = frozenset({LM_HEAD}) if tied else frozenset()  # a tied lm_head may still be stored
    if cfg and _sizes(cfg, path) is not None:
        shapes: dict[str, tuple[int, ...] | None] = dict(llama_shapes(cfg, path))
        if tied:
            shapes[LM_HEAD] = shapes[EMBED]
        return Expected(shapes, described, Path(path) if path else None, optional)
    layers = (int_field(cfg, "num_hidden_layers", path=path) if cfg else None) or layers_seen(hf_names)
    names = [EMBED] + [f"model.layers.{i}.{t}" for i in range(layers) for t in LAYER_TENSORS] + [NORM, LM_HEAD]
    what = described if cfg and cfg.get("num_hidden_layers") else f"its names: {layers} layers"
    return Expected(dict.fromkeys(names), what, Path(path) if path and cfg else None, optional)


def meta_config(params: dict | None, shapes: dict[str, tuple[int, ...]]) -> dict | None:
    """The sizes of a Meta folder as config keys: params.json's, the vocabulary and FFN size from the tensors."""
    if not params:
        return None
    embed = shapes.get("tok_embeddings.weight")
    w1 = next((s for n, s in shapes.items() if n.endswith(".feed_forward.w1.weight") and len(s) == 2), None)
    vocab = params.get("vocab_size")
    cfg = {
        "model_type": "llama",
        "hidden_size": params.get("dim"),
        "num_attention_heads": params.get("n_heads"),
        "num_key_value_heads": params.get("n_kv_heads"),
        "num_hidden_layers": params.get("n_layers"),
        "vocab_size": vocab
        if isinstance(vocab, int) and vocab > 0
        else (embed[0] if embed and len(embed) == 2 else None),
        "intermediate_size": w1[0] if w1 else None,
    }
    return {k: v for k, v in cfg.items() if v is not None}
