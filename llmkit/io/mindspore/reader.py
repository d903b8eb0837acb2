"""Reading MindSpore ``.ckpt`` files lazily (the wire format and the writer: ``llmkit.io.mindspore.ckpt``).

:class:`CkptFile` reads record headers with small reads (seeking past the data), joins the split records
of a tensor and reads one tensor at a time with ``preadv`` into a fresh tensor. A CRC trailer is checked
while the tensors are read in file order (no second pass), or by :meth:`CkptFile.verify_crc`. An
encrypted checkpoint is read through ``llmkit.io.mindspore.crypto.DecryptedFile`` with its key. Every
defect (bad varint, a length past the end, an unknown dtype string, split records that disagree, a CRC
mismatch) is an :class:`~llmkit.errors.InputError` naming the file and the byte offset. An AES-CBC or
SM4-CBC file cannot tell altered values from real ones: :meth:`CkptFile.integrity_warning` says so, and
:func:`finish_reads` (after a job read the tensors) checks the CRC trailer and collects those warnings.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from llmkit.errors import InputError
from llmkit.io.core.regular import pread_into
from llmkit.io.core.source import TensorFile
from llmkit.io.core.spec import TensorInfo
from llmkit.io.mindspore.ckpt import CRC_MAGIC, CRC_TRAILER_BYTES, MS_TO_TORCH
from llmkit.io.mindspore.records import Corrupt, Cursor, Piece, parse_record

if TYPE_CHECKING:
    from llmkit.io.mindspore.keys import CkptKey


class _Plaintext(Protocol):
    """Random access to a checkpoint's plaintext: :class:`_PlainFile`, or ``crypto.DecryptedFile``."""

    size: int

    def pread(self, n: int, offset: int) -> bytes: ...
    def readinto(self, view: memoryview, offset: int) -> None: ...


class _PlainFile:
    """Random access to an unencrypted file (``DecryptedFile`` is the encrypted counterpart)."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path, self.size = fd, path, os.fstat(fd).st_size

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def readinto(self, view: memoryview, offset: int) -> None:
        pread_into(self.fd, view, offset, self.path)


class _Buffered:
    """``read``/``seek``/``tell`` over ``pread`` with a 64 KiB window: header fields are small reads, data is
    skipped by seeking (for an encrypted file, blocks holding only tensor data are not decrypted)."""

    CHUNK = 1 << 16

    def __init__(self, plain: _Plaintext):
        self.plain, self.pos, self.buf, self.buf_at = plain, 0, b"", 0

    def tell(self) -> int:
        return self.pos

    def seek(self, n: int, whence: int = os.SEEK_SET) -> None:
        self.pos = n if whence == os.SEEK_SET else self.pos + n

    def read(self, n: int) -> bytes:
        start = self.pos - self.buf_at
        if not (start >= 0 and start + n <= len(self.buf)):
            self.buf, self.buf_at, start = self.plain.pread(max(n, self.CHUNK), self.pos), self.pos, 0
        data = self.buf[start : start + n]
        self.pos += len(data)
        return data


class CkptFile(TensorFile):
    """A MindSpore ``.ckpt`` read lazily: names, dtypes and shapes from the record headers (data skipped),
    one tensor's bytes read on :meth:`get`. ``crc``: the trailer's CRC-32, or None when there is none.
    An encrypted checkpoint needs ``key`` (``llmkit.io.mindspore.crypto``); ``encryption`` is then its mode."""

    def __init__(self, path: Path, key: CkptKey | None = None):
        from llmkit.io.mindspore.crypto import DecryptedFile, sniff_mode

        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except IsADirectoryError:
            raise InputError("expected a .ckpt file, found a folder", path=path) from None
        try:
            self.encryption = sniff_mode(os.pread(self._fd, 4, 0))
            if self.encryption is not None and key is None:
                raise InputError(
                    f"this checkpoint is encrypted ({self.encryption})",
                    path=path,
                    hint="pass --dec-key with its key (a key file, or env:VAR holding hex)",
                )
            self._plain: _Plaintext = (
                DecryptedFile(self._fd, path, key)
                if key is not None and self.encryption
                else _PlainFile(self._fd, path)
            )
            self._open()
        except BaseException:
            os.close(self._fd)
            raise

    def _fail(self, offset: int, what: str, truncated: bool = False) -> InputError:
        hint = (
            "the file is truncated; download or convert it again"
            if truncated
            else "the file is damaged or not a MindSpore checkpoint; download or convert it again"
        )
        if self.encryption:
            hint = f"wrong key or mode ({self.encryption}), or the file is damaged"
        return InputError(f"corrupt MindSpore checkpoint at byte {offset}: {what}", path=self.path, hint=hint)

    def _read_trailer(self, size: int) -> None:
        """``crc`` (None without a trailer) and ``end``: where the records end."""
        self.crc: int | None = None
        self.end = size
        if size >= CRC_TRAILER_BYTES:
            tail = self._plain.pread(CRC_TRAILER_BYTES, size - CRC_TRAILER_BYTES)
            if tail[: len(CRC_MAGIC)] == CRC_MAGIC:  # MindSpore's loader strips such a trailer whenever present
                self.crc = int.from_bytes(tail[len(CRC_MAGIC) :], "big")
                self.end = size - CRC_TRAILER_BYTES

    def _open(self) -> None:
        size = self._plain.size
        self._read_trailer(size)
        if size == 0:
            raise InputError(
                "empty file: not a MindSpore checkpoint",
                path=self.path,
                hint="the file is truncated; download or convert it again",
            )
        self.infos: dict[str, TensorInfo] = {}
        self._pieces: dict[str, list[Piece]] = {}
        types: dict[str, str] = {}
        last: str | None = None
        f = _Buffered(self._plain)
        c = Cursor(f, self.end)
        while f.tell() < self.end:
            start = f.tell()
            try:
                r = parse_record(c, start)
            except Corrupt as e:
                raise self._fail(e.offset, e.what, e.truncated) from None
            if r.tag == last:  # a split tensor: same tag, same dims and type, more bytes
                info = self.infos[r.tag]
                if r.dims != info.shape or r.type != types[r.tag]:
                    raise self._fail(
                        start,
                        f"split records of {r.tag!r} disagree: {types[r.tag]} "
                        f"{list(info.shape)} then {r.type} {list(r.dims)}",
                    )
                self._pieces[r.tag].append(r.piece)
                continue
            if r.tag in self.infos:
                raise self._fail(
                    start, f"tensor {r.tag!r} appears twice (first at byte {self._pieces[r.tag][0].record})"
                )
            if r.type not in MS_TO_TORCH:
                raise self._fail(
                    start,
                    f"tensor {r.tag!r} has tensor type {r.type!r}, which llmkit cannot "
                    f"read (known: {', '.join(MS_TO_TORCH)})",
                )
            self.infos[r.tag] = TensorInfo(r.tag, MS_TO_TORCH[r.type], r.dims, self.path)
            self._pieces[r.tag] = [r.piece]
            types[r.tag] = r.type
            last = r.tag
        for name, info in self.infos.items():
            have = sum(p.length for p in self._pieces[name])
            if have != info.nbytes:
                raise self._fail(
                    self._pieces[name][0].record,
                    f"tensor {name!r} ({types[name]} {list(info.shape)}) needs {info.nbytes} bytes "
                    f"of data, its record(s) hold {have}",
                )
        self._crc_pos = 0  # the running CRC covers bytes [0, _crc_pos)
        self._crc_sum = 0

    @property
    def has_crc(self) -> bool:
        return self.crc is not None

    def records(self, name: str) -> int:
        """How many records hold ``name`` (more than one: split at 512 MiB)."""
        return len(self._pieces[name])

    def get(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        tensor = torch.empty(info.shape, dtype=info.dtype)
        view = tensor.reshape(-1).view(torch.uint8).numpy().data if info.nbytes else memoryview(b"")
        done = 0
        for p in self._pieces[name]:
            part = view[done : done + p.length]
            self._plain.readinto(part, p.data)
            if self.crc is not None and p.record == self._crc_pos:
                self._crc_sum = zlib.crc32(self._plain.pread(p.data - p.record, p.record), self._crc_sum)
                self._crc_sum = zlib.crc32(part, self._crc_sum)
                self._crc_pos = p.data + p.length
                if self._crc_pos == self.end:
                    self._judge_crc()
            done += p.length
        return tensor

    def verify_crc(self) -> bool | None:
        """Check the CRC trailer (reading only what :meth:`get` has not covered yet); None when the file
        has no trailer. A mismatch raises :class:`InputError`."""
        if self.crc is None:
            return None
        chunk = 16 << 20
        while self._crc_pos < self.end:
            data = self._plain.pread(min(chunk, self.end - self._crc_pos), self._crc_pos)
            if not data:
                raise InputError("file shrank while reading", path=self.path)
            self._crc_sum = zlib.crc32(data, self._crc_sum)
            self._crc_pos += len(data)
        self._judge_crc()
        return True

    def _judge_crc(self) -> None:
        if self._crc_sum != self.crc:
            raise InputError(
                f"CRC mismatch: the trailer at byte {self.end} says {self.crc:#010x}, the content "
                f"gives {self._crc_sum:#010x}",
                path=self.path,
                hint="the file is damaged; download or convert it again",
            )

    def integrity_warning(self, values_read: bool = True) -> str | None:
        """The warning a read of this file carries when its cipher cannot authenticate the values (AES-CBC,
        SM4-CBC; ``ckpt_crypto.unverified_warning``); ``values_read``: the reader checked the CRC trailer."""
        if self.encryption is None:
            return None
        from llmkit.io.mindspore.crypto import unverified_warning

        return unverified_warning(self.path.name, self.encryption, self.crc is not None, values_read)

    def prefetch(self, name: str) -> None:
        pieces = self._pieces.get(name)
        if pieces and hasattr(os, "posix_fadvise") and self.encryption is None:
            first, last = pieces[0], pieces[-1]
            os.posix_fadvise(self._fd, first.record, last.data + last.length - first.record, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def finish_reads(files: Iterable[TensorFile]) -> list[str]:
    """After a job read the tensors of ``files`` (a source's): the CRC trailer of each ``.ckpt`` checked over
    what was not read yet (a mismatch raises), and the warnings the files' reads carry (values nothing
    verified: a ``.ckpt`` cipher without authentication, a remote file without a published digest), once each."""
    warnings: list[str] = []
    for f in files:
        if isinstance(f, CkptFile):
            f.verify_crc()
        if (w := f.integrity_warning()) is not None and w not in warnings:
            warnings.append(w)
    return warnings
