"""GGUF output types (``--outtype``) and which type each tensor gets, as ``convert_hf_to_gguf.py`` decides.

An output type is a llama.cpp file type (``general.file_type``) and the tensor type most weights get. The
rules, per tensor (``conversion/base.py``'s ``prepare_tensors`` for a LLaMA): 1-D tensors and ``*_norm.weight``
stay F32; any other 2-D ``*.weight`` gets the output type; a quantized type whose 32-value blocks do not
divide the row length falls back to F16 (as the converter does on ``gguf.QuantError``). Sizes: a quantized
row of ``n`` values is ``n / block * type_size`` bytes (``gguf.GGML_QUANT_SIZES``).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.errors import InputError


@dataclass(frozen=True)
class OutType:
    """One ``--outtype``: its name, llama.cpp's file type number and the GGML tensor type of its weights."""

    name: str
    file_type: int  # gguf.LlamaFileType
    tensor_type: int  # gguf.GGMLQuantizationType


# name -> (LlamaFileType, GGMLQuantizationType); the numbers are llama.cpp's (gguf.constants), a test holds them.
OUTTYPES: dict[str, OutType] = {
    o.name: o
    for o in (
        OutType("f32", 0, 0),
        OutType("f16", 1, 1),
        OutType("bf16", 32, 30),
        OutType("q8_0", 7, 8),
        OutType("q4_0", 2, 2),
        OutType("q4_1", 3, 3),
        OutType("q5_0", 8, 6),
        OutType("q5_1", 9, 7),
    )
}
F32, F16 = 0, 1  # GGML tensor types
_SPELLINGS = {"fp32": "f32", "float32": "f32", "fp16": "f16", "float16": "f16", "half": "f16", "bfloat16": "bf16"}


def parse_outtype(text: str) -> OutType:
    """``f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1``, any case (llama-quantize writes ``Q8_0``, the converter ``q8_0``)."""
    key = text.strip().lower()
    key = _SPELLINGS.get(key, key)
    if key not in OUTTYPES:
        raise InputError(
            f"unknown GGUF output type {text!r}",
            hint=f"--outtype takes one of {', '.join(OUTTYPES)}; K-quants: run llama.cpp's llama-quantize on an f16 file",
        )
    return OUTTYPES[key]


def block_sizes(tensor_type: int) -> tuple[int, int]:
    """(values per block, bytes per block) of a GGML tensor type."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType(tensor_type)]


def tensor_type(name: str, shape: tuple[int, ...], outtype: OutType) -> int:
    """The GGML type ``convert_hf_to_gguf.py --outtype`` gives the GGUF tensor ``name`` of ``shape``."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return F32
    wanted = outtype.tensor_type
    if wanted in (F32, F16):
        return wanted
    block, _ = block_sizes(wanted)
    return wanted if shape[-1] % block == 0 else F16


def tensor_nbytes(shape: tuple[int, ...], ttype: int) -> int:
    """Bytes of a tensor of ``shape`` (row-major, last dimension the row) stored as ``ttype``."""
    block, size = block_sizes(ttype)
    rows = 1
    for d in shape[:-1]:
        rows *= d
    return rows * (shape[-1] // block) * size if shape else size
