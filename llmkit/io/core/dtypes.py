"""Dtype names shared by every format: safetensors codes (``F16``), torch dtypes, CLI names.

The CLI names and the spellings accepted for them (:data:`DTYPE_SPELLINGS`) need no torch, so the command
line can show and check them at start-up; the torch tables (``ST_TO_TORCH``, ``TORCH_TO_ST``, ``CLI_DTYPES``,
``DTYPE_CHOICES``, ``CONFIG_NAMES``) are built on first use (PEP 562).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from llmkit.errors import InputError

if TYPE_CHECKING:
    import torch


# The --dtype names llmkit writes (in options, results and recipes), each with the other spellings it accepts
# for it: transformers' / torch's (float16, half, bfloat16, float32, float), llama.cpp's (f16, f32, bf16) and
# mergekit's (float16, bfloat16, float32). Case does not matter. "keep" keeps each tensor's dtype.
DTYPE_SPELLINGS: dict[str, tuple[str, ...]] = {
    "fp32": ("f32", "float32", "float"),
    "fp16": ("f16", "float16", "half"),
    "bf16": ("bfloat16",),
}


DTYPE_ALIASES: dict[str, str] = {s: name for name, others in DTYPE_SPELLINGS.items() for s in (name, *others)}


KEEP = "keep"


def canonical_dtype(text: str, allowed: Iterable[str] = (KEEP, *DTYPE_SPELLINGS)) -> str:
    """``"float16"`` -> ``"fp16"``: the llmkit name of any accepted spelling, if it is one of ``allowed``."""
    allowed = tuple(allowed)
    low = text.strip().lower()
    name = KEEP if low == KEEP else DTYPE_ALIASES.get(low)
    if name not in allowed:
        raise InputError(f"{text!r} is not one of {', '.join(allowed)}")
    return name


@lru_cache(maxsize=1)
def _torch_tables() -> dict[str, Any]:
    import torch

    st_to_torch: dict[str, torch.dtype] = {  # safetensors header code -> torch dtype (the codes torch can hold)
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
    cli = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    return {
        "ST_TO_TORCH": st_to_torch,
        "TORCH_TO_ST": {v: k for k, v in st_to_torch.items()},
        "CLI_DTYPES": cli,  # names accepted by --dtype options (and shown in results)
        "DTYPE_CHOICES": {KEEP: None, **cli},
        # Names transformers writes into config.json ("torch_dtype" / "dtype").
        "CONFIG_NAMES": {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"},
    }


def __getattr__(name: str) -> Any:
    tables = (
        _torch_tables() if name in ("ST_TO_TORCH", "TORCH_TO_ST", "CLI_DTYPES", "DTYPE_CHOICES", "CONFIG_NAMES") else {}
    )
    if name in tables:
        return tables[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def st_code(dtype: torch.dtype) -> str:
    """The safetensors code for a torch dtype (``torch.float16`` -> ``F16``)."""
    try:
        return _torch_tables()["TORCH_TO_ST"][dtype]
    except KeyError:
        raise InputError(f"dtype {dtype} cannot be stored in safetensors") from None


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per element."""
    import torch

    return torch.empty((), dtype=dtype).element_size()


def dtype_name(dtype: torch.dtype | None) -> str:
    """The CLI name of a dtype (``fp16``), ``keep`` for None, else torch's short name (``int64``)."""
    if dtype is None:
        return KEEP
    for name, d in _torch_tables()["CLI_DTYPES"].items():
        if d == dtype:
            return name
    return str(dtype).replace("torch.", "")


def parse_cli_dtype(name: str) -> torch.dtype:
    """The torch dtype of a --dtype name or any spelling of :data:`DTYPE_SPELLINGS` (``half`` -> float16)."""
    try:
        return _torch_tables()["CLI_DTYPES"][canonical_dtype(name, DTYPE_SPELLINGS)]
    except InputError as e:
        raise InputError(f"unknown dtype {name!r}", hint=f"use one of {', '.join(DTYPE_SPELLINGS)}") from e
