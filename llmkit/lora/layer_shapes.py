"""The shapes of one LoRA layer against its config and its base weight, checked as peft would load it.

``lora_A`` is ``[r, in]`` and ``lora_B`` ``[out, r]`` with ``r`` the config's rank for the module
(:func:`check_pair`); the base weight decides how ``B @ A`` is added (:func:`orientation`: Linear
``[out, in]``, Conv1D ``[in, out]``, an embedding, or an output head that grows with the vocabulary), and
a LoRA bias needs a base bias (:func:`bias_target`). Every mismatch is an :class:`InputError` naming the
adapter file: an adapter for another model is refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from llmkit.errors import InputError
from llmkit.lora.settings import LoraSettings

# Model types whose linear layers are transformers' Conv1D ([in, out] weights; peft forces fan_in_fan_out).
CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}

_OTHER_MODEL = "this adapter belongs to another model"


def check_pair(s: LoraSettings, module: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...], path: Path) -> None:
    """``lora_A`` and ``lora_B`` of ``module`` fit each other and the rank ``adapter_config.json`` gives."""
    r, _ = s.rank_alpha(module)
    if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
        raise InputError(
            f"LoRA layer {module!r} has mismatched A {list(a_shape)} and B {list(b_shape)}",
            path=path,
            hint="the adapter file is damaged; download it again",
        )
    if a_shape[0] != r:
        if not s.r_given and s.pattern_key(s.rank_pattern, module) is None:
            raise InputError(
                f"adapter_config.json has no r (peft then uses its default, r=8) but lora_A of "
                f"{module!r} has {a_shape[0]} rows",
                path=s.path,
                hint=f'add "r": {a_shape[0]} to adapter_config.json if that is the adapter\'s '
                "rank; peft refuses this adapter as it is",
            )
        raise InputError(
            f"adapter_config.json says r={r} for {module!r} but its lora_A has {a_shape[0]} rows",
            path=path,
            hint="the config and the weights belong to different adapters",
        )


def orientation(
    module: str,
    target: str,
    w: tuple[int, ...],
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
    *,
    embedding: bool,
    output_head: bool,
    model_type: str | None,
    path: Path,
) -> bool:
    """Whether ``B @ A`` is added transposed to the base weight ``target`` (shape ``w``): for an embedding
    and a Conv1D weight. ``output_head``: a vocabulary tensor, whose rows grow with the vocabulary."""
    if len(w) != 2:
        raise InputError(
            f"the adapter puts LoRA on {target!r}, a {len(w)}-d tensor in the base", path=path, hint=_OTHER_MODEL
        )
    out_f, in_f = b_shape[0], a_shape[1]
    if embedding:
        # peft: transpose(B @ A, True); A spans the vocabulary (checked with the vocabulary plan).
        what = f"the adapter's embedding LoRA on {module!r} has width {out_f} but the base embedding is {list(w)}"
        _require_width(w, out_f, what, path)
        return True
    if output_head:
        # An output head grows with the vocabulary: only its input width is fixed here.
        _require_width(
            w, in_f, f"the adapter's LoRA on {module!r} takes {in_f} inputs but the base {target} is {list(w)}", path
        )
        return False
    # peft picks fan_in_fan_out by layer type: Linear [out, in] never, Conv1D [in, out] always.
    is_linear, is_conv1d = w == (out_f, in_f), w == (in_f, out_f)
    if not is_linear and not is_conv1d:
        raise InputError(
            f"the adapter's LoRA on {module!r} is {out_f}x{in_f} (out x in) but the base {target} is {list(w)}",
            path=path,
            hint=_OTHER_MODEL,
        )
    return model_type in CONV1D_MODEL_TYPES if (is_linear and is_conv1d) else is_conv1d


def _require_width(w: tuple[int, ...], width: int, message: str, path: Path) -> None:
    """The base weight's columns (its width) are ``width``; else ``message``."""
    if w[1] != width:
        raise InputError(message, path=path, hint=_OTHER_MODEL)


def bias_target(module: str, target: str, base_shapes: dict[str, tuple[int, ...]], path: Path) -> str:
    """The base bias a LoRA bias (``lora_bias``) of ``module`` is added to; refused when the base has none."""
    bias = target[: -len("weight")] + "bias"
    if bias not in base_shapes:
        raise InputError(
            f"the adapter has a LoRA bias (lora_bias) for {module!r} but the base layer has no "
            "bias; peft cannot merge it either",
            path=path,
        )
    return bias
