"""GGML tensor types as llmkit reads them (the ``gguf`` package's ``quants``; numpy and torch only).

- F32, F16, BF16 (and F64, I8..I64) are read as the torch dtype of the same bits: exact.
- Every other type is *quantized* (blocks of values sharing a scale: Q8_0, Q4_0, ..., the K-quants, the
  IQ types): read as float32, the values ``gguf.quants.dequantize`` gives, row block by row block so the
  temporaries stay a few MiB whatever the tensor's size. Blocks never cross a row (a row's length is a
  whole number of blocks), so a row permutation (GGUF's q/k order) commutes with (de)quantizing.
- :func:`as_stored`: another model's values as a GGUF file of that type would hold them, read back
  (``gguf.quants.quantize`` after a float32 cast, as ``convert_hf_to_gguf.py`` does, then dequantized): the
  reference ``verify --tensors`` judges a GGUF tensor by against the model it came from.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import torch

F32, F16, BF16 = 0, 1, 30  # gguf.GGMLQuantizationType
_PLAIN: dict[int, torch.dtype] = {
    F32: torch.float32,
    F16: torch.float16,
    BF16: torch.bfloat16,
    28: torch.float64,  # F64
    24: torch.int8,  # I8
    25: torch.int16,  # I16
    26: torch.int32,  # I32
    27: torch.int64,  # I64
}
_CHUNK_VALUES = 1 << 22  # values per step (16 MiB of float32)


def type_name(ttype: int) -> str:
    """llama.cpp's name of a GGML type (``Q8_0``, ``F16``, ...); ``type N`` for a number it does not know."""
    import gguf

    try:
        return gguf.GGMLQuantizationType(ttype).name
    except ValueError:
        return f"type {ttype}"


def known_type(ttype: int) -> bool:
    import gguf

    try:
        gguf.GGMLQuantizationType(ttype)
    except ValueError:
        return False
    return True


def read_dtype(ttype: int) -> torch.dtype:
    """The dtype a tensor of GGML type ``ttype`` is read as (float32 for a quantized type)."""
    return _PLAIN.get(ttype, torch.float32)


def is_quantized(ttype: int) -> bool:
    return ttype not in _PLAIN


def _qtype(ttype: int) -> Any:
    import gguf

    return gguf.GGMLQuantizationType(ttype)


@cache
def can_dequantize(ttype: int) -> bool:
    """``gguf.quants`` has a dequantizer for this type (every quantized type but a few: Q8_1, Q8_K, ...)."""
    import gguf

    if not is_quantized(ttype):
        return True
    _, size = gguf.GGML_QUANT_SIZES[_qtype(ttype)]
    try:
        gguf.quants.dequantize(np.zeros((1, size), np.uint8), _qtype(ttype))
    except NotImplementedError:
        return False
    return True


@cache
def can_quantize(ttype: int) -> bool:
    """``gguf.quants`` can quantize to this type (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, TQ1_0, TQ2_0, MXFP4;
    not the K-quants or IQ types, which only llama.cpp's ``llama-quantize`` makes)."""
    import gguf

    block, _ = gguf.GGML_QUANT_SIZES[_qtype(ttype)]
    try:
        gguf.quants.quantize(np.zeros((1, block), np.float32), _qtype(ttype))
    except NotImplementedError:
        return False
    return True


def _step(row_values: int) -> int:
    """Rows per step: about ``_CHUNK_VALUES`` values."""
    return max(1, _CHUNK_VALUES // max(1, row_values))


def dequantized(raw: np.ndarray, ttype: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 values of a quantized tensor of ``shape`` (row-major) from its stored bytes ``raw``."""
    import gguf

    rows, row_values = (int(np.prod(shape[:-1])), shape[-1]) if shape else (1, 1)
    blocks = raw.reshape(rows, -1)
    out = torch.empty((rows, row_values), dtype=torch.float32)
    view = out.numpy()
    step = _step(row_values)
    for i in range(0, rows, step):
        view[i : i + step] = gguf.quants.dequantize(blocks[i : i + step], _qtype(ttype))
    return out.reshape(shape)


def as_stored(values: torch.Tensor, ttype: int) -> torch.Tensor:
    """``values`` as a GGUF tensor of type ``ttype`` holds them, read back as :func:`read_dtype` gives: cast to
    float32 (unless float16 or float32, as the converter does), ``gguf.quants.quantize``, then for a quantized
    type ``gguf.quants.dequantize``. Raises ``NotImplementedError`` for a type ``gguf.quants`` cannot make."""
    import gguf

    if ttype not in (F32, F16, BF16) and not is_quantized(ttype):
        return values.to(read_dtype(ttype))
    if values.dtype not in (torch.float16, torch.float32):
        values = values.to(torch.float32)
    arr = values.detach().contiguous().numpy()
    if ttype == F32:
        return torch.from_numpy(arr.astype(np.float32))
    if ttype == F16:
        return torch.from_numpy(arr.astype(np.float16))
    shape = tuple(arr.shape)
    rows = arr.reshape(-1, shape[-1]) if shape else arr.reshape(1, 1)
    if ttype == BF16:
        bits = np.ascontiguousarray(gguf.quants.quantize(rows, _qtype(BF16)))
        return torch.from_numpy(bits).view(torch.bfloat16).reshape(shape)
    if not can_quantize(ttype):
        raise NotImplementedError(f"gguf.quants cannot quantize to {type_name(ttype)}")
    out = torch.empty(rows.shape, dtype=torch.float32)
    view = out.numpy()
    step = _step(rows.shape[1])
    for i in range(0, rows.shape[0], step):
        q = gguf.quants.quantize(rows[i : i + step], _qtype(ttype))
        view[i : i + step] = gguf.quants.dequantize(q, _qtype(ttype))
    return out.reshape(shape)
