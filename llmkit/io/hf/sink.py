"""The ``safetensors`` and ``bin`` sinks: :class:`ShardedWriter`, HF-style shards of at most
``shard_size`` bytes (``model-00001-of-00002.safetensors`` ..., with ``model.safetensors.index.json``
when there are several), written by the safe writer (``llmkit.io.core.writer``).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable

import torch

from llmkit.errors import InputError
from llmkit.io.core.sink import register_sink
from llmkit.io.core.spec import TensorSpec
from llmkit.io.core.writer import ShardSetWriter, plan_shards
from llmkit.io.hf.names import index_name, shard_names
from llmkit.io.hf.safetensors import SafetensorsLayout
from llmkit.io.hf.torchzip import TorchZipLayout
from llmkit.units import DEFAULT_SHARD_SIZE


class ShardedWriter(ShardSetWriter):
    """Write a planned set of tensors as HF-style shards; a context manager.

    ``with ShardedWriter(out, specs) as w: w.write(name, tensor) ...`` — on a clean exit the files
    are checked and renamed to their final names; on an exception nothing is left behind.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        specs: list[TensorSpec],
        *,
        fmt: str = "safetensors",
        shard_size: int = DEFAULT_SHARD_SIZE,
        force: bool = False,
        metadata: dict[str, str] | None = None,
        extra_bytes: int = 0,
        inputs: Iterable[str | os.PathLike | None] | None = None,
    ):
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise InputError(f"tensor {dup!r} planned twice")
        if fmt not in ("safetensors", "bin"):
            raise InputError(f"unknown output format {fmt!r}", hint="use safetensors or bin")
        plan = plan_shards(specs, shard_size)
        super().__init__(
            out_dir,
            list(zip(shard_names(fmt, len(plan)), plan, strict=True)),
            fmt=fmt,
            force=force,
            metadata=metadata,
            inputs=inputs,
            layout=SafetensorsLayout() if fmt == "safetensors" else TorchZipLayout(),
        )
        self._shard_of = {s.name: i for i, sh in enumerate(self.shards) for s in sh.specs}
        self.smaller_files = "use a smaller --shard-size"
        if len(self.shards) > 1:
            self.files.append(index_name(fmt))
        self._check_destination(extra_bytes)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor; it must have the planned dtype and shape."""
        if name not in self._shard_of:
            raise InputError(f"tensor {name!r} is not in the output plan")
        self.write_to(self._shard_of[name], name, tensor)

    def _index_files(self) -> dict[str, bytes]:
        if len(self.shards) == 1:
            return {}
        index = {
            "metadata": {"total_size": self.total_size},
            "weight_map": {s.name: sh.name for sh in self.shards for s in sh.specs},
        }
        return {index_name(self.fmt): (json.dumps(index, indent=2) + "\n").encode()}


register_sink("safetensors", owns=re.compile(r"^model.*\.safetensors(\.index\.json)?$"))(
    functools.partial(ShardedWriter, fmt="safetensors")
)
register_sink("bin", owns=re.compile(r"^pytorch_model.*\.bin(\.index\.json)?$"))(
    functools.partial(ShardedWriter, fmt="bin")
)
