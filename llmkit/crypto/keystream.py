"""The upstream key stream (SPEC.md section 1), served in fixed blocks.

The data is cut into chunks of C = 10 MiB; chunk i is XORed with the i-th sequential C-byte read of
the key file, tiled to the chunk's length; an empty read (the key is exhausted) seeks the key back
to 0 and reads again. So a short last key read (key length not a multiple of C) is tiled *inside
its chunk* and the next chunk starts again at key offset 0: the key byte for data byte j is **not**
``key[j % len(key)]``.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np

from llmkit.crypto.keycheck import KEY_DESCRIPTION
from llmkit.errors import InputError

CHUNK = 10 * 2**20  # upstream data chunk and key read size (SPEC.md 1)
BLOCK = 2 * 2**20  # llmkit's I/O unit; must divide CHUNK, so a block never straddles a chunk

assert CHUNK % BLOCK == 0


def read_full(f: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` (fewer bytes only at EOF); pipes and raw files may return short reads."""
    total = 0
    while total < len(view):
        # Every stream llmkit reads (FileIO, BufferedReader, sys.stdin.buffer) has readinto; the BinaryIO type
        # does not declare it.
        n = f.readinto(view[total:])  # type: ignore[attr-defined]
        if not n:
            break
        total += n
    return total


def advise_sequential(f: BinaryIO) -> None:
    """Ask the kernel for aggressive read-ahead (cold caches: the key and the data stream from disk)."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # pipes, exotic file objects
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)


class KeyStream:
    """The upstream key stream for one data file (SPEC.md 1), served in blocks.

    ``block(offset, n, scratch)`` returns the key bytes for data bytes ``[offset, offset + n)``
    of the payload; blocks must come in order and not straddle a C boundary. The key file is
    opened afresh per data file, as upstream does. Memory: ``scratch`` (the caller's) plus, while
    a short key read is tiled, one C-sized key segment.
    """

    def __init__(self, path: Path, *, chunk: int = CHUNK, block: int = BLOCK):
        self.path = Path(path)
        self.chunk = chunk
        self.block_size = block
        self._f = open(self.path, "rb", buffering=0)  # noqa: SIM115 - held for the stream's life, closed by close()
        self.size = os.fstat(self._f.fileno()).st_size
        advise_sequential(self._f)
        if self.size == 0:
            self._f.close()
            raise InputError("the key file is empty", path=self.path, hint=f"pass {KEY_DESCRIPTION}")
        self._next = 0  # key offset where the next sequential C-byte read starts
        self._seg = (0, 0)  # (start, length) of the current chunk's key read
        self._tiled: np.ndarray | None = None
        self._tiled_seg: tuple[int, int] | None = None

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> KeyStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_chunk(self) -> None:
        # upstream: k = key.read(C); if k == b"": key.seek(0); k = key.read(C)
        if self._next >= self.size:
            self._next = 0
        length = min(self.chunk, self.size - self._next)
        self._seg = (self._next, length)
        self._next += length

    def _pread(self, pos: int, out: np.ndarray) -> None:
        self._f.seek(pos)
        if read_full(self._f, out.data) != len(out):
            raise InputError("the key file got shorter while reading", path=self.path)

    def block(self, offset: int, n: int, scratch: np.ndarray) -> np.ndarray:
        within = offset % self.chunk
        if within == 0:
            self._start_chunk()
        start, length = self._seg
        if within + n <= length:  # the block lies inside this chunk's key read: a plain read
            out = scratch[:n]
            self._pread(start + within, out)
            return out
        # A short key read (end of the key, or a key shorter than C) is tiled inside its chunk.
        if self._tiled_seg != self._seg:
            segment = np.empty(length, dtype=np.uint8)
            self._pread(start, segment)
            self._tiled = np.resize(segment, length + self.block_size)  # repeats the segment
            self._tiled_seg = self._seg
        assert self._tiled is not None
        s = within % length
        return self._tiled[s : s + n]
