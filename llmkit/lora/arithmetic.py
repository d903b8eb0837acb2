"""The per-tensor math of a merge (SPEC.md section 3): peft's delta, one rounding, mean rows.

:func:`apply_lora` is the fast form of ``add_in_fp32(weight, lora_delta(...))`` with the same bits: the
product ``B @ A`` is one matrix product (as peft computes it; a product split into row blocks can round
differently), written into a reused :class:`DeltaBuffer`, then the scaling, the fp32 add and the one
rounding run element by element over row blocks that stay in the CPU cache.
"""

from __future__ import annotations

import math

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


BLOCK_ELEMENTS = 1 << 18  # elements per row block of apply_lora (1 MiB of fp32: stays in the CPU cache)


class DeltaBuffer:
    """One fp32 buffer reused for every ``B @ A`` of a run, grown to the largest: no fresh pages per tensor.

    A view it hands out is valid until the next :meth:`take`; never give one to the sink.
    """

    def __init__(self) -> None:
        self._data = torch.empty(0, dtype=torch.float32)

    def take(self, shape: tuple[int, int]) -> torch.Tensor:
        n = math.prod(shape)
        if self._data.numel() < n:
            self._data = torch.empty(0, dtype=torch.float32)  # free the old one before the new one
            self._data = torch.empty(n, dtype=torch.float32)
        return self._data[:n].view(shape)


def apply_lora(
    weight: torch.Tensor, source: TensorSource, mod: LoraModule, dtype: torch.dtype, buffer: DeltaBuffer
) -> torch.Tensor:
    """``round_to_dtype(float32(weight) + (B @ A) * scaling)``: the bits of ``add_in_fp32(weight,
    lora_delta(source, mod), dtype)``, in a fresh ``dtype`` tensor; ``weight`` is not modified.

    Memory: the output plus ``buffer`` (the fp32 product), instead of a fresh fp32 delta and a cast copy.
    A transposed delta (Conv1D, embeddings) takes the plain path.
    """
    if mod.transpose or weight.dim() != 2:
        return add_in_fp32(weight, lora_delta(source, mod), dtype)
    a = source.get(mod.a_key).to(torch.float32)
    b = source.get(mod.b_key).to(torch.float32)
    delta = torch.mm(b, a, out=buffer.take((b.shape[0], a.shape[1])))
    if delta.shape != weight.shape:
        raise ValueError(f"LoRA product {tuple(delta.shape)} does not match the weight {tuple(weight.shape)}")
    out = torch.empty(weight.shape, dtype=dtype)
    rows = max(1, BLOCK_ELEMENTS // max(1, weight.shape[1]))
    for i in range(0, weight.shape[0], rows):
        block = delta[i : i + rows]
        block.mul_(mod.scaling)  # peft's `(B @ A) * scaling`, then `W + delta` in fp32, then one rounding
        block.add_(weight[i : i + rows])
        out[i : i + rows].copy_(block)
    return out


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
