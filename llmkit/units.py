"""Byte sizes for options and messages. Imports nothing heavy: CLI modules use it at start-up."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from llmkit.errors import InputError

DEFAULT_SHARD_SIZE = 5_000_000_000  # bytes, as transformers' default "5GB"

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000 (decimal units as in transformers; ``GiB`` for binary)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", text.upper())
    if not m:
        raise InputError(f"cannot parse size {text!r}", hint="use e.g. 5GB, 500MB or 2GiB")
    value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2) or ""])
    if value <= 0:
        raise InputError(f"size must be positive, got {text!r}")
    return value


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system that holds ``folder`` (or its nearest existing parent)."""
    p = folder
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free
