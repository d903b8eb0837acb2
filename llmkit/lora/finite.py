"""No NaN or Inf from a merge where the base had finite values (peft's ``safe_merge``, on by default).

:func:`all_finite` is the cheap test every merged tensor passes through (one min/max pass, 3-6% of the
merge of a 11008x4096 fp16 tensor; ``benchmarks/finite_check.py``). Only a tensor that fails it takes the slow path,
:func:`refuse_new_non_finite`: the merge of that tensor is run again step by step and each step is
compared with the base element by element. Non-finite values at places where the base already had them
(checkpoints with NaN in unused rows exist) are kept, as peft keeps them; the first step that makes new
ones is an :class:`~llmkit.errors.InputError` naming it: an adapter whose LoRA weights hold NaN/Inf, an
adapter whose update overflows the dtype, rows added as the mean of non-finite rows, or ``--dtype``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Union

import torch

from llmkit.errors import InputError
from llmkit.io.core.dtypes import dtype_name

if TYPE_CHECKING:
    from llmkit.lora.adapters import Adapter
    from llmkit.lora.merge import MergePlan

# What made a step of a tensor's merge: None (the base as read), an adapter, new mean rows, the final cast.
MergeStep = Union[None, "Adapter", Literal["grow", "cast"]]


def all_finite(t: torch.Tensor) -> bool:
    """Whether ``t`` holds no NaN or Inf. ``aminmax`` propagates NaN and sees +-Inf, and needs no bool copy:
    several times faster than ``torch.isfinite(t).all()``."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def _new_non_finite(t: torch.Tensor, base: torch.Tensor | None) -> int:
    """How many elements of ``t`` are NaN/Inf where ``base`` is finite (rows beyond the base's are new)."""
    bad = ~torch.isfinite(t)
    if base is not None and base.shape[1:] == t.shape[1:]:
        rows = min(base.shape[0], t.shape[0])
        bad[:rows] &= torch.isfinite(base[:rows])
    return int(bad.sum())


def refuse_new_non_finite(plan: MergePlan, name: str) -> None:
    """Raise for the first step of ``name``'s merge that puts NaN/Inf where the base is finite; return when
    every non-finite value of the output was already in the base."""
    base = plan.base.get(name)
    for step, t in plan.steps(name):
        if step is None or not t.is_floating_point():
            continue
        count = _new_non_finite(t, base)
        if count:
            raise _error(plan, name, step, t, count)


def _error(plan: MergePlan, name: str, step: MergeStep, t: torch.Tensor, count: int) -> InputError:
    what = f"{count} NaN/Inf value(s) in {name} where the base has finite numbers"
    if step == "cast":
        return InputError(
            f"--dtype {dtype_name(t.dtype)} would put {what}: the merged values exceed its range",
            path=plan.base.path,
            hint="use --dtype bf16 or fp32, or keep the base's dtype",
        )
    if step == "grow":
        return InputError(
            f"the rows added to {name} (the mean of its rows) would be {what}: the base's rows of "
            "it are not all finite",
            path=plan.base.path,
            hint="use an adapter that supplies these rows, or a base without NaN/Inf",
        )
    assert step is not None
    broken = _non_finite_inputs(step, name)
    if broken:
        return InputError(
            f"{broken} holds NaN or Inf; merging it would put {what}",
            path=step.file,
            hint="the adapter is damaged (peft's safe_merge refuses it too); download or train it again",
        )
    mod = step.modules.get(name) or step.bias_modules.get(name)
    scale = f" (scaling {mod.scaling:g})" if mod is not None else ""
    return InputError(
        f"merging this adapter{scale} would put {what}: the update exceeds the range of {dtype_name(t.dtype)}",
        path=step.file,
        hint="the adapter does not belong to this base, or its lora_alpha is wrong (peft's safe_merge refuses it too)",
    )


def _non_finite_inputs(ad: Adapter, name: str) -> str | None:
    """Which of the adapter's tensors for ``name`` holds NaN/Inf, as "lora_B of MODULE (KEY)"."""
    mod, bias = ad.modules.get(name), ad.bias_modules.get(name)
    parts = [("the saved tensor", ad.replacements.get(name))]
    if mod is not None:
        parts += [("lora_A", mod.a_key), ("lora_B", mod.b_key)]
    if bias is not None:
        parts.append(("lora_B.bias", bias.bias_key))
    for part, key in parts:
        if key is not None and not all_finite(ad.source.get(key)):
            return f"{part} of {name} ({key})"
    return None
