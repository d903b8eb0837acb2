"""The per-tensor math of a merge (SPEC.md section 3): peft's delta, one rounding, mean rows."""

from __future__ import annotations

import torch

from llmkit.io.core.source import TensorSource
from llmkit.lora.adapters import LoraModule

ROUNDING = "W' = round_to_dtype(float32(W) + (B @ A in fp32) * scaling): one rounding, as peft 0.21 by default"


def lora_delta(source: TensorSource, mod: LoraModule) -> torch.Tensor:
    """``transpose_if(B @ A) * scaling`` in fp32 (peft's ``get_delta_weight``)."""
    a = source.get(mod.a_key).to(torch.float32)
    b = source.get(mod.b_key).to(torch.float32)
    delta = b @ a
    if mod.transpose:
        delta = delta.T
    return delta.mul_(mod.scaling)  # in place: the same values as peft's `... * scaling`, one buffer less


def add_in_fp32(weight: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``round(float(weight) + delta)`` to ``dtype`` (default: the weight's): one rounding (peft's ``W += delta``).

    ``delta`` (fp32, owned by the caller) is overwritten: IEEE addition is commutative, so
    ``delta += weight`` gives the bits of ``float(weight) + delta`` without an fp32 copy of the weight.
    """
    if delta.dtype != torch.float32:
        delta = delta.to(torch.float32)
    delta.add_(weight)
    dtype = dtype or weight.dtype
    return delta if dtype == torch.float32 else delta.to(dtype)


def grow_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows set to the mean of the existing rows (fp32 mean, cast), like transformers' mean resizing."""
    mean = t.to(torch.float32).mean(dim=0).to(t.dtype)
    extra = mean.unsqueeze(0).expand(rows - t.shape[0], *t.shape[1:])
    return torch.cat([t, extra], dim=0)
