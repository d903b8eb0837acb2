"""llmkit's GGML conversions are the gguf package's, byte for byte: the torch Q8_0 against
``gguf.quants.quantize`` (llama.cpp's reference in numpy) on awkward values, every other type through it."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from llmkit.io.gguf.quant import quantize
from llmkit.io.gguf.types import OUTTYPES, parse_outtype, tensor_nbytes


def _reference(t: torch.Tensor, ttype: int) -> np.ndarray:
    src = t if t.dtype in (torch.float16, torch.float32) else t.to(torch.float32)
    return (
        np.ascontiguousarray(gguf.quants.quantize(src.numpy(), gguf.GGMLQuantizationType(ttype)))
        .reshape(-1)
        .view(np.uint8)
    )


def _awkward(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    t = torch.randn(37, 256, generator=g) * 0.05
    t[0] = 0.0  # all-zero blocks: scale 0, inverse 0
    t[1, :32] = 60000.0  # near the largest f16 (the Q8_0 scale is stored as f16)
    t[2, :32] = torch.linspace(-1, 1, 32)  # exact halves after scaling
    t[3, :32] = -1e-8  # tiny
    t[4, ::2] *= -1
    return t.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(OUTTYPES))
def test_every_outtype_gives_the_gguf_packages_bytes(dtype, name):
    t = _awkward(dtype)
    ttype = OUTTYPES[name].tensor_type
    got = quantize(t, ttype)
    assert got.dtype == np.uint8 and got.size == tensor_nbytes(tuple(t.shape), ttype)
    assert np.array_equal(got, _reference(t, ttype))


def test_q8_0_of_a_large_tensor_in_chunks_is_the_whole_tensors():
    g = torch.Generator().manual_seed(8)
    t = (torch.randn(1500, 4096, generator=g) * 0.02).half()  # many chunks, the last one short
    assert np.array_equal(quantize(t, OUTTYPES["q8_0"].tensor_type), _reference(t, 8))


def test_gguf_numbers_are_llama_cpps():
    for o in OUTTYPES.values():
        file_type = "ALL_F32" if o.name == "f32" else f"MOSTLY_{o.name.upper()}"
        assert gguf.LlamaFileType[file_type] == o.file_type
        assert gguf.GGMLQuantizationType[o.name.upper()] == o.tensor_type
    assert parse_outtype("Q8_0").name == "q8_0" and parse_outtype("fp16").name == "f16"
