"""Weight-diff arithmetic, one tensor at a time (SPEC.md section 2; rounding rules in ``llmkit.recover``)."""

from __future__ import annotations

import numpy as np
import torch

ROTARY_BUFFER = "rotary_emb.inv_freq"
INV_FREQ_FORMS = ("fp16", "fp32")  # how the inv_freq buffers a base's files lack are made (base_inv_freq)
_SUM_CHUNK = 1 << 22  # elements per fp64 chunk when summing (32 MB of fp64)


def _combine(op, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``op(x.to(dtype), y.to(dtype))`` writing into a converted copy when there is one.

    Both operands are cast first: a mixed-dtype op on CPU would allocate a converted temporary itself.
    Memory beyond the inputs: one ``dtype`` tensor (a converted copy, or the fresh result). Inputs are
    never modified (they may be memory-mapped files).
    """
    xc, yc = x.to(dtype), y.to(dtype)
    if xc is not x:
        return op(xc, yc, out=xc)
    if yc is not y:
        return op(xc, yc, out=yc)
    return op(xc, yc)


def recover_tensor(diff: torch.Tensor, base: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One recovered tensor: ``diff + base`` in ``dtype`` (see the module docstring for the rounding)."""
    if dtype == torch.float16:
        # Upstream --is_fp16 loads both models in fp16, then adds: round each input, then one rounding.
        return _combine(torch.add, diff, base, torch.float16)
    # fp32 (and bf16 via fp32): fp16/bf16/fp32 -> fp32 is exact, so this is one rounding of the exact sum.
    out = _combine(torch.add, diff, base, torch.float32)
    return out if dtype == torch.float32 else out.to(dtype)


def diff_tensor(tuned: torch.Tensor, base: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One diff tensor: ``tuned - base`` computed in fp32, stored in ``dtype`` (one rounding)."""
    out = _combine(torch.sub, tuned, base, torch.float32)
    return out if dtype == torch.float32 else out.to(dtype)


def legacy_inv_freq(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """The ``rotary_emb.inv_freq`` buffer of transformers' 2023 LLaMA (fp32), as upstream's model computes it."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))


def base_inv_freq(head_dim: int, theta: float = 10000.0, form: str = "fp16") -> torch.Tensor:
    """The ``inv_freq`` buffer of a base whose files hold none, as upstream's base would have had it.

    ``fp16``: as transformers 4.28-4.30's ``convert_llama_weights_to_hf`` stored it (the fp32 formula, saved
    with the fp16 model), which upstream then read back in fp32: what the published ZhiXi values assume.
    ``fp32``: as that transformers' model computes it at init when the checkpoint lacks it.
    """
    inv = legacy_inv_freq(head_dim, theta)
    return inv.half() if form == "fp16" else inv


def fp64_sum(t: torch.Tensor) -> float:
    """Sum of every value, accumulated in fp64 (numpy's buffered reduction: no fp64 copy of the tensor)."""
    flat = t.detach().reshape(-1)
    if flat.dtype in (torch.float32, torch.float16, torch.float64):
        return float(flat.numpy().sum(dtype=np.float64))
    total = 0.0  # bf16: numpy has no such dtype; widen one chunk at a time
    for start in range(0, flat.numel(), _SUM_CHUNK):
        total += float(flat[start : start + _SUM_CHUNK].sum(dtype=torch.float64))
    return total


def working_set(numel: int, o_dtype: torch.dtype, b_dtype: torch.dtype, out: torch.dtype, operation: str) -> int:
    """Bytes alive while one tensor is processed: both inputs, converted copies, the result, an fp64 chunk."""
    compute = torch.float16 if (operation == "recover" and out == torch.float16) else torch.float32
    size = numel * (o_dtype.itemsize + b_dtype.itemsize)
    copies = (o_dtype != compute) + (b_dtype != compute)
    size += numel * compute.itemsize * max(copies, 1)  # the result lives in a copy, or is fresh
    if out != compute:
        size += numel * out.itemsize
    return size + min(numel, _SUM_CHUNK) * 8
