"""How one weight file is laid out on disk, for the streaming writer (``llmkit.io.sinks``).

The writer knows every tensor of a file up front, so a layout can fix the header and every
tensor's byte offset before the first tensor arrives; each tensor is then written straight to its
place and dropped. A layout is the hook a new file format implements:

- :meth:`FileLayout.start`: write the header / skeleton of a file whose tensors are ``specs``;
  return each tensor's data offset and the final file size;
- :meth:`FileLayout.write_tensor`: put one tensor's bytes in place (a format that splits large
  tensors into several records, as MindSpore ``.ckpt`` does over 512 MiB, overrides this);
- :meth:`FileLayout.finish`: patch what is known only at the end (zip CRCs, a CRC trailer).

Registered layouts: ``safetensors`` (bytes identical to ``safetensors.torch.save_file``) and
``bin`` (a torch zip laid out by ``torch.save`` under ``skip_data``; also Meta ``.pth``).
"""

from __future__ import annotations

import errno
import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from llmkit.errors import InputError
from llmkit.io.dtypes import itemsize, st_code

WRITE_SLICE = 1 << 20  # bytes per write() call: one huge write() is several times slower


@dataclass(frozen=True)
class TensorSpec:
    """An output tensor as planned: name, dtype, shape."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's raw little-endian C-order bytes, without a copy when it is already contiguous."""
    t = t.detach().cpu().contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy())


@dataclass
class FileStart:
    """Where a started file's tensors go: ``offsets[name]`` (bytes), the final ``size``, and per-format
    bookkeeping (``records``: torch zip record names)."""

    offsets: dict[str, int]
    size: int
    records: dict[str, str]


class FileLayout:
    """The hook every weight-file format implements (see the module docstring)."""

    name = ""

    def start(self, f: BinaryIO, path: Path, specs: list[TensorSpec], metadata: dict[str, str] | None) -> FileStart:
        raise NotImplementedError

    def write_tensor(self, f: BinaryIO, start: FileStart, name: str, data: memoryview) -> None:
        f.seek(start.offsets[name])
        for i in range(0, len(data), WRITE_SLICE):
            f.write(data[i : i + WRITE_SLICE])

    def finish(self, f: BinaryIO, start: FileStart, crcs: dict[str, int]) -> None:
        """Patch what is known only when every tensor is in (``crcs``: tensor name -> CRC-32)."""


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


class TorchZipLayout(FileLayout):
    """``torch.save`` lays out the zip with no data (``skip_data``); tensors fill their ``data/N`` records
    and the CRC-32s are patched at the end, so ``unzip -t`` and ``torch.load`` both accept the file."""

    name = "bin"
    needs_crc = True

    def start(self, f: BinaryIO, path: Path, specs: list[TensorSpec], metadata: dict[str, str] | None) -> FileStart:
        import zipfile

        from torch.serialization import skip_data

        # torch.empty reserves address space only; skip_data never touches the pages.
        empties = {s.name: torch.empty(s.shape, dtype=s.dtype) for s in specs}
        recorder = _WriteRecorder(f)
        try:
            with skip_data():
                torch.save(empties, recorder)  # a file object: the archive is named "archive" as in transformers'
        except RuntimeError:
            if recorder.error is not None:  # torch reports a failed write as "[enforce fail at inline_container.cc]"
                raise recorder.error from None
            raise
        del empties
        f.flush()
        with zipfile.ZipFile(path) as zf, open(path, "rb") as r:
            records = {}
            for info in zf.infolist():
                r.seek(info.header_offset + 26)
                n, m = struct.unpack("<HH", r.read(4))
                records[info.filename.split("/", 1)[1]] = (info.header_offset + 30 + n + m, info.filename)
        # Storages are numbered in first-seen order, which is the dict's order.
        offsets = {s.name: records[f"data/{i}"][0] for i, s in enumerate(specs)}
        names = {s.name: records[f"data/{i}"][1] for i, s in enumerate(specs)}
        return FileStart(offsets, path.stat().st_size, names)

    def finish(self, f: BinaryIO, start: FileStart, crcs: dict[str, int]) -> None:
        _patch_zip_crcs(f, {start.records[name]: crc for name, crc in crcs.items()})


class _WriteRecorder:
    """The file object ``torch.save`` writes to: every write is completed (a short write is retried) and the
    OSError that ends it (a full disk, a file-size limit) is kept, so the caller can raise it instead of
    torch's RuntimeError, which names neither the file nor the cause."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                n = self.f.write(view[done:])
                if not n:
                    raise OSError(errno.EIO, "write wrote nothing")
                done += n
        except OSError as e:
            self.error = e
            raise
        return done

    def __getattr__(self, name: str):
        value = getattr(self.f, name)
        if not callable(value):
            return value

        def call(*args, **kwargs):  # seek/truncate/flush, which skip_data uses to reserve the records
            try:
                return value(*args, **kwargs)
            except OSError as e:
                self.error = e
                raise

        return call


def _patch_zip_crcs(f: BinaryIO, crcs: dict[str, int]) -> None:
    """Write real CRC-32s into the local and central headers of the given zip records."""
    import zipfile

    f.seek(0)
    with zipfile.ZipFile(f) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        cd_start = zf.start_dir
    for record, crc in crcs.items():
        f.seek(infos[record].header_offset + 14)
        f.write(struct.pack("<I", crc))
    # Walk the central directory: 46-byte fixed entries, CRC at +16.
    f.seek(cd_start)
    for _ in range(len(infos)):
        entry = f.tell()
        fixed = f.read(46)
        if fixed[:4] != b"PK\x01\x02":
            raise InputError("unexpected torch zip layout while patching CRCs")
        n, m, k = struct.unpack("<HHH", fixed[28:34])
        name = f.read(n).decode()
        if name in crcs:
            f.seek(entry + 16)
            f.write(struct.pack("<I", crcs[name]))
        f.seek(entry + 46 + n + m + k)


LAYOUTS: dict[str, FileLayout] = {layout.name: layout for layout in (SafetensorsLayout(), TorchZipLayout())}


def crc32(data: memoryview) -> int:
    return zlib.crc32(data)
