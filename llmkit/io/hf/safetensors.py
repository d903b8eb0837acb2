"""``.safetensors`` files: :class:`SafetensorsFile` reads one lazily (the header checked by llmkit,
``st_header``, and by ``safe_open``; data read with ``readinto`` into a fresh tensor) and
:class:`SafetensorsLayout` writes one: header first (keys in plan order, ``__metadata__ = {"format":
"pt"}``, padded with spaces to 8 bytes, as ``safetensors.torch.save_file`` does), then the data.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
from pathlib import Path
from typing import BinaryIO

import torch

from llmkit.errors import InputError
from llmkit.io.core.dtypes import ST_TO_TORCH, st_code
from llmkit.io.core.layout import FileLayout, FileStart
from llmkit.io.core.regular import open_regular
from llmkit.io.core.source import TensorFile, read_tensor
from llmkit.io.core.spec import TensorInfo, TensorSpec
from llmkit.io.hf.st_header import read_header


def safetensors_header(specs: list[TensorSpec], metadata: dict[str, str] | None) -> bytes:
    """The header bytes (8-byte length + space-padded JSON) for tensors stored in ``specs`` order."""
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for s in specs:
        header[s.name] = {
            "dtype": st_code(s.dtype),
            "shape": list(s.shape),
            "data_offsets": [offset, offset + s.nbytes],
        }
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class SafetensorsLayout(FileLayout):
    """Header first (keys in plan order, ``__metadata__`` as given), then the data, as safetensors writes."""

    name = "safetensors"
    needs_crc = False

    def start(self, f: BinaryIO, path: Path, specs: list[TensorSpec], metadata: dict[str, str] | None) -> FileStart:
        head = safetensors_header(specs, metadata)
        offsets: dict[str, int] = {}
        offset = len(head)
        for s in specs:
            offsets[s.name] = offset
            offset += s.nbytes
        f.write(head)
        return FileStart(offsets, offset, {})


class SafetensorsFile(TensorFile):
    """A ``.safetensors`` file: header validated by llmkit and by ``safe_open``; data read with ``readinto``.

    ``get`` reads one tensor's bytes straight into a fresh tensor (one copy, no file mapping), so
    the resident memory of a read is the tensor itself, not the tensor plus mapped file pages.
    """

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        self._handle: io.BufferedReader | None = open_regular(path, "a safetensors file")
        try:
            size = os.fstat(self._handle.fileno()).st_size
            entries, self.metadata, self._data_start = read_header(self._handle, path, size)
            self.infos = {e.name: TensorInfo(e.name, ST_TO_TORCH[e.dtype], e.shape, path) for e in entries}
            self._offsets = {e.name: (e.begin, e.end) for e in entries}
            try:  # the reference parser's own validation
                with safe_open(str(path), framework="pt", device="cpu"):
                    pass
            except BaseException as e:  # its own SafetensorError, or a Rust panic (a BaseException)
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                raise InputError(
                    f"cannot open safetensors file: {e}", path=path, hint="the file is damaged; download it again"
                ) from None
        except BaseException:
            self.close()
            raise

    def get(self, name: str) -> torch.Tensor:
        assert self._handle is not None
        return read_tensor(self._handle.fileno(), self._data_start + self._offsets[name][0], self.infos[name])

    def prefetch(self, name: str) -> None:
        """Start reading ``name``'s bytes into the page cache (``POSIX_FADV_WILLNEED``), e.g. while the
        previous tensor is computed, so :meth:`get` copies from memory instead of waiting for the disk."""
        self._advise(name, getattr(os, "POSIX_FADV_WILLNEED", None))

    def release(self, name: str) -> None:
        """``name`` has been read: drop its pages from the page cache (``POSIX_FADV_DONTNEED``), so a model
        larger than the RAM does not push the output's pages and the next tensors' read-ahead out."""
        self._advise(name, getattr(os, "POSIX_FADV_DONTNEED", None))

    def _advise(self, name: str, advice: int | None) -> None:
        begin, end = self._offsets[name]
        if advice is None or self._handle is None or end <= begin:
            return
        with contextlib.suppress(OSError):  # advice only: a file system that ignores it reads as before
            os.posix_fadvise(self._handle.fileno(), self._data_start + begin, end - begin, advice)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
