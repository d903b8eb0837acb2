"""The JSON header of a ``.safetensors`` file, checked field by field before anything reads it.

A header is ``{name: {"dtype": "F16", "shape": [m, n], "data_offsets": [begin, end]}, "__metadata__":
{str: str}}`` (offsets relative to the end of the header). Every field of every entry is checked for its
type and value, and the entries together must tile the data exactly (no overlap, no hole, nothing after
the last tensor), so that a damaged or hand-edited header is one :class:`~llmkit.errors.InputError` naming
the file, the tensor and the field, never a ``TypeError`` from deeper down or tensor bytes read from the
wrong place.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from llmkit.errors import InputError

# A safetensors header larger than this is corrupt (the Rust reader's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000


_AGAIN = "the file is damaged or was edited by hand; download it again"


@dataclass(frozen=True)
class StEntry:
    """One checked header entry: the safetensors dtype code, the shape and the data byte range."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _shown(value: object) -> str:
    try:
        text = json.dumps(value)
    except ValueError:  # an integer too long to print
        text = "a number too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


def _bad(path: Path, message: str) -> InputError:
    return InputError(f"corrupt safetensors header: {message}", path=path, hint=_AGAIN)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise _Duplicate(key)
        seen[key] = value
    return seen


class _Duplicate(Exception):
    pass


def _parse(raw: bytes, path: Path) -> dict:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except _Duplicate as e:
        raise _bad(path, f"the name {str(e)!r} appears twice") from None
    except UnicodeDecodeError:
        raise _bad(path, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise _bad(path, f"not valid JSON ({e.msg} at column {e.colno})") from None
    except ValueError:  # Python refuses integers of over 4300 digits
        raise _bad(path, "it holds a number too long to read (over 4300 digits)") from None
    except RecursionError:
        raise _bad(path, "nested too deeply to be read") from None
    if not isinstance(header, dict):
        raise _bad(path, "not a JSON object")
    return header


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(name: str, entry: object, path: Path, itemsizes: dict[str, int]) -> StEntry:
    """One tensor's entry, every field checked; the byte range must be exactly its shape's size."""
    where = f"tensor {name!r}"
    if not isinstance(entry, dict):
        raise _bad(path, f"{where}: the entry must be an object, found {_shown(entry)}")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise _bad(path, f"{where} has no {key}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise _bad(path, f'{where}: dtype must be a string such as "F16", found {_shown(dtype)}')
    if dtype not in itemsizes:
        raise InputError(f"tensor {name!r} has dtype {dtype}, which llmkit cannot handle", path=path)
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise _bad(path, f"{where}: shape must be a list of non-negative integers, found {_shown(shape)}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets):
        raise _bad(
            path, f"{where}: data_offsets must be [begin, end], two non-negative integers, found {_shown(offsets)}"
        )
    begin, end = offsets
    if end < begin:
        raise _bad(path, f"{where}: data_offsets {_shown(offsets)} end before they begin")
    size = math.prod(shape) * itemsizes[dtype]
    if end - begin != size:
        raise _bad(
            path,
            f"{where}: shape {_shown(shape)} of {dtype} is {size if size < 2**64 else 'over 2^64'} "
            f"bytes but data_offsets "
            f"{_shown(offsets)} span {end - begin}",
        )
    return StEntry(name, dtype, tuple(shape), begin, end)


def _check_tiling(entries: list[StEntry], data_len: int, path: Path) -> None:
    """The entries, in data order, cover bytes ``0 .. data_len`` of the data exactly once."""
    at, prev = 0, None
    for e in entries:
        if e.begin < at:
            assert prev is not None
            raise _bad(
                path,
                f"tensors {prev.name!r} and {e.name!r} overlap (data_offsets [{prev.begin}, "
                f"{prev.end}] and [{e.begin}, {e.end}])",
            )
        if e.begin > at:
            raise _bad(path, f"data bytes {at}..{e.begin} belong to no tensor (before {e.name!r})")
        at, prev = e.end, e
    if at > data_len:
        raise InputError(
            f"file is truncated: its header describes {at} bytes of tensor data but only {data_len} are present",
            path=path,
            hint="download it again",
        )
    if at < data_len:
        raise InputError(
            f"corrupt safetensors file: {data_len - at} unexpected bytes after the tensor data",
            path=path,
            hint="download it again",
        )


def _metadata(value: object, path: Path) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _bad(path, f"__metadata__ must be an object of strings, found {_shown(value)}")
    return value


def read_header(f: BinaryIO, path: Path, size: int) -> tuple[list[StEntry], dict[str, str], int]:
    """Read and check the header of the safetensors file ``f`` (``size`` bytes long, named ``path``).

    Returns the entries in data order, the ``__metadata__`` strings and where the data starts."""
    head = f.read(8)
    if len(head) < 8:
        raise InputError(
            "not a safetensors file: shorter than its 8-byte header length",
            path=path,
            hint="the file is truncated; download it again",
        )
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES or n > size - 8:
        raise InputError(
            f"corrupt safetensors header (declares {n} header bytes, file has {size})",
            path=path,
            hint="the file is truncated or not safetensors; download it again",
        )
    entries, metadata = parse_header(f.read(n), path, size - 8 - n)
    return entries, metadata, 8 + n


def parse_header(raw: bytes, path: Path, data_len: int | None) -> tuple[list[StEntry], dict[str, str]]:
    """The header JSON ``raw`` checked: the entries in data order and the ``__metadata__`` strings. The
    entries must tile ``data_len`` bytes of data; ``None`` (a stream, whose length is not known yet): the
    data ends where the last tensor ends."""
    from llmkit.io.core.dtypes import ST_TO_TORCH, itemsize

    header = _parse(raw, path)
    itemsizes = {code: itemsize(dtype) for code, dtype in ST_TO_TORCH.items()}
    metadata = _metadata(header.get("__metadata__"), path)
    entries = [_entry(k, v, path, itemsizes) for k, v in header.items() if k != "__metadata__"]
    entries.sort(key=lambda e: (e.begin, e.end))
    _check_tiling(entries, max((e.end for e in entries), default=0) if data_len is None else data_len, path)
    return entries, metadata
