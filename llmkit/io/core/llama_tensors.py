"""What a complete LLaMA holds, and the one check of it that every job reading a model runs first.

A LLaMA of a given config has exactly these weights (Hugging Face names; the MindFormers and Meta names
map one to one): ``model.embed_tokens.weight``, per layer ``self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj``, ``input_layernorm``, ``post_attention_layernorm``, then
``model.norm.weight`` and ``lm_head.weight`` (left out only when the config says
``tie_word_embeddings``). The sizes come from ``config.json`` (or Meta's ``params.json``); without one,
the layer count is the one the names show and the shapes are not judged.

:func:`check_tensors` refuses, before any output, a model that lacks one of them, holds one twice
(under two namings), holds an extra tensor whose name is a damaged copy of an expected one (a close
match, ``difflib``), holds layers or a tensor shape its config does not describe. What else a file may
hold is sorted by name, never guessed: ``rotary_emb.inv_freq`` / ``rope.freqs`` buffers (optional),
training state (:func:`is_training_state`: MindSpore's optimizer moments and loss-scale counters), and
anything else (``unknown``: the job keeps, drops or refuses it as it always did).
:func:`check_source` applies it to a :class:`~llmkit.io.core.source.TensorSource` when that is a LLaMA: the
config says ``llama`` / ``LlamaForCausalLM``, or there is no config (or it names no architecture) and the
names are LLaMA's. Adapters, other architectures and one shard file on its own are not checked.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import InputError
from llmkit.io.core.jsonfile import int_field

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


_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


_META_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


_BUFFER = re.compile(r"(^|\.)rotary_emb\.inv_freq$|^rope\.freqs$")


_SHARD_FILE = re.compile(r"^(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)$")


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


_TYPO_CUTOFF = 0.9  # difflib ratio: one damaged byte in a name of 10+ characters stays above it


_FIX = "the file is incomplete or damaged; download or convert it again"


def is_training_state(name: str) -> bool:
    """True for the optimizer and training-loop tensors MindSpore saves beside a model's weights."""
    return name in _STATE_NAMES or _STATE_PREFIX.match(name) is not None


def is_buffer(name: str) -> bool:
    """True for the rotary ``inv_freq`` / ``rope.freqs`` buffers, which a LLaMA may or may not store."""
    return _BUFFER.search(name) is not None


def hf_name(name: str) -> str | None:
    """The Hugging Face name of a LLaMA weight stored under any naming (HF, MindFormers, Meta), else None."""
    from llmkit.io.mindspore.mindformers import llama_hf_name

    hf = llama_hf_name(name)
    if hf is not None:
        return hf
    from llmkit.io.meta.names import META_TO_HF_LAYER, META_TO_HF_TOP

    if name in META_TO_HF_TOP:
        return META_TO_HF_TOP[name]
    m = _META_LAYER.match(name)
    if m and m.group(2) in META_TO_HF_LAYER:
        return f"model.layers.{m.group(1)}.{META_TO_HF_LAYER[m.group(2)]}"
    return None


def _naming(name: str) -> str:
    from llmkit.io.mindspore.mindformers import is_hf, is_mindformers

    return "hf" if is_hf(name) else "mindformers" if is_mindformers(name) else "meta"


def _render(hf: str, naming: str) -> str:
    """``hf`` under the naming a file uses (to compare its damaged names with and to name them)."""
    if naming == "mindformers":
        from llmkit.io.mindspore.mindformers import hf_to_mindformers

        return hf_to_mindformers(hf) or hf
    if naming == "meta":
        from llmkit.io.meta.names import hf_to_meta_name

        return hf_to_meta_name(hf) or hf
    return hf


def _layers_seen(hf_names) -> int:
    return 1 + max((int(m.group(1)) for n in hf_names if (m := _HF_LAYER.match(n))), default=-1)


def _sizes(cfg: dict, path) -> tuple[int, int, int, int, int, int, int] | None:
    """(hidden, heads, kv heads, head dim, layers, vocab, intermediate), None when a size is absent; a size
    that is not a positive integer is an :class:`InputError` naming ``path``."""
    keys = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "intermediate_size")
    values = {k: int_field(cfg, k, path=path) for k in keys}
    kv = int_field(cfg, "num_key_value_heads", path=path)
    head_dim = int_field(cfg, "head_dim", path=path)
    if any(v is None for v in values.values()):
        return None
    hidden, heads = values["hidden_size"], values["num_attention_heads"]
    return (
        hidden,
        heads,
        kv or heads,
        head_dim or hidden // heads,
        values["num_hidden_layers"],
        values["vocab_size"],
        values["intermediate_size"],
    )


def llama_shapes(cfg: dict, path=None) -> dict[str, tuple[int, ...]]:
    """Every weight (HF name -> shape) of the LLaMA ``cfg`` describes; a size missing from it or not a
    positive integer is an :class:`InputError` naming ``path``."""
    sizes = _sizes(cfg, path)
    if sizes is None:
        missing = next(
            k
            for k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size", "intermediate_size")
            if cfg.get(k) is None
        )
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


def expected_from(cfg: dict | None, hf_names, *, path=None, described: str = "its config.json") -> Expected:
    """What ``cfg`` describes (sizes, so shapes too), or, for a config without sizes or no config, the
    names of a LLaMA with the layer count the config gives or ``hf_names`` show (shapes not judged)."""
    tied = bool(cfg.get("tie_word_embeddings", False)) if cfg else False
    optional = frozenset({LM_HEAD}) if tied else frozenset()  # a tied lm_head may still be stored
    if cfg and _sizes(cfg, path) is not None:
        shapes: dict[str, tuple[int, ...] | None] = dict(llama_shapes(cfg, path))
        if tied:
            shapes[LM_HEAD] = shapes[EMBED]
        return Expected(shapes, described, Path(path) if path else None, optional)
    layers = (int_field(cfg, "num_hidden_layers", path=path) if cfg else None) or _layers_seen(hf_names)
    names = [EMBED] + [f"model.layers.{i}.{t}" for i in range(layers) for t in LAYER_TENSORS] + [NORM, LM_HEAD]
    what = described if cfg and cfg.get("num_hidden_layers") else f"its names: {layers} layers"
    return Expected(dict.fromkeys(names), what, Path(path) if path and cfg else None, optional)


@dataclass
class Findings:
    """What a checked model holds besides its LLaMA weights (stored names, in file order)."""

    training_state: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # neither: the job keeps, drops or refuses them


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def _damaged(unknown: list[str], want: Expected, naming: str, present: set[str], path) -> None:
    """Refuse an unknown name that is a close match of an expected one (a damaged or mistyped name)."""
    rendered = {_render(n, naming): n for n in want.shapes}
    absent = [r for r, n in rendered.items() if n not in present]
    for name in unknown:
        if name.endswith(".bias") and name[:-5] + ".weight" in rendered:
            continue  # a bias beside an expected linear weight (attention_bias / mlp_bias), not a typo
        close = (
            difflib.get_close_matches(name, absent, n=1, cutoff=_TYPO_CUTOFF)  # the one it stands for, first
            or difflib.get_close_matches(name, list(rendered), n=1, cutoff=_TYPO_CUTOFF)
        )
        if close:
            if rendered[close[0]] not in present:
                text = f"lacks {close[0]!r}; its tensor {name!r} looks like a damaged name of it"
            else:
                text = f"holds {name!r}, not a LLaMA weight but a damaged name of {close[0]!r} (also there)"
            raise InputError(text, path=path, hint=_FIX)


def check_tensors(
    shapes: dict[str, tuple[int, ...]],
    *,
    path,
    cfg: dict | None = None,
    config_path=None,
    described: str = "its config.json",
    judge_shapes: bool = True,
) -> Findings:
    """Refuse (:class:`InputError` naming ``path``) a LLaMA whose weights (stored name -> shape, any naming)
    are not exactly those ``cfg`` (or, without one, its names) describe; sort the other tensors.
    ``judge_shapes=False``: names only (inspect reports a config that disagrees with the shapes itself)."""
    found = Findings()
    hf_of: dict[str, str] = {}  # HF name -> stored name
    for name in shapes:
        hf = hf_name(name)
        if hf is not None:
            if hf in hf_of:
                raise InputError(
                    f"tensors {hf_of[hf]!r} and {name!r} are the same weight ({hf}) twice",
                    path=path,
                    hint="the model mixes two namings or was assembled twice; keep one copy",
                )
            hf_of[hf] = name
        elif is_buffer(name):
            found.buffers.append(name)
        elif is_training_state(name):
            found.training_state.append(name)
        else:
            found.unknown.append(name)
    want = expected_from(cfg, hf_of, path=config_path, described=described)
    namings = [_naming(n) for n in hf_of.values()]
    naming = max(set(namings), key=namings.count) if namings else "hf"
    _damaged(found.unknown, want, naming, set(hf_of), path)
    missing = [n for n in want.shapes if n not in hf_of and n not in want.optional]
    if missing:
        shown = [_render(n, naming) for n in missing]
        hint = _FIX
        if missing == [LM_HEAD] and cfg is None:
            hint = (
                "if the model ties lm_head to its embedding, put its config.json (tie_word_embeddings: true) "
                "beside it; else " + _FIX
            )
        raise InputError(
            f"lacks {len(missing)} tensor(s) of a complete LLaMA (per {want.described}): {_few(shown)}",
            path=path,
            hint=hint,
        )
    extra = [stored for hf, stored in hf_of.items() if hf not in want.shapes]
    if extra:
        layers = cfg.get("num_hidden_layers") if cfg else None
        raise InputError(
            f"holds {len(extra)} tensor(s) a complete LLaMA (per {want.described}) does not have: "
            f"{_few(extra)}" + (f" (num_hidden_layers={layers})" if layers else ""),
            path=path,
            hint="pass the config.json of these weights, or use the weights of this config",
        )
    for hf, shape in want.shapes.items() if judge_shapes else ():
        stored = hf_of.get(hf)
        if shape is not None and stored is not None and tuple(shapes[stored]) != shape:
            raise InputError(
                f"{stored} has shape {list(shapes[stored])} but {want.described} gives {list(shape)}",
                path=path,
                hint="pass the config.json of these weights, or " + _FIX,
            )
    return found


def _message_path(src) -> Path:
    """The file a message about ``src``'s tensor list names: its shard index, or its one weight file."""
    from llmkit.io.hf.names import BIN_INDEX, SAFETENSORS_INDEX

    index = {"safetensors-sharded": SAFETENSORS_INDEX, "bin-sharded": BIN_INDEX}.get(src.layout)
    if index and src.folder is not None and Path(src.path).is_dir():
        return Path(src.folder) / index
    if len(src.files) == 1:
        return Path(src.files[0].path)
    return Path(src.path)


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


def _is_lone_shard(src) -> bool:
    path = Path(src.path)
    return path.is_file() and _SHARD_FILE.match(path.name) is not None


def check_source(src, *, cfg: dict | None = None, config_path=None, judge_shapes: bool = True) -> Findings | None:
    """:func:`check_tensors` for a source that is a LLaMA (see the module's docstring); None when it is not
    one (an adapter, another architecture, one shard file on its own). ``cfg``: a config given for it (else
    the one beside its weights, or a Meta folder's ``params.json``)."""
    from llmkit.io.meta.as_hf import MetaHFView
    from llmkit.io.meta.source import MetaSource

    if src.adapter is not None or _is_lone_shard(src):
        return None
    if isinstance(src, MetaHFView):
        return src.findings  # checked when the view was made
    shapes = {n: tuple(src.info(n).shape) for n in src.keys()}
    described = "its config.json"
    if isinstance(src, MetaSource):
        cfg = meta_config(src.params, shapes)
        config_path, described = (Path(src.folder) / "params.json" if src.folder else None), "params.json"
    elif cfg is None:
        cfg = src.config()
        if cfg is not None and src.folder is not None:
            config_path = Path(src.folder) / "config.json"
    llama = says_llama(cfg)
    if llama is False:
        return None
    if llama is None and not any((h := hf_name(n)) is not None and (h == EMBED or _HF_LAYER.match(h)) for n in shapes):
        return None
    return check_tensors(
        shapes,
        path=_message_path(src),
        cfg=cfg,
        config_path=config_path,
        described=described,
        judge_shapes=judge_shapes,
    )
