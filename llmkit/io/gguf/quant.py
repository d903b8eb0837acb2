"""Tensor bytes as GGML types: ``gguf.quants`` for every type, and a torch Q8_0 that gives the same bytes faster.

``gguf.quants.quantize`` is llama.cpp's reference in numpy (one thread). Q8_0 is also done here in torch, in
float32 operation for operation as ``gguf.quants.Q8_0.quantize_blocks`` does them (scale ``d = max|x| / 127``,
``id = 1/d`` or 0, ``q = roundf(x * id)`` rounding halves away from zero, ``d`` stored as f16 before the 32
int8 values): IEEE float32 arithmetic gives the same bits in either library, and torch uses every core. The
tests hold the two equal, byte for byte. Rows are converted in chunks (``CHUNK_VALUES``), so the temporaries
stay small beside the tensor.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from llmkit.io.gguf.types import F16, F32

Q8_0 = 8  # gguf.GGMLQuantizationType.Q8_0
CHUNK_VALUES = 1 << 22  # values per step of the numpy types (16 MiB as float32)
Q8_CHUNK_VALUES = 1 << 16  # values per step of the torch Q8_0: its temporaries stay in the cores' caches


def q8_0_blocks(x: torch.Tensor) -> torch.Tensor:
    """Q8_0 blocks of float32 ``x`` (a multiple of 32 values): uint8 ``[n / 32, 34]`` (f16 scale, 32 int8)."""
    b = x.reshape(-1, 32)
    d = b.abs().amax(dim=1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    n = b * inv
    a = n.abs()
    whole = a.floor()
    q = torch.sign(n) * (whole + torch.floor(2 * (a - whole)))  # gguf.quants.np_roundf
    return torch.cat([d.to(torch.float16).view(torch.uint8), q.to(torch.int8).view(torch.uint8)], dim=1)


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1, tensor.shape[-1]) if tensor.dim() > 1 else tensor.reshape(1, -1)


def quantize(tensor: torch.Tensor, ttype: int) -> np.ndarray:
    """``tensor``'s bytes as GGML type ``ttype``, flat uint8, as ``convert_hf_to_gguf.py`` makes them: anything
    but f16/f32 goes through float32 first, then the type's quantization, row block by row block."""
    import gguf

    if tensor.dtype not in (torch.float16, torch.float32):
        tensor = tensor.to(torch.float32)
    tensor = tensor.detach().contiguous()
    if ttype in (F32, F16):
        out = gguf.quants.quantize(tensor.numpy(), gguf.GGMLQuantizationType(ttype))
        return np.ascontiguousarray(out).reshape(-1).view(np.uint8)
    rows = _rows(tensor)
    if ttype == Q8_0:
        return _q8_0(rows)
    step = max(1, CHUNK_VALUES // rows.shape[1])
    chunks = [rows[i : i + step] for i in range(0, rows.shape[0], step)]
    qtype = gguf.GGMLQuantizationType(ttype)
    with ThreadPoolExecutor(max_workers=2) as pool:
        parts = list(pool.map(lambda c: gguf.quants.quantize(c.numpy(), qtype).reshape(-1), chunks))
    return np.concatenate(parts).view(np.uint8)


def _q8_0(rows: torch.Tensor) -> np.ndarray:
    """Q8_0 of ``rows`` on two threads, small row chunks each, into one preallocated output."""
    step = max(1, Q8_CHUNK_VALUES // rows.shape[1])
    per_row = rows.shape[1] // 32 * 34
    out = torch.empty(rows.shape[0] * per_row, dtype=torch.uint8)

    def one(i: int) -> None:
        block = q8_0_blocks(rows[i : i + step].to(torch.float32)).reshape(-1)
        out[i * per_row : i * per_row + block.numel()] = block

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="llmkit-q8") as pool:
        list(pool.map(one, range(0, rows.shape[0], step)))
    return out.numpy()
