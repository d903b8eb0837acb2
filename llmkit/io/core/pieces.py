"""One output file of a planned set, written on its own (a Ray task's piece; ``llmkit.cluster``).

The driver's :class:`~llmkit.io.core.writer.ShardSetWriter` fixed every file's tensors and layout; a piece
is one of those files, written by another process into the driver's stage folder (a shared filesystem):
under a temporary name in ``PIECE_DIR``, fsynced, hashed, then renamed to its final name in the stage. The
same tensors in give the same bytes out, so a retried piece replaces its file with identical bytes.
:meth:`ShardSetWriter.adopt` is the driver's side: a file written by someone else counts as written.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from llmkit.errors import InputError, writing
from llmkit.io.core.layout import FileLayout, FileStart, tensor_bytes
from llmkit.io.core.spec import TensorSpec
from llmkit.io.core.staging import fsync_dir

PIECE_DIR = ".llmkit-pieces"  # in the stage: pieces being written and the ledger; removed before the commit


@dataclass(frozen=True)
class PieceFile:
    """A written piece: its final ``name`` in the stage, ``size`` (bytes), ``sha256`` (hex) and layout."""

    name: str
    size: int
    sha256: str
    start: FileStart


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_piece(
    stage: Path,
    name: str,
    specs: list[TensorSpec],
    layout: FileLayout,
    metadata: dict[str, str] | None,
    tensors: Iterable[tuple[str, torch.Tensor]],
    *,
    started: Callable[[Path], None] | None = None,
) -> PieceFile:
    """Write file ``name`` of ``specs`` (``tensors``: every one of them, in any order, planned dtype and
    shape) into ``stage``; ``started(path)`` is called once its header is written (a test hook)."""
    work = stage / PIECE_DIR
    work.mkdir(exist_ok=True)
    tmp = work / f"{name}.{os.getpid()}"
    planned = {s.name: s for s in specs}
    crcs: dict[str, int] = {}
    try:
        with writing(stage.parent / name), open(tmp, "w+b") as f:
            start = layout.start(f, tmp, specs, metadata)
            if started is not None:
                started(tmp)
            for tname, tensor in tensors:
                spec = planned.pop(tname, None)
                if spec is None or tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                    raise InputError(
                        f"tensor {tname!r} is not planned as {tensor.dtype} {tuple(tensor.shape)} in {name}"
                    )
                data = tensor_bytes(tensor)
                layout.write_tensor(f, start, tname, data)
                if layout.needs_crc:
                    crcs[tname] = zlib.crc32(data)
            if planned:
                raise InputError(
                    f"{len(planned)} planned tensor(s) of {name} were never produced, e.g. {next(iter(planned))!r}"
                )
            layout.finish(f, start, crcs)
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        if size != start.size:
            raise InputError(f"piece {name} has {size} bytes, its layout says {start.size}", path=stage)
        digest = sha256_file(tmp)
        os.replace(tmp, stage / name)
        fsync_dir(stage)
    finally:
        tmp.unlink(missing_ok=True)
    return PieceFile(name, size, digest, start)
