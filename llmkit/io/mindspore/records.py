"""The record parser of a MindSpore ``.ckpt`` (the protobuf wire format, read without protobuf): a cursor over
the plaintext that checks every varint and length against what is left, and one ``Checkpoint`` record's
tag and tensor header (dims, type, where its data lies). Every defect is a ``Corrupt`` at its byte offset,
which the reader (``llmkit.io.mindspore.reader``) turns into an ``InputError`` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Piece:
    record: int  # offset of the record's first byte
    data: int  # offset of its raw bytes
    length: int


class Corrupt(Exception):
    def __init__(self, offset: int, what: str, truncated: bool = False):
        super().__init__(what)
        self.offset, self.what, self.truncated = offset, what, truncated


class Stream(Protocol):
    """What the cursor reads from: a buffered, seekable view of the plaintext (``reader._Buffered``)."""

    def tell(self) -> int: ...
    def seek(self, n: int, whence: int = os.SEEK_SET) -> None: ...
    def read(self, n: int) -> bytes: ...


class Cursor:
    """Small reads of protobuf fields from a buffered file, with the enclosing message's end as a limit."""

    def __init__(self, f: Stream, end: int):
        self.f, self.end = f, end

    @property
    def pos(self) -> int:
        return self.f.tell()

    def varint(self, limit: int) -> int:
        start = self.pos
        n = shift = 0
        while True:
            if self.pos >= limit:
                raise Corrupt(start, "a varint runs past the end of its message", truncated=limit == self.end)
            b = self.f.read(1)
            if not b:
                raise Corrupt(start, "the file ends inside a varint", truncated=True)
            n |= (b[0] & 0x7F) << shift
            if not b[0] & 0x80:
                return n
            shift += 7
            if shift >= 70:
                raise Corrupt(start, "bad varint (more than 10 bytes)")

    def length(self, limit: int) -> int:
        at = self.pos
        n = self.varint(limit)
        if self.pos + n > limit:
            where = "the file ends" if limit == self.end else "its message ends"
            raise Corrupt(
                at, f"a field of {n} bytes runs past the end ({where} at byte {limit})", truncated=limit == self.end
            )
        return n

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise Corrupt(self.pos, "the file ends early", truncated=True)
        return data

    def skip(self, wire: int, limit: int) -> None:
        at = self.pos
        if wire == 0:
            self.varint(limit)
        elif wire == 1 or wire == 5:
            n = 8 if wire == 1 else 4
            if self.pos + n > limit:
                raise Corrupt(at, "a fixed-size field runs past the end of its message")
            self.f.seek(n, os.SEEK_CUR)
        elif wire == 2:
            n = self.length(limit)
            self.f.seek(n, os.SEEK_CUR)
        else:
            raise Corrupt(at, f"unknown protobuf wire type {wire}")


@dataclass
class Record:
    tag: str
    dims: tuple[int, ...]
    type: str
    piece: Piece


def parse_record(c: Cursor, start: int) -> Record:
    """One ``Checkpoint`` message (``0a len Value``) starting at ``start``."""
    if c.read(1) != b"\x0a":
        raise Corrupt(start, "not a checkpoint record (expected byte 0x0a)")
    body = c.length(c.end)
    end = c.pos + body
    tag: str | None = None
    tensor: tuple[tuple[int, ...], str, Piece] | None = None
    while c.pos < end:
        at = c.pos
        key = c.varint(end)
        fno, wire = key >> 3, key & 7
        if fno == 1 and wire == 2:
            raw = c.read(c.length(end))
            try:
                tag = raw.decode()
            except UnicodeDecodeError:
                raise Corrupt(at, "a tensor name is not UTF-8") from None
        elif fno == 2 and wire == 2:
            n = c.length(end)
            tensor = parse_tensor(c, start, c.pos + n)
        elif fno == 3:
            raise Corrupt(at, "a MapParameter (embedding hash table) record, which llmkit cannot convert")
        else:
            c.skip(wire, end)
    if tag is None or tensor is None:
        raise Corrupt(start, "a record without a " + ("name" if tag is None else "tensor"))
    dims, type_name, piece = tensor
    return Record(tag, dims, type_name, piece)


def parse_tensor(c: Cursor, record: int, end: int) -> tuple[tuple[int, ...], str, Piece]:
    dims: list[int] = []
    type_name: str | None = None
    piece: Piece | None = None
    while c.pos < end:
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
            piece = Piece(record, c.pos, n)
            c.f.seek(n, os.SEEK_CUR)
        else:
            c.skip(wire, end)
    if type_name is None or piece is None:
        raise Corrupt(record, "a tensor without a " + ("type" if type_name is None else "data field"))
    return (() if dims == [0] else tuple(dims)), type_name, piece
