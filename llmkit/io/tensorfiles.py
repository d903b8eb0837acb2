"""One weight file, read lazily: names, dtypes and shapes from its header, one tensor at a time.

- :class:`SafetensorsFile`: the header is checked by llmkit and by ``safe_open``; data is read with
  ``readinto`` into a fresh tensor.
- :class:`TorchFile` (``.bin``, ``.pth``): ``torch.load(mmap=True, weights_only=True)``, so nothing in
  the pickle is executed and tensor data stays in the (copy-on-write) file mapping until used; the
  pages of used tensors are dropped again (:meth:`TensorFile.release`, ``madvise``), so RSS stays
  near one tensor.

:class:`~llmkit.io.sources.TensorSource` joins these files into a model (shards, indexes, Meta).
"""

from __future__ import annotations

import ctypes
import math
import mmap
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from llmkit.errors import InputError, UnsafeFileError
from llmkit.io.dtypes import ST_TO_TORCH
from llmkit.io.regular import open_regular
from llmkit.io.st_header import MAX_HEADER_BYTES, read_header  # noqa: F401 (MAX_HEADER_BYTES re-exported)


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's name, dtype and shape, known without reading its data."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


class TensorFile:
    """One weight file. Subclasses fill ``infos`` at open time and read data in ``get``."""

    path: Path
    infos: dict[str, TensorInfo]

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def release(self, name: str) -> None:
        """Drop memory this file still holds for ``name`` after it was used (no-op unless mapped)."""

    def prefetch(self, name: str) -> None:
        """Start reading ``name`` from disk in the background (no-op unless mapped)."""

    def close(self) -> None:
        pass


class SafetensorsFile(TensorFile):
    """A ``.safetensors`` file: header validated by llmkit and by ``safe_open``; data read with ``readinto``.

    ``get`` reads one tensor's bytes straight into a fresh tensor (one copy, no file mapping), so
    the resident memory of a read is the tensor itself, not the tensor plus mapped file pages.
    """

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        self._handle: BinaryIO | None = open_regular(path, "a safetensors file")
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
        info = self.infos[name]
        begin, end = self._offsets[name]
        tensor = torch.empty(info.shape, dtype=info.dtype)
        if end > begin:
            assert self._handle is not None
            view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            self._handle.seek(self._data_start + begin)
            done = 0
            while done < len(view):  # one read() returns at most ~2 GB on Linux
                got = self._handle.readinto(view[done:])
                if not got:
                    raise InputError(f"file shrank while reading tensor {name!r}", path=self.path)
                done += got
        return tensor

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


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
        assert self._state is not None
        return self._state[name]

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
        self._ranges: dict[Path, list[tuple[int, int]]] = {}

    def _file_ranges(self, path: Path) -> list[tuple[int, int]]:
        path = path.resolve()
        if path not in self._ranges:
            ranges = []
            try:
                with open("/proc/self/maps") as f:
                    for line in f:
                        parts = line.split(maxsplit=5)
                        if len(parts) == 6 and parts[5].strip() == str(path):
                            lo, hi = (int(x, 16) for x in parts[0].split("-"))
                            ranges.append((lo, hi))
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
        if b > a and any(r_lo <= a and b <= r_hi for r_lo, r_hi in self._file_ranges(f.path)):
            self._libc.madvise(a, b - a, advice)

    def forget(self, path: Path) -> None:
        self._ranges.pop(path.resolve(), None)


_PAGES = _PageAdvisor()


def open_file(path: Path) -> TensorFile:
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    return TorchFile(path)
