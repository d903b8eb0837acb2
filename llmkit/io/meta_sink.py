"""A streaming writer for Meta's ``consolidated.NN.pth`` shards and ``params.json``.

Meta's layout (SPEC.md sections 3 and 4) is N torch zip files, one per model-parallel rank, each a flat
``{name: tensor}`` dict with the same names in the same order, plus ``params.json``. The files are laid
out exactly like ``.bin`` shards by :class:`~llmkit.io.sinks.ShardSetWriter` (``torch.save`` under
``skip_data``, bytes written into each ``data/N`` record as tensors arrive, CRCs patched at the end), with
the same safe writes: temporary names, checks, rename at the end, nothing left behind on error.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import torch

from llmkit.errors import InputError
from llmkit.io.sinks import ShardSetWriter, TensorSpec

PARAMS_JSON = "params.json"


def meta_shard_name(index: int) -> str:
    return f"consolidated.{index:02d}.pth"


class MetaShardWriter(ShardSetWriter):
    """Write ``consolidated.00.pth`` ... and ``params.json``; a context manager.

    ``shard_specs[i]`` lists the tensors of shard ``i`` in file order. Use ``w.write(i, name, tensor)``
    in any order; on a clean exit the files are checked and renamed to their final names.
    """

    def __init__(self, out_dir: str | os.PathLike, shard_specs: list[list[TensorSpec]], *, params: dict,
                 force: bool = False, extra_bytes: int = 0,
                 inputs: Iterable[str | os.PathLike | None] | None = None):
        if not shard_specs:
            raise InputError("a Meta checkpoint needs at least one shard")
        super().__init__(out_dir, [(meta_shard_name(i), specs) for i, specs in enumerate(shard_specs)],
                         fmt="bin", force=force, inputs=inputs)
        self.smaller_files = "use more --pth-shards"
        self.files.append(PARAMS_JSON)
        self.add_file(PARAMS_JSON, (json.dumps(params) + "\n").encode())
        self._check_destination(extra_bytes)

    def write(self, shard: int, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor of shard ``shard``; it must have the planned dtype and shape."""
        self.write_to(shard, name, tensor)
