"""Byte sizes for options and messages. Imports nothing heavy: CLI modules use it at start-up."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from llmkit.errors import DiskSpaceError, InputError, OutputNotWritableError

DEFAULT_SHARD_SIZE = 5_000_000_000  # bytes, as transformers' default "5GB"

# Size suffixes: K, M, G, T are decimal (10^3 ...), with or without B, as transformers reads max_shard_size="5GB"
# and llama.cpp's gguf-split reads --split-max-size 5G; Ki, Mi, Gi, Ti (with or without B) are binary (2^10 ...).
_PREFIXES = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}
_SIZE = re.compile(r"\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<prefix>[KMGT]?)(?P<binary>I?)(?P<bytes>B?)\s*")
SIZE_EXAMPLES = "5GB, 5G, 500MB, 500M or 2GiB"


def parse_size(text: str | int) -> int:
    """``"5GB"`` or ``"5G"`` -> 5_000_000_000 (decimal, as transformers and llama.cpp), ``"2GiB"`` or ``"2Gi"``
    -> 2 * 2**30. A bare ``B`` under 1000 (``"5B"``: 5 bytes, but 5 billion in mergekit) is refused."""
    if isinstance(text, int):
        return text
    m = _SIZE.fullmatch(text.upper())
    if not m or (m.group("binary") and not m.group("prefix")):
        raise InputError(f"cannot parse size {text!r}", hint=f"use e.g. {SIZE_EXAMPLES}")
    base = 1024 if m.group("binary") else 1000
    value = int(float(m.group("number")) * base ** _PREFIXES[m.group("prefix")])
    if m.group("bytes") and not m.group("prefix") and value < 1000:
        raise InputError(
            f"size {text!r} is ambiguous: {value} bytes, or {value} billion as mergekit reads it",
            hint=f"write the unit, e.g. {value}GB",
        )
    if value <= 0:
        raise InputError(f"size must be positive, got {text!r}", hint=f"use e.g. {SIZE_EXAMPLES}")
    return value


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError


def nearest_existing(folder: str | os.PathLike) -> Path:
    """``folder`` if it exists, else its nearest existing parent (the folder that will hold it)."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system that holds ``folder`` (or its nearest existing parent)."""
    return shutil.disk_usage(nearest_existing(folder)).free


# Free space kept beyond a planned output: 1% of it, at least 1 MiB, at most 64 MiB (file system
# metadata, block rounding, logs). A fixed 64 MiB would refuse a 470 KB output on a disk with 20 MB free.
MIN_SPACE_MARGIN = 2**20
MAX_SPACE_MARGIN = 64 * 2**20


def space_margin(nbytes: int) -> int:
    """The free space required beyond an output of ``nbytes``: 1%, at least 1 MiB, at most 64 MiB."""
    return min(MAX_SPACE_MARGIN, max(MIN_SPACE_MARGIN, -(-nbytes // 100)))


def read_only_mount(folder: str | os.PathLike) -> Path | None:
    """The nearest existing folder of ``folder`` when its file system is mounted read-only, else None."""
    p = nearest_existing(folder)
    try:
        flags = os.statvfs(p).f_flag
    except (OSError, AttributeError):  # no statvfs (Windows) or not readable: let the write tell
        return None
    return p if flags & getattr(os, "ST_RDONLY", 1) else None


def check_space(out_dir: str | os.PathLike, need: int, free: int) -> int:
    """Refuse an output folder on a read-only file system, or one without ``need`` bytes plus
    :func:`space_margin` free (``free``: what the caller measured). Returns the margin."""
    ro = read_only_mount(out_dir)
    if ro is not None:
        where = "" if Path(ro) == Path(out_dir) else f" ({ro} is read-only)"
        raise OutputNotWritableError(
            f"the output folder is on a read-only file system{where}",
            path=out_dir,
            hint="choose an -o on a writable file system, or remount it read-write",
        )
    margin = space_margin(need)
    if free < need + margin:
        raise DiskSpaceError(
            f"needs {human_bytes(need + margin)} of free space ({human_bytes(need)} of output + a "
            f"{human_bytes(margin)} margin), {human_bytes(free)} available",
            path=out_dir,
            hint="free some space or choose another -o",
        )
    return margin
