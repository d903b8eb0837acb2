"""A safetensors stream on stdin as a tensor source (``-`` as a job's input), read front to back once.

The stream is a safetensors file read as it arrives (``llmkit ... -o -`` writes one,
``llmkit.io.hf.stream_sink``): the 8-byte header length, the header JSON (checked field by field as a file's
is, ``st_header``), then the tensors in data order. Beyond the tensors, ``__metadata__`` carries the
output's side files (``llmkit.file:<name>``: base64 of its bytes), which are written into a private
temporary folder that is the source's ``folder`` (so ``config.json``, the tokenizer and aux copies work as
for a folder; removed on close), and the order the producer planned its tensors in (``llmkit.order``: a
JSON list of names), which is the order :meth:`TensorSource.keys` lists them in, so a job plans exactly
what it plans for the same output written to a folder. The runner reads them in stream order
(``stream_position``) and lays its output out in its own order.

Reads: :meth:`StreamFile.get` reads and discards forward to the tensor, then reads exactly its bytes into a
fresh tensor (``readinto``, no extra copy); a tensor already passed is an error, except the last one read
(kept). A stream that ends early names how far it got. Nothing is ever unpickled.
"""

from __future__ import annotations

import base64
import binascii
import json
import shutil
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import torch

from llmkit.errors import InputError
from llmkit.io.core.dtypes import ST_TO_TORCH
from llmkit.io.core.source import STDIN, TensorFile, TensorSource
from llmkit.io.core.spec import TensorInfo
from llmkit.io.hf.adapter_config import ADAPTER_CONFIG, AdapterInfo
from llmkit.io.hf.st_header import MAX_HEADER_BYTES, parse_header

FILE_KEY = "llmkit.file:"  # __metadata__ key prefix of a side file (value: base64 of its bytes)
ORDER_KEY = "llmkit.order"  # __metadata__ key: the producer's planned tensor order (a JSON list of names)
SKIP_CHUNK = 1 << 20  # bytes per read while skipping tensors a job does not need
_PIPE_HINT = "pipe in a stream that llmkit ... -o - writes, e.g. llmkit recover ... -o - | llmkit to-ckpt - -o x.ckpt"


def _readinto(stream: BinaryIO, view: memoryview) -> int:
    """One read into ``view``: fewer bytes from a pipe, 0 at its end."""
    # sys.stdin.buffer (a BufferedReader) and every test stream have readinto; BinaryIO does not declare it
    return stream.readinto(view) or 0  # type: ignore[attr-defined]


def stream_ended(got: int, size: int, part: str = "") -> InputError:
    """The one error of a stream that stopped before its end (``part``: of what, when not the whole)."""
    return InputError(
        f"the stream on stdin ended after {got} of {size} bytes{part} (the command writing it failed or was killed)"
    )


class StreamFile(TensorFile):
    """The tensors of a stream, read front to back; ``position`` counts the bytes consumed so far."""

    def __init__(self, stream: BinaryIO, infos: dict[str, TensorInfo], spans: dict[str, tuple[int, int]], start: int):
        self.path = Path(STDIN)
        self.infos = infos
        self._stream = stream
        self._spans = spans  # name -> (begin, end) in stream bytes
        self._index = {n: i for i, n in enumerate(infos)}  # name -> place in the stream
        self.size = max((end for _, end in spans.values()), default=start)
        self.position = start
        self._last: tuple[str, torch.Tensor] | None = None  # the tensor read last, for a second read of it
        self._skip: memoryview | None = None  # the buffer bytes nobody needs are read into
        self.where = "the stream on stdin"  # what messages call it (a remote file read front to back: its URL)

    def index(self, name: str) -> int | None:
        return self._index.get(name)

    def _fill(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            got = _readinto(self._stream, view[done:])
            if not got:
                raise stream_ended(self.position + done, self.size)
            done += got
        self.position += done

    def _skip_to(self, offset: int) -> None:
        while self.position < offset:
            if self._skip is None:
                self._skip = memoryview(bytearray(SKIP_CHUNK))
            self._fill(self._skip[: min(SKIP_CHUNK, offset - self.position)])

    def get(self, name: str) -> torch.Tensor:
        if self._last is not None and self._last[0] == name:
            return self._last[1]
        begin, end = self._spans[name]
        if begin < self.position:
            raise InputError(
                f"tensor {name!r} was needed again after {self.where} had passed it",
                hint="write the input to a file first (-o FOLDER) and pass that folder instead",
            )
        self._skip_to(begin)
        info = self.infos[name]
        tensor = torch.empty(info.shape, dtype=info.dtype)
        if end > begin:
            self._fill(tensor.reshape(-1).view(torch.uint8).numpy().data)
        self._last = (name, tensor)
        return tensor

    def read_to_end(self) -> None:
        """Read what no job needed and check the stream ends where its header says."""
        self._skip_to(self.size)
        if self._stream.read(1):
            raise InputError(
                f"{self.where} goes on after the {self.size} bytes its header describes",
                hint="pipe in one stream, as llmkit ... -o - writes it",
            )

    def close(self) -> None:
        self._last = self._skip = None


class StreamSource(TensorSource):
    """A safetensors stream as a source (``path`` is ``-``, ``layout`` ``safetensors``): tensors listed in the
    producer's planned order, ``stream_position`` their place in the stream; side files in ``folder``."""

    stream: StreamFile

    def __init__(self, stream: StreamFile, order: list[str], folder: Path):
        super().__init__(
            path=Path(STDIN),
            layout="safetensors",
            files=[stream],
            weight_map=dict.fromkeys(order, stream),
            folder=folder,
            adapter=AdapterInfo.read(folder / ADAPTER_CONFIG) if (folder / ADAPTER_CONFIG).is_file() else None,
        )
        self.stream = stream

    def stream_position(self, name: str) -> int | None:
        return self.stream.index(name)

    def read_to_end(self) -> None:
        self.stream.read_to_end()

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.read_order():
            yield name, self.get(name)

    def close(self) -> None:
        super().close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _read_exact(stream: BinaryIO, n: int, got: int, size: int) -> bytes:
    """``n`` bytes of the header (``got`` bytes were read before; ``size``: the header's length, as far as known)."""
    data = bytearray(n)
    view, done = memoryview(data), 0
    while done < n:
        k = _readinto(stream, view[done:])
        if not k:
            raise stream_ended(got + done, size, " of its header")
        done += k
    return bytes(data)


def _side_files(metadata: dict[str, str], folder: Path) -> None:
    """Write the ``llmkit.file:*`` entries into ``folder``; a name that is not a plain file name is refused."""
    for key, value in metadata.items():
        if not key.startswith(FILE_KEY):
            continue
        name = key[len(FILE_KEY) :]
        if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
            raise InputError(f"the stream on stdin carries a side file named {name!r}", hint=_PIPE_HINT)
        try:
            data = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise InputError(f"the stream's side file {name} is not base64", hint=_PIPE_HINT) from None
        with open(folder / name, "xb") as f:
            f.write(data)


def _planned_order(metadata: dict[str, str], names: list[str]) -> list[str]:
    """The producer's order (``llmkit.order``), checked to list exactly the stream's tensors; else stream order."""
    raw = metadata.get(ORDER_KEY)
    if raw is None:
        return names
    try:
        order = json.loads(raw)
    except ValueError:
        order = None
    if not isinstance(order, list) or sorted(map(str, order)) != sorted(names) or len(set(order)) != len(order):
        raise InputError(f"the stream's {ORDER_KEY} does not list its tensors once each", hint=_PIPE_HINT)
    return order


def _header(stream: BinaryIO) -> tuple[bytes, int]:
    head = _read_exact(stream, 8, 0, 8)
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES:
        raise InputError(
            f"stdin is not a safetensors stream (its first 8 bytes declare a {n}-byte header)", hint=_PIPE_HINT
        )
    return _read_exact(stream, n, 8, 8 + n), 8 + n


def open_stream(stream: BinaryIO) -> StreamSource:
    """The source of the safetensors stream ``stream`` (header and side files read now, no tensor data)."""
    raw, start = _header(stream)
    try:
        entries, metadata = parse_header(raw, Path(STDIN), None)
    except InputError as e:
        raise InputError(f"stdin: {e.message}", hint=_PIPE_HINT) from None
    infos = {e.name: TensorInfo(e.name, ST_TO_TORCH[e.dtype], e.shape, Path(STDIN)) for e in entries}
    spans = {e.name: (start + e.begin, start + e.end) for e in entries}
    order = _planned_order(metadata, list(infos))
    folder = Path(tempfile.mkdtemp(prefix="llmkit-stdin-"))
    try:
        _side_files(metadata, folder)
        return StreamSource(StreamFile(stream, infos, spans, start), order, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def open_stdin_stream() -> StreamSource:
    """``-`` as an input: the safetensors stream on stdin (a terminal is refused: nothing is piped in)."""
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        raise InputError(
            "- reads a safetensors stream on stdin, but stdin is a terminal",
            hint="pipe a stream in, e.g. llmkit recover ... -o - | llmkit to-ckpt - -o x.ckpt",
        )
    return open_stream(stdin.buffer)
