"""What a byte stream is, and whether it is whole: JSON, safetensors, torch zip, SentencePiece model.

Used where bytes are produced without a loader behind them (decrypt): garbage from a wrong key is
caught in the first block, before anything is written, and a file that cannot be complete (a
truncated download) is caught at the end, before the rename. :class:`ContentCheck` is fed the
bytes in order and holds at most a bounded head (headers, small files) and a 66 KiB tail.

What "whole" means, per kind:

- safetensors: the header (8-byte length + JSON) gives every tensor's data offsets, so the file
  size is known as soon as the header is read: ``8 + header length + max(end offset)``.
- torch zip (``.bin``/``.pth``/``.pt``): the last bytes are the end-of-central-directory record
  (zip64 when large) and the central directory ends exactly where that record starts.
- JSON: the whole text parses (files up to 64 MiB).
- SentencePiece ``tokenizer.model``: every top-level protobuf field of ``ModelProto`` is complete
  and ``normalizer_spec`` (field 3, written after the pieces and ``trainer_spec``) is present.

Torch's legacy (pre-1.6) pickle format has no end marker; it is recognised but not judged whole.
"""

from __future__ import annotations

import codecs
import json
import struct

import numpy as np

JSON, SAFETENSORS, TORCH_ZIP, SENTENCEPIECE = "JSON", "safetensors", "torch zip", "SentencePiece model"


KINDS = (JSON, SAFETENSORS, TORCH_ZIP, SENTENCEPIECE)


TORCH_LEGACY_MAGIC = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")  # pickle of torch's magic number


ZIP_LOCAL = b"PK\x03\x04"


_ZIP_EOCD = b"PK\x05\x06"


_ZIP64_LOCATOR = b"PK\x06\x07"


_ZIP64_EOCD = b"PK\x06\x06"


_TAIL = 65_535 + 22 + 20 + 56  # max EOCD comment + EOCD + zip64 locator + zip64 EOCD record


_HEAD_LIMIT = 64 * 2**20  # JSON / SentencePiece files up to this size are judged whole


_SAFETENSORS_HEADER_LIMIT = 100_000_000  # safetensors' own limit


class ContentError(Exception):
    """The bytes are not (``incomplete=False``) or not yet all of (``incomplete=True``) a ``kind`` file."""

    def __init__(self, kind: str, detail: str, *, incomplete: bool):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.incomplete = incomplete


def kind_for_name(name: str) -> str | None:
    """The content kind a file name promises (``None``: the name says nothing)."""
    lower = name.lower()
    if lower.endswith(".json"):
        return JSON
    if lower.endswith((".bin", ".pth", ".pt")):
        return TORCH_ZIP
    if lower.endswith(".safetensors"):
        return SAFETENSORS
    if lower == "tokenizer.model" or lower.endswith("/tokenizer.model"):
        return SENTENCEPIECE
    return None


def sniff_kind(head: bytes) -> str | None:
    """The kind the first bytes of a stream look like (``None``: none of :data:`KINDS`)."""
    if head.startswith((ZIP_LOCAL, TORCH_LEGACY_MAGIC)):
        return TORCH_ZIP
    if _safetensors_head_ok(head):
        return SAFETENSORS
    if looks_like_sentencepiece(head):
        return SENTENCEPIECE
    text = head[:4096].decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")
    if text[:1] in ("{", "[") and not any(b < 0x20 and b not in (9, 10, 13) for b in head[:4096]):
        return JSON
    return None


def _safetensors_head_ok(head: bytes) -> bool:
    n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    return 0 < n < _SAFETENSORS_HEADER_LIMIT and head[8:9] == b"{"


def _varint(buf: bytes | memoryview, i: int) -> tuple[int, int] | None:
    """(value, next index) of the protobuf varint at ``i``; ``None`` if it runs off the end."""
    value = shift = 0
    while i < len(buf) and shift < 64:
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7
    return None


def looks_like_sentencepiece(head: bytes) -> bool:
    """ModelProto starts with ``pieces`` (field 1, length-delimited) whose first field is the piece string."""
    if not head.startswith(b"\x0a"):
        return False
    outer = _varint(head, 1)
    if outer is None or outer[0] == 0:
        return False
    i = outer[1]
    if i >= len(head) or head[i] != 0x0A:
        return False
    inner = _varint(head, i + 1)
    return inner is not None and 0 < inner[0] <= outer[0]


class ContentCheck:
    """Feed a file's bytes in order; raises :class:`ContentError` as soon as they cannot be a ``kind`` file.

    ``kind=None`` (an unnamed stream, e.g. stdin) takes the kind from the first bytes, and bytes
    that look like no known kind are refused. ``total`` (bytes), when known up front, lets a
    safetensors size mismatch fail on the first block.
    Memory: the safetensors header, JSON/SentencePiece files up to 64 MiB, and a 66 KiB tail.
    """

    def __init__(self, kind: str | None, total: int | None = None):
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown content kind {kind!r}")
        self.kind = kind
        self.total = total
        self.seen = 0
        self.expected_size: int | None = None  # safetensors: known once the header is in
        self.legacy = False  # torch's pre-zip pickle format
        self._head = bytearray()  # safetensors header / whole JSON or SentencePiece file
        self._tail = bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict") if kind == JSON else None
        self._text: list[str] = []
        self._json_started = False  # a non-blank character has been seen

    @classmethod
    def for_name(cls, name: str, total: int | None = None) -> ContentCheck | None:
        kind = kind_for_name(name)
        return cls(kind, total) if kind is not None else None

    def _bad(self, detail: str) -> ContentError:
        assert self.kind is not None  # the first bytes fed set it (or were refused)
        return ContentError(self.kind, detail, incomplete=False)

    def _short(self, detail: str) -> ContentError:
        assert self.kind is not None  # the first bytes fed set it (or were refused)
        return ContentError(self.kind, detail, incomplete=True)

    def feed(self, data: np.ndarray | bytes | bytearray | memoryview) -> None:
        view = memoryview(data.data if isinstance(data, np.ndarray) else data).cast("B")
        first = self.seen == 0 and len(view) > 0
        self.seen += len(view)
        if self.kind is None and first:  # an unnamed stream: the first bytes say what it must be
            kind = sniff_kind(bytes(view[:4096]))
            if kind is None:
                raise ContentError(
                    "model",
                    f"starts with {bytes(view[:8]).hex()}, which is none of {', '.join(KINDS)}",
                    incomplete=False,
                )
            self.kind = kind
            self._decoder = codecs.getincrementaldecoder("utf-8")("strict") if kind == JSON else None
        if self.kind == JSON:
            self._feed_json(view, first)
        elif self.kind == SAFETENSORS:
            self._feed_safetensors(view)
        elif self.kind == TORCH_ZIP:
            if first:
                head = bytes(view[: len(TORCH_LEGACY_MAGIC)])
                self.legacy = head.startswith(TORCH_LEGACY_MAGIC)
                if not (head.startswith(ZIP_LOCAL) or self.legacy):
                    raise self._bad(f"starts with {head[:4].hex()}, not a zip header 504b0304")
            self._keep_tail(view)
        else:
            if first and not looks_like_sentencepiece(bytes(view[:64])):
                raise self._bad(f"starts with {bytes(view[:4]).hex()}, not a 'pieces' protobuf field")
            if len(self._head) <= _HEAD_LIMIT:
                self._head += view

    def _keep_tail(self, view: memoryview) -> None:
        if len(view) >= _TAIL:
            self._tail = bytearray(view[-_TAIL:])
        else:
            self._tail += view
            del self._tail[:-_TAIL]

    def _feed_json(self, view: memoryview, first: bool) -> None:
        data = np.frombuffer(view, dtype=np.uint8)
        # Raw bytes < 0x20 other than tab, LF, CR are invalid anywhere in JSON (even inside strings).
        control = (data < 0x20) & (data != 9) & (data != 10) & (data != 13)
        if control.any():
            raise self._bad(f"control byte 0x{int(data[int(np.argmax(control))]):02x}")
        assert self._decoder is not None
        try:
            text = self._decoder.decode(bytes(view))
        except UnicodeDecodeError:
            raise self._bad("invalid UTF-8") from None
        if not self._json_started:
            stripped = text.lstrip("\ufeff \t\r\n")
            if stripped:
                self._json_started = True
                if stripped[0] not in "{[":
                    raise self._bad(f"starts with {stripped[:1]!r}, not '{{' or '['")
        if self.seen <= _HEAD_LIMIT:
            self._text.append(text)

    def _feed_safetensors(self, view: memoryview) -> None:
        if self.expected_size is not None:
            if self.seen > self.expected_size:
                raise self._bad(f"{self.seen:,} bytes or more, but its header describes {self.expected_size:,}")
            return
        self._head += view
        if len(self._head) < 9:
            return
        n = int.from_bytes(self._head[:8], "little")
        if not _safetensors_head_ok(bytes(self._head[:9])):
            raise self._bad("no safetensors JSON header at the start")
        if len(self._head) < 8 + n:
            return
        try:
            header = json.loads(bytes(self._head[8 : 8 + n]))
            ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise self._bad(f"the header does not parse ({e})") from None
        self.expected_size = 8 + n + max(ends, default=0)
        self._head = bytearray()
        if self.total is not None and self.total != self.expected_size:
            raise self._size_error(self.total)
        if self.seen > self.expected_size:
            raise self._size_error(self.seen)

    def _size_error(self, size: int) -> ContentError:
        assert self.expected_size is not None
        if size < self.expected_size:
            return self._short(f"{size:,} bytes, but its header describes {self.expected_size:,}: truncated")
        return self._bad(f"{size:,} bytes, but its header describes {self.expected_size:,}")

    def finish(self) -> None:
        """End-of-file checks: raises :class:`ContentError` (``incomplete=True``) for a file that is not whole."""
        if self.seen == 0:
            return
        if self.kind == JSON:
            self._finish_json()
        elif self.kind == SAFETENSORS:
            if self.expected_size is None:
                raise self._short(f"only {self.seen:,} bytes: the header is cut off (truncated)")
            if self.seen != self.expected_size:
                raise self._size_error(self.seen)
        elif self.kind == TORCH_ZIP:
            if not self.legacy:
                self._finish_zip()
        else:
            self._finish_sentencepiece()

    def _finish_json(self) -> None:
        assert self._decoder is not None
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise self._short("ends inside a UTF-8 character (truncated)") from None
        if self.seen <= _HEAD_LIMIT:
            try:
                json.loads("".join(self._text))
            except ValueError as e:
                raise self._short(f"does not parse ({e}): truncated or damaged") from None
        self._text = []

    def _finish_zip(self) -> None:
        tail = bytes(self._tail)
        start = self.seen - len(tail)  # file offset of tail[0]
        pos = tail.rfind(_ZIP_EOCD, 0, max(0, len(tail) - 18))  # the record is 22 bytes + comment
        while pos >= 0:
            comment = struct.unpack_from("<H", tail, pos + 20)[0]
            if pos + 22 + comment == len(tail):
                break
            pos = tail.rfind(_ZIP_EOCD, 0, pos)
        if pos < 0:
            raise self._short("no zip end-of-central-directory record at the end: truncated")
        cd_size, cd_offset = struct.unpack_from("<II", tail, pos + 12)
        end_of_cd = start + pos
        saturated = 0xFFFFFFFF in (cd_size, cd_offset) or struct.unpack_from("<H", tail, pos + 10)[0] == 0xFFFF
        loc = pos - 20
        if loc >= 0 and tail[loc : loc + 4] == _ZIP64_LOCATOR:  # torch writes zip64 records for any size
            end_of_cd = struct.unpack_from("<Q", tail, loc + 8)[0]
            rec = end_of_cd - start
            if rec < 0 or tail[rec : rec + 4] != _ZIP64_EOCD:
                raise self._short("the zip64 end record is not where its locator says: truncated or damaged")
            cd_size, cd_offset = struct.unpack_from("<QQ", tail, rec + 40)
        elif saturated:
            raise self._short("a zip64 archive without its zip64 locator: truncated or damaged")
        if cd_offset + cd_size != end_of_cd:
            raise self._short(
                f"the zip central directory ({cd_offset:,}+{cd_size:,}) does not end at its "
                f"end record ({end_of_cd:,}): truncated or damaged"
            )

    def _finish_sentencepiece(self) -> None:
        if self.seen > _HEAD_LIMIT:
            return
        buf = memoryview(self._head)
        i, fields = 0, set()
        while i < len(buf):
            tag = _varint(buf, i)
            if tag is None:
                raise self._short(f"a protobuf field tag runs off the end at byte {i:,}: truncated")
            field, wire = tag[0] >> 3, tag[0] & 7
            i = tag[1]
            if wire == 0:
                v = _varint(buf, i)
                end = v[1] if v is not None else len(buf) + 1
            elif wire == 1:
                end = i + 8
            elif wire == 2:
                v = _varint(buf, i)
                end = v[1] + v[0] if v is not None else len(buf) + 1
            elif wire == 5:
                end = i + 4
            else:
                raise self._bad(f"protobuf wire type {wire} at byte {i:,}")
            if end > len(buf):
                raise self._short(f"field {field} runs past the end ({len(buf):,} bytes): truncated")
            fields.add(field)
            i = end
        if 3 not in fields:
            raise self._short("no normalizer_spec (the model's last part): truncated")
