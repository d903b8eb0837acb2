"""MindSpore ``.ckpt``: the wire format, a streaming writer layout and a streaming reader (SPEC.md section 5).

A ``.ckpt`` is a concatenation of serialized ``Checkpoint`` messages of one ``Value`` each::

    0a <varint len> { 0a <len> tag | 12 <len> { (08 <varint dim>)* | 12 <len> type | 1a <len> raw } }

- :class:`CkptLayout` (sink format ``ckpt``) writes exactly the bytes ``mindspore.save_checkpoint``
  writes for the same named tensors in the same order: tensors over 512 MiB (:data:`SLICE_BYTES`) as
  several records with the same tag and full dims, raw bytes cut every 512 MiB; empty tensors are not
  written (MindSpore drops them); with ``crc`` the 17-byte trailer ``b"crc_num"`` + CRC-32 of all
  preceding bytes as 10 big-endian bytes. Every record header is known from the specs, so each tensor
  goes straight to its place: memory is one tensor, and neither MindSpore nor protobuf is imported.
- :class:`CkptFile` reads headers with small reads (seeking past the data), joins the split records
  of a tensor and reads one tensor at a time with ``preadv`` into a fresh tensor. A CRC trailer is
  checked while the tensors are read in file order (no second pass), or by :meth:`CkptFile.verify_crc`.
  Every defect (bad varint, a length past the end, an unknown dtype string, split records that
  disagree, a CRC mismatch) is an :class:`~llmkit.errors.InputError` naming the file and byte offset.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from llmkit.errors import InputError
from llmkit.io.layouts import WRITE_SLICE, FileLayout, FileStart, TensorSpec
from llmkit.io.tensorfiles import TensorFile, TensorInfo

SLICE_BYTES = 512 * 1024 * 1024  # MindSpore's SLICE_SIZE (512 * 1024 KiB): larger tensors are split
CRC_MAGIC = b"crc_num"
CRC_TRAILER_BYTES = len(CRC_MAGIC) + 10
READ_CHUNK = 1 << 30  # bytes per preadv call (Linux returns at most ~2 GB per call)

# MindSpore's tensor_type strings (mindspore.train.serialization) <-> torch.
MS_TO_TORCH: dict[str, torch.dtype] = {
    "Float16": torch.float16, "Float32": torch.float32, "Float64": torch.float64, "BFloat16": torch.bfloat16,
    "Int8": torch.int8, "UInt8": torch.uint8, "Int16": torch.int16, "UInt16": torch.uint16,
    "Int32": torch.int32, "UInt32": torch.uint32, "Int64": torch.int64, "UInt64": torch.uint64,
    "Bool": torch.bool,
}
TORCH_TO_MS: dict[torch.dtype, str] = {v: k for k, v in MS_TO_TORCH.items()}


def ms_type(dtype: torch.dtype) -> str:
    """MindSpore's ``tensor_type`` string for a torch dtype (``torch.bfloat16`` -> ``BFloat16``)."""
    try:
        return TORCH_TO_MS[dtype]
    except KeyError:
        raise InputError(f"dtype {dtype} cannot be stored in a MindSpore checkpoint") from None


# ------------------------------------------------------------------ writing


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative integer."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _delimited(key: int, data: bytes) -> bytes:
    return bytes([key]) + varint(len(data)) + data


def record_headers(spec: TensorSpec) -> list[tuple[bytes, int]]:
    """(header bytes, data bytes) of each record ``spec`` is written as: one per 512 MiB of data,
    none for an empty tensor. A record is its header followed by that many raw bytes."""
    tag = _delimited(0x0A, spec.name.encode())
    dims = b"".join(b"\x08" + varint(d) for d in spec.shape)
    type_field = _delimited(0x12, ms_type(spec.dtype).encode())
    out = []
    for start in range(0, spec.nbytes, SLICE_BYTES):
        piece = min(SLICE_BYTES, spec.nbytes - start)
        tensor_head = dims + type_field + b"\x1a" + varint(piece)
        tensor_len = len(tensor_head) + piece
        value_head = tag + b"\x12" + varint(tensor_len)
        out.append((b"\x0a" + varint(len(value_head) + tensor_len) + value_head + tensor_head, piece))
    return out


@dataclass
class CkptStart(FileStart):
    """A started ``.ckpt``: each tensor's record headers; ``written``: bytes in place so far (tensors are
    written in file order); ``crc``: running CRC-32 of them."""

    headers: dict[str, list[tuple[bytes, int]]] = field(default_factory=dict)
    written: int = 0
    crc: int = 0


class CkptLayout(FileLayout):
    """``mindspore.save_checkpoint``'s bytes, streamed; ``crc`` adds its CRC trailer."""

    name = "ckpt"
    needs_crc = False  # the zip CRCs of the torch layout; the ckpt trailer is computed here

    def __init__(self, crc: bool = False):
        self.crc = crc

    def start(self, f: BinaryIO, path: Path, specs: list[TensorSpec], metadata: dict[str, str] | None) -> CkptStart:
        offsets: dict[str, int] = {}
        headers: dict[str, list[tuple[bytes, int]]] = {}
        pos = 0
        for s in specs:
            if s.nbytes == 0:
                raise InputError(f"tensor {s.name!r} is empty; MindSpore checkpoints cannot hold it")
            offsets[s.name] = pos
            headers[s.name] = record_headers(s)
            pos += sum(len(h) + n for h, n in headers[s.name])
        return CkptStart(offsets, pos + (CRC_TRAILER_BYTES if self.crc else 0), {}, headers=headers)

    def write_tensor(self, f: BinaryIO, start: FileStart, name: str, data: memoryview) -> None:
        assert isinstance(start, CkptStart)
        if start.offsets[name] != start.written:
            raise InputError(f"tensor {name!r} arrived out of file order")  # the runner writes in plan order
        f.seek(start.written)
        done = 0
        for header, n in start.headers[name]:
            f.write(header)
            if self.crc:
                start.crc = zlib.crc32(header, start.crc)
            piece = data[done:done + n]
            for i in range(0, n, WRITE_SLICE):
                f.write(piece[i:i + WRITE_SLICE])
            if self.crc:
                start.crc = zlib.crc32(piece, start.crc)
            done += n
            start.written += len(header) + n

    def finish(self, f: BinaryIO, start: FileStart, crcs: dict[str, int]) -> None:
        assert isinstance(start, CkptStart)
        if self.crc:
            f.seek(start.written)
            f.write(CRC_MAGIC + start.crc.to_bytes(10, "big"))


# ------------------------------------------------------------------ reading


@dataclass(frozen=True)
class _Piece:
    record: int  # offset of the record's first byte
    data: int  # offset of its raw bytes
    length: int


class _Corrupt(Exception):
    def __init__(self, offset: int, what: str, truncated: bool = False):
        super().__init__(what)
        self.offset, self.what, self.truncated = offset, what, truncated


class _Cursor:
    """Small reads of protobuf fields from a buffered file, with the enclosing message's end as a limit."""

    def __init__(self, f: BinaryIO, end: int):
        self.f, self.end = f, end

    @property
    def pos(self) -> int:
        return self.f.tell()

    def varint(self, limit: int) -> int:
        start = self.pos
        n = shift = 0
        while True:
            if self.pos >= limit:
                raise _Corrupt(start, "a varint runs past the end of its message", truncated=limit == self.end)
            b = self.f.read(1)
            if not b:
                raise _Corrupt(start, "the file ends inside a varint", truncated=True)
            n |= (b[0] & 0x7F) << shift
            if not b[0] & 0x80:
                return n
            shift += 7
            if shift >= 70:
                raise _Corrupt(start, "bad varint (more than 10 bytes)")

    def length(self, limit: int) -> int:
        at = self.pos
        n = self.varint(limit)
        if self.pos + n > limit:
            where = "the file ends" if limit == self.end else "its message ends"
            raise _Corrupt(at, f"a field of {n} bytes runs past the end ({where} at byte {limit})",
                           truncated=limit == self.end)
        return n

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise _Corrupt(self.pos, "the file ends early", truncated=True)
        return data

    def skip(self, wire: int, limit: int) -> None:
        at = self.pos
        if wire == 0:
            self.varint(limit)
        elif wire == 1 or wire == 5:
            n = 8 if wire == 1 else 4
            if self.pos + n > limit:
                raise _Corrupt(at, "a fixed-size field runs past the end of its message")
            self.f.seek(n, os.SEEK_CUR)
        elif wire == 2:
            n = self.length(limit)
            self.f.seek(n, os.SEEK_CUR)
        else:
            raise _Corrupt(at, f"unknown protobuf wire type {wire}")


@dataclass
class _Record:
    tag: str
    dims: tuple[int, ...]
    type: str
    piece: _Piece


def _parse_record(c: _Cursor, start: int) -> _Record:
    """One ``Checkpoint`` message (``0a len Value``) starting at ``start``."""
    if c.read(1) != b"\x0a":
        raise _Corrupt(start, "not a checkpoint record (expected byte 0x0a)")
    body = c.length(c.end)
    end = c.pos + body
    tag: str | None = None
    tensor: tuple[tuple[int, ...], str, _Piece] | None = None
    while c.pos < end:
        at = c.pos
        key = c.varint(end)
        fno, wire = key >> 3, key & 7
        if fno == 1 and wire == 2:
            raw = c.read(c.length(end))
            try:
                tag = raw.decode()
            except UnicodeDecodeError:
                raise _Corrupt(at, "a tensor name is not UTF-8") from None
        elif fno == 2 and wire == 2:
            n = c.length(end)
            tensor = _parse_tensor(c, start, c.pos + n)
        elif fno == 3:
            raise _Corrupt(at, "a MapParameter (embedding hash table) record, which llmkit cannot convert")
        else:
            c.skip(wire, end)
    if tag is None or tensor is None:
        raise _Corrupt(start, "a record without a " + ("name" if tag is None else "tensor"))
    dims, type_name, piece = tensor
    return _Record(tag, dims, type_name, piece)


def _parse_tensor(c: _Cursor, record: int, end: int) -> tuple[tuple[int, ...], str, _Piece]:
    dims: list[int] = []
    type_name: str | None = None
    piece: _Piece | None = None
    while c.pos < end:
        at = c.pos
        key = c.varint(end)
        fno, wire = key >> 3, key & 7
        if fno == 1 and wire == 0:
            dims.append(c.varint(end))
        elif fno == 1 and wire == 2:  # packed dims (not what MindSpore writes, but valid protobuf)
            n = c.length(end)
            stop = c.pos + n
            while c.pos < stop:
                dims.append(c.varint(stop))
        elif fno == 2 and wire == 2:
            type_name = c.read(c.length(end)).decode(errors="replace")
        elif fno == 3 and wire == 2:
            n = c.length(end)
            piece = _Piece(record, c.pos, n)
            c.f.seek(n, os.SEEK_CUR)
        else:
            c.skip(wire, end)
    if type_name is None or piece is None:
        raise _Corrupt(record, "a tensor without a " + ("type" if type_name is None else "data field"))
    return (() if dims == [0] else tuple(dims)), type_name, piece


class CkptFile(TensorFile):
    """A MindSpore ``.ckpt`` read lazily: names, dtypes and shapes from the record headers (data skipped),
    one tensor's bytes read on :meth:`get`. ``crc``: the trailer's CRC-32, or None when there is none."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except IsADirectoryError:
            raise InputError("expected a .ckpt file, found a folder", path=path) from None
        try:
            self._open()
        except BaseException:
            os.close(self._fd)
            raise

    def _fail(self, offset: int, what: str, truncated: bool = False) -> InputError:
        hint = ("the file is truncated; download or convert it again" if truncated
                else "the file is damaged or not a MindSpore checkpoint; download or convert it again")
        return InputError(f"corrupt MindSpore checkpoint at byte {offset}: {what}", path=self.path, hint=hint)

    def _open(self) -> None:
        size = os.fstat(self._fd).st_size
        self.crc: int | None = None
        self.end = size
        if size >= CRC_TRAILER_BYTES:
            tail = os.pread(self._fd, CRC_TRAILER_BYTES, size - CRC_TRAILER_BYTES)
            if tail[:len(CRC_MAGIC)] == CRC_MAGIC:  # MindSpore's loader strips such a trailer whenever present
                self.crc = int.from_bytes(tail[len(CRC_MAGIC):], "big")
                self.end = size - CRC_TRAILER_BYTES
        if size == 0:
            raise InputError("empty file: not a MindSpore checkpoint", path=self.path,
                             hint="the file is truncated; download or convert it again")
        self.infos: dict[str, TensorInfo] = {}
        self._pieces: dict[str, list[_Piece]] = {}
        types: dict[str, str] = {}
        last: str | None = None
        with open(self._fd, "rb", buffering=1 << 16, closefd=False) as f:
            c = _Cursor(f, self.end)
            while f.tell() < self.end:
                start = f.tell()
                try:
                    r = _parse_record(c, start)
                except _Corrupt as e:
                    raise self._fail(e.offset, e.what, e.truncated) from None
                if r.tag == last:  # a split tensor: same tag, same dims and type, more bytes
                    info = self.infos[r.tag]
                    if r.dims != info.shape or r.type != types[r.tag]:
                        raise self._fail(start, f"split records of {r.tag!r} disagree: {types[r.tag]} "
                                                f"{list(info.shape)} then {r.type} {list(r.dims)}")
                    self._pieces[r.tag].append(r.piece)
                    continue
                if r.tag in self.infos:
                    raise self._fail(start, f"tensor {r.tag!r} appears twice (first at byte "
                                            f"{self._pieces[r.tag][0].record})")
                if r.type not in MS_TO_TORCH:
                    raise self._fail(start, f"tensor {r.tag!r} has tensor type {r.type!r}, which llmkit cannot "
                                            f"read (known: {', '.join(MS_TO_TORCH)})")
                self.infos[r.tag] = TensorInfo(r.tag, MS_TO_TORCH[r.type], r.dims, self.path)
                self._pieces[r.tag] = [r.piece]
                types[r.tag] = r.type
                last = r.tag
        for name, info in self.infos.items():
            have = sum(p.length for p in self._pieces[name])
            if have != info.nbytes:
                raise self._fail(self._pieces[name][0].record,
                                 f"tensor {name!r} ({types[name]} {list(info.shape)}) needs {info.nbytes} bytes "
                                 f"of data, its record(s) hold {have}")
        self._crc_pos = 0  # the running CRC covers bytes [0, _crc_pos)
        self._crc_sum = 0

    def records(self, name: str) -> int:
        """How many records hold ``name`` (more than one: split at 512 MiB)."""
        return len(self._pieces[name])

    def _pread_into(self, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:done + READ_CHUNK]], offset + done)
            if not got:
                raise InputError(f"file shrank while reading (at byte {offset + done})", path=self.path,
                                 hint="do not change the file while llmkit reads it")
            done += got

    def get(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        tensor = torch.empty(info.shape, dtype=info.dtype)
        view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy()) if info.nbytes else memoryview(b"")
        done = 0
        for p in self._pieces[name]:
            part = view[done:done + p.length]
            self._pread_into(part, p.data)
            if self.crc is not None and p.record == self._crc_pos:
                self._crc_sum = zlib.crc32(os.pread(self._fd, p.data - p.record, p.record), self._crc_sum)
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
            data = os.pread(self._fd, min(chunk, self.end - self._crc_pos), self._crc_pos)
            if not data:
                raise InputError("file shrank while reading", path=self.path)
            self._crc_sum = zlib.crc32(data, self._crc_sum)
            self._crc_pos += len(data)
        self._judge_crc()
        return True

    def _judge_crc(self) -> None:
        if self._crc_sum != self.crc:
            raise InputError(f"CRC mismatch: the trailer at byte {self.end} says {self.crc:#010x}, the content "
                             f"gives {self._crc_sum:#010x}", path=self.path,
                             hint="the file is damaged; download or convert it again")

    def prefetch(self, name: str) -> None:
        pieces = self._pieces.get(name)
        if pieces and hasattr(os, "posix_fadvise"):
            first, last = pieces[0], pieces[-1]
            os.posix_fadvise(self._fd, first.record, last.data + last.length - first.record, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def ckpt_size(specs: list[TensorSpec], crc: bool = False) -> int:
    """Bytes of the ``.ckpt`` holding ``specs`` (records plus the optional trailer)."""
    return sum(len(h) + n for s in specs for h, n in record_headers(s)) + (CRC_TRAILER_BYTES if crc else 0)


def split_count(nbytes: int) -> int:
    """Records a tensor of ``nbytes`` becomes."""
    return math.ceil(nbytes / SLICE_BYTES)
