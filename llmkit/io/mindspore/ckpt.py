"""MindSpore ``.ckpt``: the wire format and the streaming writer layout (SPEC.md section 5; the reader is
``llmkit.io.mindspore.reader``).

A ``.ckpt`` is a concatenation of serialized ``Checkpoint`` messages of one ``Value`` each::

    0a <varint len> { 0a <len> tag | 12 <len> { (08 <varint dim>)* | 12 <len> type | 1a <len> raw } }

- :class:`CkptLayout` (sink format ``ckpt``) writes exactly the bytes ``mindspore.save_checkpoint``
  writes for the same named tensors in the same order: tensors over 512 MiB (:data:`SLICE_BYTES`) as
  several records with the same tag and full dims, raw bytes cut every 512 MiB; empty tensors are not
  written (MindSpore drops them); with ``crc`` the 17-byte trailer ``b"crc_num"`` + CRC-32 of all
  preceding bytes as 10 big-endian bytes. Every record header is known from the specs, so each tensor
  goes straight to its place: memory is one tensor, and neither MindSpore nor protobuf is imported.
- the reader is ``llmkit.io.mindspore.reader.CkptFile``; encryption is ``llmkit.io.mindspore.crypto``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from llmkit.errors import InputError
from llmkit.io.core.layout import WRITE_SLICE, FileLayout, FileStart
from llmkit.io.core.spec import TensorSpec

SLICE_BYTES = 512 * 1024 * 1024  # MindSpore's SLICE_SIZE (512 * 1024 KiB): larger tensors are split


CRC_MAGIC = b"crc_num"


CRC_TRAILER_BYTES = len(CRC_MAGIC) + 10


# MindSpore's tensor_type strings (mindspore.train.serialization) <-> torch.
MS_TO_TORCH: dict[str, torch.dtype] = {
    "Float16": torch.float16,
    "Float32": torch.float32,
    "Float64": torch.float64,
    "BFloat16": torch.bfloat16,
    "Int8": torch.int8,
    "UInt8": torch.uint8,
    "Int16": torch.int16,
    "UInt16": torch.uint16,
    "Int32": torch.int32,
    "UInt32": torch.uint32,
    "Int64": torch.int64,
    "UInt64": torch.uint64,
    "Bool": torch.bool,
}


TORCH_TO_MS: dict[torch.dtype, str] = {v: k for k, v in MS_TO_TORCH.items()}


def ms_type(dtype: torch.dtype) -> str:
    """MindSpore's ``tensor_type`` string for a torch dtype (``torch.bfloat16`` -> ``BFloat16``)."""
    try:
        return TORCH_TO_MS[dtype]
    except KeyError:
        raise InputError(f"dtype {dtype} cannot be stored in a MindSpore checkpoint") from None


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
    """A started ``.ckpt``: each tensor's record headers; ``written``: plaintext bytes in place so far
    (tensors are written in file order); ``crc``: running CRC-32 of them; ``encryptor``: the
    ``BlockEncryptor`` the plaintext goes through when the file is encrypted."""

    headers: dict[str, list[tuple[bytes, int]]] = field(default_factory=dict)
    written: int = 0
    crc: int = 0
    encryptor: Any = None


class CkptLayout(FileLayout):
    """``mindspore.save_checkpoint``'s bytes, streamed; ``crc`` adds its CRC trailer; ``key`` (a
    ``ckpt_crypto.CkptKey``) encrypts in ``mode`` as ``save_checkpoint(enc_key=, enc_mode=)`` does
    (``ivs``: the IV of each block, for tests; random by default)."""

    name = "ckpt"
    needs_crc = False  # the zip CRCs of the torch layout; the ckpt trailer is computed here

    def __init__(self, crc: bool = False, key: Any = None, mode: str = "AES-GCM", ivs: Any = None):
        self.crc, self.key, self.mode, self.ivs = crc, key, mode, ivs

    def plain_size(self, specs: list[TensorSpec]) -> int:
        return sum(len(h) + n for s in specs for h, n in record_headers(s)) + (CRC_TRAILER_BYTES if self.crc else 0)

    def file_size(self, specs: list[TensorSpec]) -> int:
        """Bytes on disk: the records (and trailer), or their encrypted blocks."""
        from llmkit.io.mindspore.crypto import encrypted_size

        plain = self.plain_size(specs)
        return plain if self.key is None else encrypted_size(plain, self.mode)

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
        start = CkptStart(offsets, self.file_size(specs), {}, headers=headers)
        if self.key is not None:
            from llmkit.io.mindspore.crypto import BlockEncryptor

            start.encryptor = BlockEncryptor(f, self.key, self.mode, self.plain_size(specs), self.ivs)
        return start

    def write_tensor(self, f: BinaryIO, start: FileStart, name: str, data: memoryview) -> None:
        assert isinstance(start, CkptStart)
        if start.offsets[name] != start.written:
            raise InputError(f"tensor {name!r} arrived out of file order")  # the runner writes in plan order
        out: Any = start.encryptor
        if out is None:
            f.seek(start.written)
            out = f
        done = 0
        for header, n in start.headers[name]:
            out.write(header)
            if self.crc:
                start.crc = zlib.crc32(header, start.crc)
            piece = data[done : done + n]
            for i in range(0, n, WRITE_SLICE):
                out.write(piece[i : i + WRITE_SLICE])
            if self.crc:
                start.crc = zlib.crc32(piece, start.crc)
            done += n
            start.written += len(header) + n

    def finish(self, f: BinaryIO, start: FileStart, crcs: dict[str, int]) -> None:
        assert isinstance(start, CkptStart)
        trailer = CRC_MAGIC + start.crc.to_bytes(10, "big") if self.crc else b""
        if start.encryptor is not None:  # the trailer is encrypted with the records, where load_checkpoint
            start.encryptor.write(trailer)  # looks for it once it has decrypted the file
            start.encryptor.close()
        elif trailer:
            f.seek(start.written)
            f.write(trailer)
