"""The ``ckpt`` sink: one MindSpore ``.ckpt`` file, written by the safe writer (``llmkit.io.core.writer``).

``-o`` names a file, not a folder: the file is staged under a hidden name beside it
(:class:`~llmkit.io.core.staging.StagedFile`, with the output's claim), fsynced and renamed when every tensor
is in and its size checks out; nothing else in that folder is touched
(``--force`` replaces only this file). The bytes are those of ``mindspore.save_checkpoint``
(:class:`~llmkit.io.mindspore.ckpt.CkptLayout`); ``crc=True`` adds the CRC trailer; ``enc_key`` (a
``ckpt_crypto.CkptKey``) encrypts it in ``enc_mode`` blocks as ``save_checkpoint(enc_key=...)`` does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from llmkit.errors import InputError
from llmkit.io.core.destination import ensure_output_file_is_new
from llmkit.io.core.sink import register_sink
from llmkit.io.core.spec import TensorSpec
from llmkit.io.core.staging import Staging, staged_output
from llmkit.io.core.writer import ShardSetWriter
from llmkit.io.mindspore.ckpt import CkptLayout
from llmkit.units import check_space, free_bytes


class CkptSink(ShardSetWriter):
    """Write planned tensors, in plan order, as the one ``.ckpt`` file ``path``; a context manager."""

    def __init__(
        self,
        path: str | os.PathLike,
        specs: list[TensorSpec],
        *,
        force: bool = False,
        inputs: Iterable[str | os.PathLike | None] | None = None,
        extra_bytes: int = 0,
        crc: bool = False,
        enc_key: Any = None,
        enc_mode: str = "AES-GCM",
    ):
        self.path = Path(path)
        layout = CkptLayout(crc, enc_key, enc_mode)
        super().__init__(
            self.path.parent,
            [(self.path.name, list(specs))],
            fmt="ckpt",
            layout=layout,
            force=force,
            metadata={},
            inputs=inputs,
        )
        self.total_size = layout.file_size(list(specs))  # file bytes: records and trailer, or encrypted blocks
        self._names = {s.name for s in specs}
        self.write_order = [s.name for s in specs]  # records follow each other: tensors in plan order
        self._check_destination(extra_bytes)

    def _make_staging(self) -> Staging:
        return staged_output(self.path, one_file=True, force=self.force)

    def _check_destination(self, extra_bytes: int) -> None:
        if self._staging.remote:
            self._check_remote_destination(extra_bytes)
            return
        ensure_output_file_is_new(self.path, self.inputs or [])
        self._existing = self._staging.check()  # exists without --force, or is not a regular file
        need = self.total_size + extra_bytes
        self.free_disk_bytes = free_bytes(self.out_dir)
        self.space_margin = check_space(self.out_dir, need, self.free_disk_bytes)
        self.needed_disk_bytes = need + self.space_margin

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if name not in self._names:
            raise InputError(f"tensor {name!r} is not in the output plan")
        self.write_to(0, name, tensor)

    def add_file(self, name: str, data: bytes) -> None:
        raise InputError(f"a .ckpt output holds tensors only; {name} has no place in it")

    def _aux_names(self, only: Iterable[str] | None, skip: Iterable[str]) -> list[str]:
        return []  # a .ckpt output carries no config or tokenizer files


register_sink("ckpt")(CkptSink)
