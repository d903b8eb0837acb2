"""Remote weight files read front to back once: ``.safetensors`` (:class:`RemoteSafetensorsFile`) and PyTorch
zip ``.bin``/``.pth`` (:class:`RemoteTorchFile`).

Metadata comes first, by ranged reads (:class:`RangeFile`): a safetensors header; a torch zip's directory and
pickle, loaded with ``weights_only=True`` (no code runs) into fake tensors that carry shapes, dtypes, strides
and each storage's offset in the file, not their data. The data is then read in file order from one
:class:`~llmkit.io.remote.reader.VerifiedReader`, which reuses the metadata bytes already fetched, so the whole
file is fetched once and hashed in order. A job may ask for tensors in another order than the file stores
them (a ``.ckpt`` sink's own order): what is passed on the way is held in memory until asked for.
"""

from __future__ import annotations

import io
import struct
from collections import Counter

import torch

from llmkit.errors import InputError
from llmkit.io.core.dtypes import ST_TO_TORCH
from llmkit.io.core.source import TensorFile
from llmkit.io.core.spec import TensorInfo
from llmkit.io.hf.st_header import MAX_HEADER_BYTES, parse_header
from llmkit.io.hf.stream import StreamFile
from llmkit.io.remote.ranged import RangedSpans
from llmkit.io.remote.reader import VerifiedReader
from llmkit.io.remote.store import RemoteEntry, Store
from llmkit.io.remote.url import RemotePath

_BLOCK = 64 * 2**10  # bytes per metadata read


class HeldStream(StreamFile):
    """A :class:`StreamFile` over a remote file that may be read in any order: tensors passed on the way to
    a later one are read and held until asked for (``held_bytes``)."""

    def __init__(
        self, reader: VerifiedReader, infos: dict[str, TensorInfo], spans: dict[str, tuple[int, int]], path: RemotePath
    ):
        super().__init__(reader, infos, spans, reader.position)  # type: ignore[arg-type]  # reads as a BinaryIO
        self.reader = reader
        self.path = path
        self.size = reader.entry.size
        self.where = f"the remote file {path}"
        self._order = sorted(spans, key=lambda n: spans[n])  # data order
        self._index = {n: i for i, n in enumerate(self._order)}
        self._next = 0  # index in _order of the first tensor not passed yet
        self._held: dict[str, torch.Tensor] = {}
        self.unverified: str | None = None  # the source's line naming the files read without a digest
        self.ranges: RangedSpans | None = None  # --ray: each tensor read by ranged requests instead

    def read_by_range(self, store: Store) -> None:
        """From now on, read each tensor on its own by ranged requests (any order; ``--ray``)."""
        self.ranges = RangedSpans(store, self.reader.entry, self.infos, self._spans)

    def integrity_warning(self, values_read: bool = True) -> str | None:
        return self.unverified

    def index(self, name: str) -> int | None:
        return None if self.ranges is not None else super().index(name)

    def read_to_end(self) -> None:
        if self.ranges is not None:
            self.ranges.read_to_end()  # the file read whole once, judged against its digest
        else:
            super().read_to_end()

    def get(self, name: str) -> torch.Tensor:
        if self.ranges is not None:
            return self.ranges.get(name)
        held = self._held.pop(name, None)
        if held is not None:
            return held
        target = self._index[name]
        while self._next < target:
            other = self._order[self._next]
            self._held[other] = super().get(other)
            self._next += 1
        tensor = super().get(name)
        self._next = max(self._next, target + 1)
        return tensor

    @property
    def held_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._held.values())

    def close(self) -> None:
        super().close()
        self._held.clear()
        self.reader.close()


class RemoteSafetensorsFile(HeldStream):
    """One remote ``.safetensors`` file: its header fetched now (two ranged reads), its data on demand."""

    def __init__(self, store: Store, entry: RemoteEntry, path: RemotePath):
        if entry.size < 8:
            raise InputError("not a safetensors file (shorter than 8 bytes)", path=path, hint="check the URL")
        head = store.fetch(entry, 0, 8)
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > entry.size:
            raise InputError(f"not a safetensors file (its first 8 bytes declare a {n}-byte header)", path=path)
        raw = store.fetch(entry, 8, 8 + n)
        start = 8 + n
        entries, self.metadata = parse_header(raw, path, entry.size - start)
        infos = {e.name: TensorInfo(e.name, ST_TO_TORCH[e.dtype], e.shape, path) for e in entries}
        spans = {e.name: (start + e.begin, start + e.end) for e in entries}
        super().__init__(VerifiedReader(store, entry, start, head + raw), infos, spans, path)


class RangeFile(io.RawIOBase):
    """A remote file as a seekable binary file for metadata reads: :data:`_BLOCK`-aligned ranged reads, each
    block kept (``blocks``: offset -> bytes) so the data reader does not fetch it again."""

    def __init__(self, store: Store, entry: RemoteEntry):
        self.store, self.entry = store, entry
        self.pos = 0
        self.blocks: dict[int, bytes] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.entry.size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def _block(self, start: int) -> bytes:
        if start not in self.blocks:
            self.blocks[start] = self.store.fetch(self.entry, start, min(start + _BLOCK, self.entry.size))
        return self.blocks[start]

    def readinto(self, b) -> int:
        view, done = memoryview(b).cast("B"), 0
        while done < len(view) and self.pos < self.entry.size:
            start = self.pos - self.pos % _BLOCK
            block = self._block(start)[self.pos - start :]
            n = min(len(block), len(view) - done)
            view[done : done + n] = block[:n]
            done += n
            self.pos += n
        return done


class RemoteTorchFile(TensorFile):
    """A remote PyTorch zip (``torch.save``): tensors listed from its pickle (``weights_only``, fake tensors:
    no data read), each storage's bytes read in file order; a storage several tensors share is kept until
    the last of them is read."""

    def __init__(self, store: Store, entry: RemoteEntry, path: RemotePath):
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.path = path
        meta = RangeFile(store, entry)
        try:
            with FakeTensorMode():
                state = torch.load(meta, map_location="cpu", weights_only=True)  # type: ignore[arg-type]  # a binary file object
        except Exception as e:
            raise InputError(
                f"cannot read this PyTorch file remotely: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                path=path,
                hint="download it first (llmkit download REPO -o DIR) and pass DIR",
            ) from None
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise InputError("not a state dict of tensors", path=path, hint="pass a model's weight files")
        self.infos, self._views, spans = {}, {}, {}
        for name, t in state.items():
            storage = t.untyped_storage()
            begin = int(storage._checkpoint_offset)
            key = f"storage@{begin}"
            spans[key] = (begin, begin + storage.nbytes())
            self.infos[name] = TensorInfo(name, t.dtype, tuple(t.shape), path)
            self._views[name] = (key, t.storage_offset(), tuple(t.stride()))
        raw_infos = {k: TensorInfo(k, torch.uint8, (b - a,), path) for k, (a, b) in spans.items()}
        reader = VerifiedReader(store, entry, 0, b"", known=meta.blocks)
        self.raw = HeldStream(reader, raw_infos, spans, path)
        self._users = Counter(key for key, _, _ in self._views.values())  # tensors per storage
        self._shared: dict[str, torch.Tensor] = {}
        self.unverified: str | None = None  # the source's line naming the files read without a digest

    def integrity_warning(self, values_read: bool = True) -> str | None:
        return self.unverified

    def index(self, name: str) -> int | None:
        view = self._views.get(name)
        return None if view is None else self.raw.index(view[0])

    def get(self, name: str) -> torch.Tensor:
        key, offset, stride = self._views[name]
        storage = self._shared.get(key)
        if storage is None:
            storage = self.raw.get(key)
            if self._users[key] > 1:
                self._shared[key] = storage
        info = self.infos[name]
        t = torch.empty(0, dtype=info.dtype)
        t.set_(storage.untyped_storage(), offset, info.shape, stride)
        return t if t.is_contiguous() and t.numel() * t.element_size() == storage.numel() else t.clone()

    def read_to_end(self) -> None:
        self.raw.read_to_end()

    def close(self) -> None:
        self._shared.clear()
        self.raw.close()
