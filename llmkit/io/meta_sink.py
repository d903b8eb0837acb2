"""A streaming writer for Meta's ``consolidated.NN.pth`` shards and ``params.json``.

Meta's layout (SPEC.md sections 3 and 4) is N torch zip files, one per model-parallel rank, each a flat
``{name: tensor}`` dict with the same names in the same order, plus ``params.json``. The writer is given
every shard's tensor specs up front, so it lays each file out the way :class:`~llmkit.io.sinks.ShardedWriter`
lays out ``.bin`` shards: ``torch.save`` under ``skip_data`` writes the zip with empty records, each
tensor's bytes are written straight into its ``data/N`` record when it arrives, and the CRCs are patched
when the file is complete. ``torch.load`` and ``unzip -t`` accept the result; peak memory is one tensor.

Safe writes as in ``ShardedWriter``: temporary names in the output folder, renamed only after every
planned tensor was written and sizes check out; an exception leaves nothing behind; existing outputs are
refused without ``force``; free disk space is checked before the first byte.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Iterable

import torch

from llmkit.errors import DiskSpaceError, InputError, OutputExistsError
from llmkit.io.sinks import (AUX_FILES, TMP_SUFFIX, _WEIGHT_RE, ShardedWriter, TensorSpec, _patch_zip_crcs, _Shard,
                             free_bytes, human_bytes, tensor_bytes)

PARAMS_JSON = "params.json"


def meta_shard_name(index: int) -> str:
    return f"consolidated.{index:02d}.pth"


class MetaShardWriter:
    """Write ``consolidated.00.pth`` ... and ``params.json``; a context manager.

    ``shard_specs[i]`` lists the tensors of shard ``i`` in file order. Use ``w.write(i, name, tensor)``
    in any order; on a clean exit the files are checked and renamed to their final names.
    """

    def __init__(self, out_dir: str | os.PathLike, shard_specs: list[list[TensorSpec]], *, params: dict,
                 force: bool = False, extra_bytes: int = 0):
        if not shard_specs:
            raise InputError("a Meta checkpoint needs at least one shard")
        for specs in shard_specs:
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                dup = next(n for n in names if names.count(n) > 1)
                raise InputError(f"tensor {dup!r} planned twice")
        self.out_dir = Path(out_dir)
        self.force = force
        self.shards = [_Shard(meta_shard_name(i), list(specs)) for i, specs in enumerate(shard_specs)]
        self._specs = [{s.name: s for s in specs} for specs in shard_specs]
        self.total_size = sum(s.nbytes for specs in shard_specs for s in specs)
        self.files: list[str] = [sh.name for sh in self.shards] + [PARAMS_JSON]
        self._aux: dict[str, bytes] = {PARAMS_JSON: (json.dumps(params) + "\n").encode()}
        self._temps: list[Path] = []
        self._done = False
        self._check_destination(extra_bytes)

    # ---- checks before any byte is written ----
    def _check_destination(self, extra_bytes: int) -> None:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise OutputExistsError("output path exists and is not a folder", path=self.out_dir,
                                    hint="choose another -o")
        if self.out_dir.is_dir() and not self.force:
            clash = sorted(p.name for p in self.out_dir.iterdir()
                           if p.name in self.files or p.name in AUX_FILES or _WEIGHT_RE.match(p.name))
            if clash:
                raise OutputExistsError(f"output folder already holds {', '.join(clash[:3])}"
                                        + (" ..." if len(clash) > 3 else ""),
                                        path=self.out_dir, hint="pass --force to overwrite, or choose another -o")
        need = self.total_size + extra_bytes + 64 * 2**20
        free = free_bytes(self.out_dir)
        if free < need:
            raise DiskSpaceError(f"needs {human_bytes(need)} of free space, {human_bytes(free)} available",
                                 path=self.out_dir, hint="free some space or choose another -o")

    # ---- context manager ----
    def __enter__(self) -> "MetaShardWriter":
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.finalize()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()

    def _tmp(self, name: str) -> Path:
        p = self.out_dir / f".{name}{TMP_SUFFIX}"
        self._temps.append(p)
        return p

    # ---- shards ----
    def _open_shard(self, sh: _Shard) -> None:
        path = self._tmp(sh.name)
        ShardedWriter._layout_torch_zip(sh, path)  # the same skip_data layout as .bin shards
        sh.handle = open(path, "r+b")
        sh.remaining = {s.name for s in sh.specs}

    def write(self, shard: int, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor of shard ``shard``; it must have the planned dtype and shape."""
        if not 0 <= shard < len(self.shards):
            raise InputError(f"no shard {shard} in the output plan")
        sh = self.shards[shard]
        spec = self._specs[shard].get(name)
        if spec is None:
            raise InputError(f"tensor {name!r} is not in the plan of {sh.name}")
        if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise InputError(f"tensor {name!r} of {sh.name} is {tensor.dtype} {tuple(tensor.shape)}, "
                             f"planned {spec.dtype} {spec.shape}")
        if sh.handle is None:
            if sh.offsets:
                raise InputError(f"tensor {name!r} written twice to {sh.name}")
            self._open_shard(sh)
        if name not in sh.remaining:
            raise InputError(f"tensor {name!r} written twice to {sh.name}")
        data = tensor_bytes(tensor)
        assert sh.handle is not None
        sh.handle.seek(sh.offsets[name])
        sh.handle.write(data)
        sh.crc[sh.record[name]] = zlib.crc32(data)
        sh.remaining.discard(name)
        if not sh.remaining:
            self._close_shard(sh)

    def _close_shard(self, sh: _Shard) -> None:
        assert sh.handle is not None
        _patch_zip_crcs(sh.handle, sh.crc)
        sh.handle.flush()
        os.fsync(sh.handle.fileno())
        sh.handle.close()
        sh.handle = None

    # ---- non-weight files ----
    def add_file(self, name: str, data: bytes) -> None:
        """A small non-weight file (tokenizer) written with the shards."""
        self._aux[name] = data

    def copy_files(self, folder: Path | None, names: Iterable[str]) -> list[str]:
        """Carry the named files that exist in ``folder`` (tokenizer files) into the output."""
        copied = []
        if folder is None:
            return copied
        for name in names:
            p = folder / name
            if p.is_file():
                self.add_file(name, p.read_bytes())
                copied.append(name)
        return copied

    # ---- the end ----
    def finalize(self) -> list[Path]:
        """Check every planned tensor was written, then rename the temporary files to their final names."""
        if self._done:
            return [self.out_dir / n for n in self.files]
        missing = [f"{sh.name}:{s.name}" for sh in self.shards for s in sh.specs
                   if sh.handle is None and not sh.offsets]
        missing += [f"{sh.name}:{n}" for sh in self.shards for n in sorted(sh.remaining)]
        if missing:
            raise InputError(f"{len(missing)} planned tensor(s) were never written, e.g. {missing[0]!r}")
        for sh in self.shards:
            if not sh.specs and not sh.offsets:  # an empty shard still is a valid (empty) torch file
                self._open_shard(sh)
                self._close_shard(sh)
            tmp = self.out_dir / f".{sh.name}{TMP_SUFFIX}"
            actual = tmp.stat().st_size
            if actual != sh.size:
                raise InputError(f"shard {sh.name} has {actual} bytes, expected {sh.size}", path=tmp)
        for name, data in self._aux.items():
            self._tmp(name).write_bytes(data)
        if self.force:
            keep = {tmp.name[1:-len(TMP_SUFFIX)] for tmp in self._temps}
            for p in self.out_dir.iterdir():
                if p.is_file() and p.name not in keep and _WEIGHT_RE.match(p.name):
                    p.unlink()
        finals = []
        for tmp in self._temps:
            final = self.out_dir / tmp.name[1:-len(TMP_SUFFIX)]
            os.replace(tmp, final)
            finals.append(final)
        self._temps.clear()
        self._done = True
        self.files = [p.name for p in finals]
        return finals

    def abort(self) -> None:
        for sh in self.shards:
            if sh.handle is not None:
                sh.handle.close()
                sh.handle = None
        for tmp in self._temps:
            tmp.unlink(missing_ok=True)
        self._temps.clear()
