"""The namings a LLaMA's weights are stored under, each mapped to and from Hugging Face's (the naming every
plan uses). Hugging Face's is defined here; a format family registers its own with :func:`register_naming`
(MindFormers' in ``io/mindspore/mindformers.py``, Meta's in ``io/meta/names.py``), so the checks of a model
(``llama_tensors``) read any naming without knowing the formats.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from llmkit.io.core.formats import load_builtin_formats

HF = "hf"
_HF = re.compile(
    r"^(model\.embed_tokens\.weight|model\.norm\.weight|lm_head\.weight|model\.layers\.\d+\."
    r"(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj|input_layernorm|post_attention_layernorm)\.weight)$"
)


def is_hf(name: str) -> bool:
    """A LLaMA weight under its Hugging Face name."""
    return _HF.match(name) is not None


@dataclass(frozen=True)
class Naming:
    """One way of naming a LLaMA's weights: ``owns`` tells its names, ``to_hf`` / ``from_hf`` map one name
    (None: the weight has no name on the other side). Namings are asked in ``rank`` order (lower first)."""

    name: str
    rank: int
    owns: Callable[[str], bool]
    to_hf: Callable[[str], str | None]
    from_hf: Callable[[str], str | None]


_NAMINGS: dict[str, Naming] = {}


def register_naming(naming: Naming) -> None:
    _NAMINGS[naming.name] = naming


def namings() -> list[Naming]:
    """The registered namings in rank order (the built-in families imported on first use)."""
    load_builtin_formats()
    return sorted(_NAMINGS.values(), key=lambda n: n.rank)


def hf_name(name: str) -> str | None:
    """The Hugging Face name of a LLaMA weight stored under any naming, else None."""
    if is_hf(name):
        return name
    for naming in namings():
        hf = naming.to_hf(name)
        if hf is not None:
            return hf
    return None


def naming_of(name: str) -> str:
    """The naming a stored name is in: ``hf``, or the first registered naming that owns it."""
    if is_hf(name):
        return HF
    return next((n.name for n in namings() if n.owns(name)), HF)


def in_naming(hf: str, naming: str) -> str:
    """``hf`` under ``naming`` (itself when that naming has no name for it)."""
    if naming == HF:
        return hf
    return _NAMINGS[naming].from_hf(hf) or hf
