"""Torch zip files (``.bin``, ``.pth``), read and written without unpickling anything untrusted.

- :class:`TorchFile`: ``torch.load(mmap=True, weights_only=True)``, so nothing in the pickle is executed
  and tensor data stays in the (copy-on-write) file mapping until used; the pages of used tensors are
  dropped again (``madvise``), so RSS stays near one tensor.
- :class:`TorchZipLayout`: the zip is laid out by ``torch.save`` under ``torch.serialization.skip_data``
  (empty tensors, no data written), then each tensor's bytes are written into its ``data/N`` record and
  the zip CRCs are patched at the end, so ``unzip -t`` and ``torch.load`` both accept the file.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import pickle
import re
import struct
import sys
import zipfile
from pathlib import Path
from typing import BinaryIO

import torch

from llmkit.errors import InputError, UnsafeFileError
from llmkit.io.core.layout import FileLayout, FileStart
from llmkit.io.core.regular import open_regular
from llmkit.io.core.source import TensorFile, read_tensor
from llmkit.io.core.spec import TensorInfo, TensorSpec


class TorchZipLayout(FileLayout):
    """``torch.save`` lays out the zip with no data (``skip_data``); tensors fill their ``data/N`` records
    and the CRC-32s are patched at the end, so ``unzip -t`` and ``torch.load`` both accept the file."""

    sequential = False  # the zip's CRC-32s are patched in at the end

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


def _explain_torch_load_error(path: Path, err: Exception) -> InputError:
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
        what = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"GLOBAL ([\w.]+)", text)
        detail = f" (it references {what.group(1)})" if what else ""
        return UnsafeFileError(
            f"refused to load: the pickle contains objects other than tensors{detail}; nothing in it was run",
            path=path,
            hint="only load weights from sources you trust; ask for a safetensors version",
        )
    if "central directory" in text or "zip archive" in text or isinstance(err, zipfile.BadZipFile):
        return InputError(
            "not a readable torch zip archive (truncated or corrupt)", path=path, hint="download the file again"
        )
    if "mmap" in text and "zipfile" in text:
        return InputError(
            "legacy (pre-1.6) torch file format cannot be read lazily",
            path=path,
            hint="re-save it with a current torch or convert it to safetensors",
        )
    return InputError(
        f"cannot read torch file: {text.splitlines()[0] if text else type(err).__name__}",
        path=path,
        hint="the file may be damaged; download it again",
    )


class TorchFile(TensorFile):
    """A torch zip file (``.bin``/``.pth``/``.pt``) holding a flat ``{name: tensor}`` dict.

    Loaded with ``weights_only=True`` (no code runs) and ``mmap=True`` (data stays on disk).
    """

    def __init__(self, path: Path):
        self.path = path
        with open_regular(path, "a torch weight file") as f:  # a folder or a FIFO: refused, never read
            magic = f.read(4)
        if magic[:2] != b"PK":
            raise InputError(
                "not a torch zip archive (legacy or corrupt torch file)",
                path=path,
                hint="re-save it with torch>=1.6 or download it again",
            )
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:
            raise _explain_torch_load_error(path, e) from None
        if not isinstance(state, dict):
            raise InputError(f"expected a dict of tensors, found {type(state).__name__}", path=path)
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise InputError(
                f"not a flat state dict: entry {bad[0]!r} is not a tensor",
                path=path,
                hint="llmkit reads {name: tensor} checkpoints",
            )
        self._state: dict[str, torch.Tensor] | None = state
        self.infos = {k: TensorInfo(k, v.dtype, tuple(v.shape), path) for k, v in state.items()}

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name``: a large one is read from the file into a fresh tensor (``pread`` where the mapping
        shows its bytes: one sequential read instead of faulting mapped pages in, and none stay resident),
        a small one is the mapped tensor itself."""
        assert self._state is not None
        t = self._state[name]
        offset = _PAGES.file_offset(self.path, t) if t.numel() * t.element_size() >= _READ_MIN else None
        if offset is None:
            return t
        fd = os.open(self.path, os.O_RDONLY)
        try:
            return read_tensor(fd, offset, self.infos[name])
        finally:
            os.close(fd)

    def release(self, name: str) -> None:
        # torch.load(mmap=True) maps the whole file privately and every page a tensor touched stays in
        # the process's RSS until the file is closed: 10 GB for one ZhiXi shard. MADV_DONTNEED drops
        # them; they would be re-read from the file (llmkit never writes into input mappings).
        _PAGES.advise(self, name, _MADV_DONTNEED)

    def prefetch(self, name: str) -> None:
        _PAGES.advise(self, name, _MADV_WILLNEED)

    def close(self) -> None:
        self._state = None
        _PAGES.forget(self.path)


_MADV_WILLNEED = 3
_READ_MIN = 1 << 20  # bytes: a tensor at least this large is read into a fresh tensor, not mapped


_MADV_DONTNEED = 4


class _PageAdvisor:
    """``madvise`` on the whole pages inside a tensor of a memory-mapped torch file (Linux only).

    Only address ranges that ``/proc/self/maps`` shows as mappings of that very file are touched,
    so a tensor that is not (or no longer) file-backed is never advised.
    """

    def __init__(self) -> None:
        self._libc = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                self._libc = libc
            except (OSError, AttributeError):
                self._libc = None
        self._ranges: dict[Path, list[tuple[int, int, int]]] = {}  # (start, end, file offset)

    def _file_ranges(self, path: Path) -> list[tuple[int, int, int]]:
        path = path.resolve()
        if path not in self._ranges:
            ranges = []
            try:
                with open("/proc/self/maps") as f:
                    for line in f:
                        parts = line.split(maxsplit=5)
                        if len(parts) == 6 and parts[5].strip() == str(path):
                            lo, hi = (int(x, 16) for x in parts[0].split("-"))
                            ranges.append((lo, hi, int(parts[2], 16)))
            except OSError:
                pass
            self._ranges[path] = ranges
        return self._ranges[path]

    def advise(self, f: TorchFile, name: str, advice: int) -> None:
        if self._libc is None or f._state is None or name not in f._state:
            return
        storage = f._state[name].untyped_storage()
        lo, hi = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        page = mmap.PAGESIZE
        a, b = lo + (-lo) % page, hi - hi % page  # whole pages inside the tensor only
        if b > a and any(r_lo <= a and b <= r_hi for r_lo, r_hi, _ in self._file_ranges(f.path)):
            self._libc.madvise(a, b - a, advice)

    def file_offset(self, path: Path, t: torch.Tensor) -> int | None:
        """Where ``t``'s bytes are in the file ``path``, when ``t`` is contiguous and inside a mapping of it."""
        if not t.is_contiguous() or t.numel() == 0:
            return None
        lo = t.data_ptr()
        hi = lo + t.numel() * t.element_size()
        for r_lo, r_hi, offset in self._file_ranges(path):
            if r_lo <= lo and hi <= r_hi:
                return lo - r_lo + offset
        return None

    def forget(self, path: Path) -> None:
        self._ranges.pop(path.resolve(), None)


_PAGES = _PageAdvisor()
