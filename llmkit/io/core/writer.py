"""The safe, streaming writer under every weight sink: a fixed set of files, laid out before any tensor.

The writer is given every output tensor (name, dtype, shape) and its file up front. That is what lets it
stream: file headers and byte offsets are fixed (by the format's :class:`~llmkit.io.core.layout.FileLayout`)
before the first tensor arrives, so each tensor's bytes are written straight to their place and then
dropped. Peak memory is one tensor, whatever the file size. :func:`plan_shards` splits specs into files.

Safe writes: the output is claimed and built in a hidden stage beside it (``llmkit.io.core.staging``),
fsynced and made final in one rename after every planned tensor was written and sizes check out; on any
error nothing is kept. Before anything is created the writer refuses an output that is, is inside or
contains one of its ``inputs`` (:func:`~llmkit.io.core.destination.ensure_output_is_new`), an ``-o`` that
cannot be a folder (dangling symlink, loop, file), existing outputs unless ``force``, a read-only file
system, and too little free space (output + :func:`~llmkit.units.space_margin`). A failed write (disk
full, file-size limit, quota) is reported naming the file being written (:func:`llmkit.errors.writing`).
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, TypeVar

import torch

from llmkit.errors import DiskSpaceError, InputError, writing
from llmkit.io.core.destination import check_output_path, ensure_output_is_new, make_folder, remove_empty
from llmkit.io.core.dtypes import CONFIG_NAMES
from llmkit.io.core.files import AUX_FILES
from llmkit.io.core.jsonfile import parse_json
from llmkit.io.core.layout import FileLayout, FileStart, tensor_bytes
from llmkit.io.core.regular import is_special, read_regular
from llmkit.io.core.sink import is_weight_file, own_files
from llmkit.io.core.spec import TensorSpec
from llmkit.io.core.staging import StagedFolder, Staging, staged_output
from llmkit.io.core.writeback import WriteBehind
from llmkit.units import check_space, free_bytes, human_bytes, space_margin

_W = TypeVar("_W", bound="ShardSetWriter")


def plan_shards(specs: list[TensorSpec], shard_size: int) -> list[list[TensorSpec]]:
    """Greedy split in order: a shard closes before a tensor that would push it past ``shard_size``.

    A tensor larger than ``shard_size`` gets a shard of its own (as transformers does).
    """
    shards: list[list[TensorSpec]] = []
    current: list[TensorSpec] = []
    size = 0
    for s in specs:
        if current and size + s.nbytes > shard_size:
            shards.append(current)
            current, size = [], 0
        current.append(s)
        size += s.nbytes
    if current or not shards:
        shards.append(current)
    return shards


@dataclass
class _Shard:
    name: str
    specs: list[TensorSpec]
    start: FileStart | None = None  # where each tensor goes, once the file is started
    remaining: set[str] = field(default_factory=set)
    handle: BinaryIO | None = None
    behind: WriteBehind | None = None  # early write-back of the open file
    crc: dict[str, int] = field(default_factory=dict)  # tensor name -> CRC-32 (layouts that need it)

    @property
    def started(self) -> bool:
        return self.start is not None


class ShardSetWriter:
    """Safe, streaming writing of a fixed set of weight files (the machinery under every writer).

    ``shards`` is ``[(file name, specs in file order), ...]``; ``fmt`` is the registered sink format the
    files belong to (``--force`` replaces its own files), ``layout`` writes their bytes. Tensors are written
    with :meth:`write_to`; extra small
    files with :meth:`add_file`. A context manager: a clean exit checks and renames everything, an
    exception removes every temporary file.

    ``inputs``: every file and folder the job reads (models, adapters, the folders config and tokenizer
    files come from); the output may not be, be inside or contain any of them (symlinks resolved). The
    subclasses check the destination when constructed: after that, :attr:`free_disk_bytes`,
    :attr:`space_margin` and :attr:`needed_disk_bytes` say what was found and required. ``write_order``:
    the order the tensors must be written in (None: any, each is written in place; the runner honours it).
    """

    write_order: list[str] | None = None

    def __init__(
        self,
        out_dir: str | os.PathLike,
        shards: list[tuple[str, list[TensorSpec]]],
        *,
        fmt: str,
        force: bool = False,
        metadata: dict[str, str] | None = None,
        extra_bytes: int = 0,
        inputs: Iterable[str | os.PathLike | None] | None = None,
        layout: FileLayout,
    ):
        self.layout = layout
        for file_name, specs in shards:
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                raise InputError(f"tensor {dup!r} planned twice in {file_name}")
        from llmkit.io.remote.url import as_path

        self.out_dir = as_path(out_dir)
        self.fmt = fmt
        self.force = force
        self.metadata = {"format": "pt"} if metadata is None else metadata
        self.shards = [_Shard(n, list(s)) for n, s in shards]
        self._specs = [{s.name: s for s in sh.specs} for sh in self.shards]
        self.total_size = sum(s.nbytes for sh in self.shards for s in sh.specs)
        self.files: list[str] = [sh.name for sh in self.shards]
        self._aux: dict[str, bytes] = {}
        self.own_files = own_files(fmt)  # stale files of this layout that --force replaces
        self._staging: Staging = self._make_staging()
        self._done = False
        self.inputs = list(inputs) if inputs is not None else None
        self.free_disk_bytes = 0
        self.space_margin = 0
        self.needed_disk_bytes = 0
        self.smaller_files: str | None = None  # how to get smaller weight files (for the size-limit hint)

    # ---- checks before any byte is written ----
    def _make_staging(self) -> Staging:
        """The output folder, built beside the target and made final at once (``staging.StagedFolder``),
        or an object store's pending uploads for a URL."""
        return staged_output(self.out_dir, one_file=False, writes=self._writes, owned=self._owned, force=self.force)

    def _writes(self, name: str) -> bool:
        return name in self.files or name in self._aux

    def _owned(self, name: str) -> bool:
        """An existing entry of the kind this sink writes: refused without --force, replaced with it.

        Without --force, any llmkit weight layout counts; with it, only this layout's weights (a
        ``consolidated.00.pth`` beside a safetensors output is the user's and is kept). Config and
        tokenizer files always count: the side files of an output are exactly what this run writes.
        """
        if name in AUX_FILES:
            return True
        if self.force:
            return self.own_files is not None and bool(self.own_files.match(name))
        return is_weight_file(name)

    @property
    def kept_files(self) -> list[str]:
        """Files of the existing output folder that are not this command's and stay beside the new output."""
        return self._existing.kept

    @property
    def replaced_files(self) -> list[str]:
        return self._existing.replaced

    def _check_destination(self, extra_bytes: int) -> None:
        if self._staging.remote:
            self._check_remote_destination(extra_bytes)
            return
        if self.inputs is not None:
            ensure_output_is_new(self.out_dir, self.inputs)
        else:
            check_output_path(self.out_dir)
        self._existing = self._staging.check()  # refuses what this run may not replace
        need = self.total_size + extra_bytes + sum(len(d) for d in self._aux.values())
        self.free_disk_bytes = free_bytes(self.out_dir)
        self.space_margin = check_space(self.out_dir, need, self.free_disk_bytes)
        self.needed_disk_bytes = need + self.space_margin

    def _check_remote_destination(self, extra_bytes: int) -> None:
        """A remote output: the store's own checks (what exists, the inputs it may not overwrite) run in
        ``check``; local disk is checked only where files pass through it (``staging.scratch``: room for the
        two largest files, one written while the other uploads, plus the margin)."""
        from llmkit.io.remote.sink import check_remote_output

        streamed = self._staging.scratch is None  # each file goes up as it is written, front to back
        if streamed and not self.layout.sequential:
            raise InputError(
                f"{self.fmt} files are patched after they are written, which an upload cannot do",
                path=self.out_dir,
                hint="use --format safetensors for a remote -o, or write to a local path",
            )
        check_remote_output(self.out_dir, self.inputs or [])
        if streamed and self.write_order is None:  # tensors in file order
            self.write_order = self._file_order()
        self._existing = self._staging.check()
        self.needed_disk_bytes = self.free_disk_bytes = self.space_margin = 0
        scratch = self._staging.scratch
        if scratch is None:
            return
        sizes = sorted((sum(s.nbytes for s in sh.specs) for sh in self.shards), reverse=True)
        need = sum(sizes[:2])
        self.free_disk_bytes, self.space_margin = free_bytes(scratch), space_margin(need)
        self.needed_disk_bytes = need + self.space_margin
        if self.free_disk_bytes < self.needed_disk_bytes:
            raise DiskSpaceError(
                f"the upload passes its files through {scratch}, which needs "
                f"{human_bytes(self.needed_disk_bytes)} free, {human_bytes(self.free_disk_bytes)} available",
                path=self.out_dir,
                hint="set TMPDIR to a folder with more free space, or use a smaller --shard-size",
            )

    def _file_order(self) -> list[str]:
        """The plan's tensor names in the order the files store them (what :meth:`write` is given)."""
        return [s.name for sh in self.shards for s in sh.specs]

    # ---- context manager ----
    def __enter__(self: _W) -> _W:
        self._made_dirs = [] if self._staging.remote else make_folder(self._staging.target.parent)
        try:
            self._staging.open()
        except BaseException:
            remove_empty(self._made_dirs)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            try:
                self.finalize()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()

    # ---- shards ----
    def _open_shard(self, sh: _Shard) -> None:
        with writing(self.out_dir / sh.name, smaller=self.smaller_files):
            sh.handle = self._staging.open_file(
                sh.name, sum(s.nbytes for s in sh.specs)
            )  # kept open across write_to calls; _close_shard/abort close it
            sh.start = self.layout.start(sh.handle, self._staging.path(sh.name), sh.specs, self.metadata)
        sh.behind = None if self._staging.remote else WriteBehind(sh.handle.fileno())
        sh.remaining = {s.name for s in sh.specs}

    def write_to(self, shard: int, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor of file number ``shard``; it must have the planned dtype and shape."""
        if not 0 <= shard < len(self.shards):
            raise InputError(f"no shard {shard} in the output plan")
        sh = self.shards[shard]
        spec = self._specs[shard].get(name)
        if spec is None:
            raise InputError(f"tensor {name!r} is not in the output plan of {sh.name}")
        if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise InputError(
                f"tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, planned {spec.dtype} {spec.shape}"
            )
        if sh.handle is None:
            if sh.started:
                raise InputError(f"tensor {name!r} written twice")
            self._open_shard(sh)
        if name not in sh.remaining:
            raise InputError(f"tensor {name!r} written twice")
        data = tensor_bytes(tensor)
        assert sh.handle is not None and sh.start is not None
        with writing(self.out_dir / sh.name, smaller=self.smaller_files):
            self.layout.write_tensor(sh.handle, sh.start, name, data)
            if sh.behind is not None:
                sh.behind.wrote(sh.handle.tell())
        if self.layout.needs_crc:
            sh.crc[name] = zlib.crc32(data)
        sh.remaining.discard(name)
        if not sh.remaining:
            self._close_shard(sh)

    def _close_shard(self, sh: _Shard) -> None:
        assert sh.handle is not None
        assert sh.start is not None
        with writing(self.out_dir / sh.name, smaller=self.smaller_files):
            self.layout.finish(sh.handle, sh.start, sh.crc)
            self._staging.close_file(sh.name, sh.handle)
        sh.handle = sh.behind = None

    # ---- files written by other processes (llmkit.io.core.pieces: a Ray task's piece) ----
    @property
    def stage_folder(self) -> Path | None:
        """The local folder the output is built in (None: an object store's uploads, or a one-file output)."""
        return self._staging.stage if isinstance(self._staging, StagedFolder) else None

    def planned_start(self, shard: int, scratch: Path) -> FileStart:
        """File ``shard``'s layout (offsets, size), found by starting it in the scratch file ``scratch``
        (headers only: data regions are sparse), which is removed."""
        try:
            with open(scratch, "w+b") as f:
                return self.layout.start(f, scratch, self.shards[shard].specs, self.metadata)
        finally:
            scratch.unlink(missing_ok=True)

    def adopt(self, shard: int, start: FileStart) -> None:
        """File ``shard`` is in the stage, written by someone else with layout ``start``: it counts as
        written (:meth:`finalize` checks its size against ``start.size``)."""
        sh = self.shards[shard]
        if sh.started:
            raise InputError(f"{sh.name} written twice")
        sh.start, sh.remaining = start, set()

    # ---- non-weight files ----
    def add_file(self, name: str, data: bytes) -> None:
        """A small non-weight file (config, tokenizer) written with the shards."""
        self._aux[name] = data

    def copy_files(self, folder: Path | None, names: Iterable[str]) -> list[str]:
        """Carry the named files that exist in ``folder`` into the output, unchanged; one of them that is a
        FIFO, socket or device is refused (never read: it could block forever)."""
        copied: list[str] = []
        if folder is None:
            return copied
        for name in names:
            p = folder / name
            if p.is_file() or is_special(p):
                self.add_file(name, read_regular(p, f"a {name} file"))
                copied.append(name)
        return copied

    def copy_aux_files(
        self,
        folder: Path | None,
        *,
        dtype: torch.dtype | None = None,
        vocab_size: int | None = None,
        skip: Iterable[str] = (),
        only: Iterable[str] | None = None,
    ) -> list[str]:
        """Carry config/tokenizer files from ``folder`` (``only`` those, or all but ``skip``); update
        ``config.json`` dtype and vocab size."""
        files = side_files(folder, self._aux_names(only, skip), dtype=dtype, vocab_size=vocab_size)
        for name, data in files.items():
            self.add_file(name, data)
        return list(files)

    def _aux_names(self, only: Iterable[str] | None, skip: Iterable[str]) -> list[str]:
        """The side files :meth:`copy_aux_files` carries: ``only`` those (in that order), else every one of
        ``AUX_FILES``; none in ``skip`` (a layout with other side files overrides this)."""
        skipped = set(skip)
        return [n for n in (AUX_FILES if only is None else tuple(only)) if n not in skipped]

    # ---- the end ----
    def _index_files(self) -> dict[str, bytes]:
        """Files derived from the finished plan (the shard index); none by default."""
        return {}

    def finalize(self) -> list[Path]:
        """Check every planned tensor was written, write derived files, rename temp files to final names."""
        if self._done:
            return [self.out_dir / n for n in self.files]
        missing = [f"{sh.name}:{s.name}" for sh in self.shards for s in sh.specs if not sh.started]
        missing += [f"{sh.name}:{n}" for sh in self.shards for n in sorted(sh.remaining)]
        if missing:
            raise InputError(f"{len(missing)} planned tensor(s) were never written, e.g. {missing[0]!r}")
        for sh in self.shards:
            if not sh.specs and not sh.started:  # an empty model: one empty, valid file
                self._open_shard(sh)
                self._close_shard(sh)
            actual = self._staging.size(sh.name)
            assert sh.start is not None
            if actual != sh.start.size:
                raise InputError(f"shard {sh.name} has {actual} bytes, expected {sh.start.size}", path=self.out_dir)
        self._aux.update(self._index_files())
        for name, data in self._aux.items():
            with writing(self.out_dir / name):
                self._staging.write_file(name, data)
        self.files = [sh.name for sh in self.shards] + [
            n for n in self._aux if n not in {sh.name for sh in self.shards}
        ]
        self._staging.commit()
        self._existing.kept, self._existing.replaced = self._staging.kept, self._staging.replaced
        self._done = True
        return [self.out_dir / n for n in self.files]

    def abort(self) -> None:
        for sh in self.shards:
            if sh.handle is not None:
                with contextlib.suppress(OSError):  # close() flushes: fails again on a full disk or the size limit
                    sh.handle.close()
                sh.handle = None
        self._staging.discard()
        remove_empty(getattr(self, "_made_dirs", []))


def side_files(
    folder: Path | None, names: Iterable[str], *, dtype: torch.dtype | None = None, vocab_size: int | None = None
) -> dict[str, bytes]:
    """The files of ``names`` that exist in ``folder``, as an output carries them: ``config.json`` with
    ``dtype`` and ``vocab_size`` set when given. One that is a FIFO, socket or device is refused (never read:
    it could block forever)."""
    files: dict[str, bytes] = {}
    if folder is None:
        return files
    for name in names:
        p = folder / name
        if p.is_file() or is_special(p):
            data = read_regular(p, f"a {name} file")
            if name == "config.json" and (dtype is not None or vocab_size is not None):
                data = updated_config(data, p, dtype=dtype, vocab_size=vocab_size)
            files[name] = data
    return files


def updated_config(data: bytes, path: Path, *, dtype: torch.dtype | None, vocab_size: int | None) -> bytes:
    """``config.json`` with ``torch_dtype``/``dtype`` and ``vocab_size`` set; other keys untouched."""
    cfg = parse_json(data, path)
    assert isinstance(cfg, dict)
    if dtype is not None:
        name = CONFIG_NAMES.get(dtype, str(dtype).removeprefix("torch."))
        keys = [k for k in ("torch_dtype", "dtype") if k in cfg] or ["torch_dtype"]
        for k in keys:
            cfg[k] = name
    if vocab_size is not None:
        cfg["vocab_size"] = vocab_size
    return (json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
