"""Dtype names shared by every format: safetensors codes (``F16``), torch dtypes, CLI names."""

from __future__ import annotations

import torch

from llmkit.errors import InputError

# safetensors header code -> torch dtype (the codes torch can hold).
ST_TO_TORCH: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
TORCH_TO_ST: dict[torch.dtype, str] = {v: k for k, v in ST_TO_TORCH.items()}

# Names accepted by --dtype options (and shown in results); "keep" keeps each tensor's dtype.
CLI_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
DTYPE_CHOICES: dict[str, torch.dtype | None] = {"keep": None, **CLI_DTYPES}

# Names transformers writes into config.json ("torch_dtype" / "dtype").
CONFIG_NAMES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def st_code(dtype: torch.dtype) -> str:
    """The safetensors code for a torch dtype (``torch.float16`` -> ``F16``)."""
    try:
        return TORCH_TO_ST[dtype]
    except KeyError:
        raise InputError(f"dtype {dtype} cannot be stored in safetensors") from None


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per element."""
    return torch.empty((), dtype=dtype).element_size()


def dtype_name(dtype: torch.dtype | None) -> str:
    """The CLI name of a dtype (``fp16``), ``keep`` for None, else torch's short name (``int64``)."""
    if dtype is None:
        return "keep"
    for name, d in CLI_DTYPES.items():
        if d == dtype:
            return name
    return str(dtype).replace("torch.", "")


def parse_cli_dtype(name: str) -> torch.dtype:
    try:
        return CLI_DTYPES[name]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}", hint=f"use one of {', '.join(CLI_DTYPES)}") from None
