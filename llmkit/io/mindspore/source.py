"""A MindSpore ``.ckpt`` as a tensor source (registered as ``mindspore``): one file, MindFormers names as
stored, split records joined, read without MindSpore (``llmkit.io.mindspore.reader``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.errors import InputError
from llmkit.io.core.regular import check_regular
from llmkit.io.core.source import TensorSource, register_source

if TYPE_CHECKING:
    from llmkit.io.mindspore.keys import CkptKey


def _ckpt(path: Path, key: CkptKey | None = None) -> TensorSource:
    """A MindSpore checkpoint: one file, MindFormers names as stored; no folder of config files (the
    folder a ``.ckpt`` sits in is not part of the model). ``key``: a ``keys.CkptKey`` if encrypted."""
    from llmkit.io.mindspore.reader import CkptFile

    check_regular(path, "a MindSpore .ckpt file")
    f = CkptFile(path, key)
    return TensorSource(path=path, layout="ckpt", files=[f], weight_map=dict.fromkeys(f.infos, f))


def _open_ckpt_file(path: Path, key: CkptKey | None = None) -> TensorSource | None:
    return _ckpt(path, key) if path.name.endswith(".ckpt") else None


def _open_ckpt_folder(folder: Path, key: CkptKey | None = None) -> TensorSource | None:
    """A folder holding exactly one ``.ckpt`` (and no weight file another format claimed first)."""
    ckpts = sorted(folder.glob("*.ckpt"))
    if len(ckpts) == 1:
        return _ckpt(ckpts[0], key)
    if ckpts:
        raise InputError(f"{len(ckpts)} .ckpt files in this folder", path=folder, hint="pass one .ckpt file")
    return None


register_source("mindspore", rank=40, open_file=_open_ckpt_file, open_folder=_open_ckpt_folder)
