"""One GGUF file read: its header by ``gguf.GGUFReader`` (memory-mapped, no pickle), its tensors one at a time.

The reader parses the key-value metadata and the tensor infos (GGUF spec: magic ``GGUF``, version, counts,
key-values, tensor infos with dims innermost first, then the data, each tensor at its aligned offset); the
values are copied out and the mapping is dropped. A tensor is then read by positional reads into a fresh
buffer (``pread``), as the safetensors reader does: the resident memory of a read is that tensor alone, the
file's pages are read ahead (``prefetch``) and dropped from the page cache once used (``release``), and a
file that shrinks while it is read is one error line rather than a ``SIGBUS``. Quantized types are
dequantized to float32 (``llmkit.io.gguf.dequant``); q/k rows go back to rotate-half when the source says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmkit.errors import InputError
from llmkit.io.core.regular import open_regular, pread_into
from llmkit.io.core.source import TensorFile, read_tensor
from llmkit.io.core.spec import TensorInfo
from llmkit.io.gguf.dequant import dequantized, is_quantized, known_type, read_dtype, type_name
from llmkit.io.gguf.names import from_interleaved

MAGIC = b"GGUF"
_REDO = "download or convert it again"
# what the gguf reader raises on a damaged header: short reads, bad type codes, bad UTF-8, duplicates
_PARSE_ERRORS = (ValueError, IndexError, KeyError, OverflowError, TypeError, UnicodeDecodeError)


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as the file stores it: GGUF name, GGML type, row-major shape, absolute data offset, bytes."""

    name: str
    ttype: int
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def type_name(self) -> str:
        return type_name(self.ttype)


def _value(field: Any) -> Any:
    try:
        return field.contents()
    except UnicodeDecodeError:  # a token that is not UTF-8: kept as bytes
        return [bytes(field.parts[i]) for i in field.data] if len(field.types) > 1 else bytes(field.parts[-1])


class _Truncated(Exception):
    """A tensor's data ends past the end of the file."""


@cache
def _reader_class() -> type:
    """``gguf.GGUFReader`` that checks each tensor's data lies in the file before viewing it, so a truncated
    file is named as such (the reader's own error is a failed ``reshape``)."""
    import gguf

    class Reader(gguf.GGUFReader):
        def _build_tensors(self, start_offs: int, fields: list) -> None:
            for f in fields:
                dims, ttype, offset = f.parts[3], f.parts[4], f.parts[5]
                block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(int(ttype[0]))]
                end = start_offs + int(offset[0]) + int(np.prod(dims, dtype=np.uint64)) * size // block
                if end > len(self.data):
                    name = bytes(f.parts[1]).decode("utf-8", "replace")
                    raise _Truncated(f"tensor {name!r} ends at byte {end:,}")
            super()._build_tensors(start_offs, fields)

    return Reader


def _header(path: Path) -> Any:
    """The ``GGUFReader`` of ``path``; a file that is no GGUF, or a damaged one, is one :class:`InputError`."""
    with open_regular(path, "a GGUF file") as f:
        magic = f.read(4)
    if magic != MAGIC:
        what = "an empty file" if not magic else f"it starts with {magic!r}, not {MAGIC!r}"
        raise InputError(f"not a GGUF file ({what})", path=path, hint=f"pass a .gguf file; if it is one, {_REDO}")
    size = path.stat().st_size
    try:
        reader = _reader_class()(path)
    except _Truncated as e:
        raise InputError(f"truncated GGUF file: {e}, the file has {size:,}", path=path, hint=_REDO) from None
    except _PARSE_ERRORS as e:
        raise InputError(
            f"damaged or truncated GGUF file ({size:,} bytes): its header does not parse ({e})", path=path, hint=_REDO
        ) from None
    if reader.byte_order != "I":
        raise InputError("a big-endian GGUF file", path=path, hint="convert it on a little-endian machine")
    return reader


class GGUFFile:
    """The parsed header of one ``.gguf`` file: ``version``, ``metadata`` (key -> value, arrays as lists),
    ``stored`` (its tensors in file order). Opened as a :class:`GGUFTensorFile` to read tensors."""

    def __init__(self, path: Path):
        self.path = Path(path)
        reader = _header(self.path)
        self.version = int(reader.fields["GGUF.version"].contents())
        self.metadata: dict[str, Any] = {k: _value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        self.array_lengths = {k: len(f.data) for k, f in reader.fields.items() if len(f.types) > 1}
        size = self.path.stat().st_size
        self.stored: list[StoredTensor] = []
        for t in reader.tensors:
            s = StoredTensor(
                t.name,
                int(t.tensor_type),
                tuple(int(d) for d in reversed(t.shape.tolist())),
                int(t.data_offset),
                int(t.n_bytes),
            )
            if s.offset + s.nbytes > size:
                raise InputError(
                    f"truncated GGUF file: tensor {s.name!r} ends at byte {s.offset + s.nbytes:,}, the file has {size:,}",
                    path=self.path,
                    hint=_REDO,
                )
            if not known_type(s.ttype):
                raise InputError(f"tensor {s.name!r} has an unknown GGML type {s.ttype}", path=self.path, hint=_REDO)
            self.stored.append(s)
        del reader  # the mapping goes with it: values and infos are copied out


class GGUFTensorFile(TensorFile):
    """A GGUF file's tensors under the names its source shows (``infos``, ``entries``: shown name ->
    (stored tensor, heads to un-interleave its rows, or None)); read by ``pread`` into fresh tensors."""

    def __init__(self, header: GGUFFile):
        self.header = header
        self.path = header.path
        self.infos: dict[str, TensorInfo] = {}
        self.entries: dict[str, tuple[StoredTensor, int | None]] = {}
        self._handle: Any = open_regular(self.path, "a GGUF file")

    def show(self, name: str, stored: StoredTensor, heads: int | None) -> None:
        """Present ``stored`` as ``name`` (its rows un-interleaved for ``heads`` heads, when given)."""
        self.infos[name] = TensorInfo(name, read_dtype(stored.ttype), stored.shape, self.path)
        self.entries[name] = (stored, heads)

    def get(self, name: str) -> torch.Tensor:
        stored, heads = self.entries[name]
        fd = self._fd()
        if is_quantized(stored.ttype):
            raw = np.empty(stored.nbytes, np.uint8)
            pread_into(fd, raw.data, stored.offset, self.path, f" tensor {stored.name!r}")
            tensor = dequantized(raw, stored.ttype, stored.shape)
            del raw
        else:
            tensor = read_tensor(fd, stored.offset, self.infos[name])
        if heads is not None:
            tensor = from_interleaved(tensor, heads).contiguous()
        return tensor

    def _fd(self) -> int:
        if self._handle is None:
            raise InputError("the GGUF file was closed", path=self.path)
        return int(self._handle.fileno())

    def prefetch(self, name: str) -> None:
        self._advise(name, getattr(os, "POSIX_FADV_WILLNEED", None))

    def release(self, name: str) -> None:
        self._advise(name, getattr(os, "POSIX_FADV_DONTNEED", None))

    def _advise(self, name: str, advice: int | None) -> None:
        if advice is None or self._handle is None or name not in self.entries:
            return
        stored = self.entries[name][0]
        if stored.nbytes:
            os.posix_fadvise(self._handle.fileno(), stored.offset, stored.nbytes, advice)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
