"""The one check of a LLaMA's tensors that every job reading a model runs first.

:func:`check_tensors` refuses, before any output, a model that lacks one of the weights a complete LLaMA
holds (``llmkit.io.core.llama_weights``), holds one twice (under two namings), holds an extra tensor whose
name is a damaged copy of an expected one (a close match, ``difflib``), holds layers or a tensor shape its
config does not describe. What else a file may hold is sorted by name, never guessed: buffers, training
state (:func:`~llmkit.io.core.llama_weights.is_training_state`), and anything else (``unknown``: the job
keeps, drops or refuses it as it always did).
:func:`check_source` applies it to a :class:`~llmkit.io.core.source.TensorSource` when that is a LLaMA: the
config says ``llama`` / ``LlamaForCausalLM``, or there is no config (or it names no architecture) and the
names are LLaMA's. Adapters, other architectures and one shard file on its own are not checked.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.errors import InputError
from llmkit.io.core.llama_weights import (
    EMBED,
    HF_LAYER,
    LM_HEAD,
    Expected,
    PathArg,
    expected_from,
    is_buffer,
    is_training_state,
    says_llama,
)
from llmkit.io.core.llama_weights import llama_shapes as llama_shapes  # re-exported: convert.ckpt imports it here
from llmkit.io.core.naming import HF, hf_name, in_naming, naming_of

if TYPE_CHECKING:
    from llmkit.io.core.source import TensorSource

_SHARD_FILE = re.compile(r"^(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)$")


_TYPO_CUTOFF = 0.9  # difflib ratio: one damaged byte in a name of 10+ characters stays above it


_FIX = "the file is incomplete or damaged; download or convert it again"


@dataclass
class Findings:
    """What a checked model holds besides its LLaMA weights (stored names, in file order)."""

    training_state: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # neither: the job keeps, drops or refuses them


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def _damaged(unknown: list[str], want: Expected, naming: str, present: set[str], path: PathArg) -> None:
    """Refuse an unknown name that is a close match of an expected one (a damaged or mistyped name)."""
    rendered = {in_naming(n, naming): n for n in want.shapes}
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


def _sort(shapes: dict[str, tuple[int, ...]], path: PathArg) -> tuple[dict[str, str], Findings]:
    """The LLaMA weights (HF name -> stored name; one held twice is refused) and the other tensors, sorted."""
    found = Findings()
    hf_of: dict[str, str] = {}
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
    return hf_of, found


def _refuse_missing(want: Expected, hf_of: dict[str, str], naming: str, tied_unknown: bool, path: PathArg) -> None:
    """Refuse a model that lacks an expected weight (``tied_unknown``: no config says whether lm_head is tied)."""
    missing = [n for n in want.shapes if n not in hf_of and n not in want.optional]
    if missing:
        shown = [in_naming(n, naming) for n in missing]
        hint = _FIX
        if missing == [LM_HEAD] and tied_unknown:
            hint = (
                "if the model ties lm_head to its embedding, put its config.json (tie_word_embeddings: true) "
                "beside it; else " + _FIX
            )
        raise InputError(
            f"lacks {len(missing)} tensor(s) of a complete LLaMA (per {want.described}): {_few(shown)}",
            path=path,
            hint=hint,
        )


def check_tensors(
    shapes: dict[str, tuple[int, ...]],
    *,
    path: PathArg,
    cfg: dict | None = None,
    config_path: PathArg = None,
    described: str = "its config.json",
    judge_shapes: bool = True,
) -> Findings:
    """Refuse (:class:`InputError` naming ``path``) a LLaMA whose weights (stored name -> shape, any naming)
    are not exactly those ``cfg`` (or, without one, its names) describe; sort the other tensors.
    ``judge_shapes=False``: names only (inspect reports a config that disagrees with the shapes itself)."""
    hf_of, found = _sort(shapes, path)
    want = expected_from(cfg, hf_of, path=config_path, described=described)
    namings = [naming_of(n) for n in hf_of.values()]
    naming = max(set(namings), key=namings.count) if namings else HF
    _damaged(found.unknown, want, naming, set(hf_of), path)
    _refuse_missing(want, hf_of, naming, cfg is None, path)
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


def _message_path(src: TensorSource) -> Path:
    """The file a message about ``src``'s tensor list names: its shard index, or its one weight file."""
    if src.index is not None and Path(src.path).is_dir():
        return src.index
    if len(src.files) == 1:
        return Path(src.files[0].path)
    return Path(src.path)


def _is_lone_shard(src: TensorSource) -> bool:
    path = Path(src.path)
    return path.is_file() and _SHARD_FILE.match(path.name) is not None


def check_source(
    src: TensorSource, *, cfg: dict | None = None, config_path: PathArg = None, judge_shapes: bool = True
) -> Findings | None:
    """:func:`check_tensors` for a source that is a LLaMA (see the module's docstring); None when it is not
    one (an adapter, another architecture, one shard file on its own). ``cfg``: a config given for it (else
    the one beside its weights, or a Meta folder's ``params.json``)."""
    if src.adapter is not None or _is_lone_shard(src):
        return None
    checked, findings = src.prechecked()
    if checked:
        return findings  # checked when the source was made (a Meta folder seen as HF)
    shapes = {n: tuple(src.info(n).shape) for n in src.keys()}
    cfg, config_path, described = src.described_config(shapes, cfg, config_path)
    llama = says_llama(cfg)
    if llama is False:
        return None
    if llama is None and not any((h := hf_name(n)) is not None and (h == EMBED or HF_LAYER.match(h)) for n in shapes):
        return None
    return check_tensors(
        shapes,
        path=_message_path(src),
        cfg=cfg,
        config_path=config_path,
        described=described,
        judge_shapes=judge_shapes,
    )
