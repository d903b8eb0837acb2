"""The ``meta-pth`` sink (:class:`MetaPthSink`): HF-named tensors in, ``consolidated.NN.pth`` +
``params.json`` out: names mapped, wq/wk un-permuted, tensors split across the model-parallel shards.
The files are torch zips (``hf.torchzip.TorchZipLayout``), with the same safe writes as every sink.
Streaming: peak memory is about one tensor.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from llmkit.errors import InputError
from llmkit.io.core.files import TOKENIZER_FILES
from llmkit.io.core.sink import register_sink
from llmkit.io.core.spec import TensorSpec
from llmkit.io.core.writer import ShardSetWriter
from llmkit.io.hf.torchzip import TorchZipLayout
from llmkit.io.meta.names import check_rotary_heads, hf_to_meta_name, meta_split, meta_split_sizes, unpermute_hf_to_meta
from llmkit.io.meta.params import PARAMS_JSON, default_meta_shards, meta_params


def meta_shard_name(index: int) -> str:
    return f"consolidated.{index:02d}.pth"


class MetaShardWriter(ShardSetWriter):
    """Write ``consolidated.00.pth`` ... and ``params.json``; a context manager.

    ``shard_specs[i]`` lists the tensors of shard ``i`` in file order. Use ``w.write(i, name, tensor)``
    in any order; on a clean exit the files are checked and renamed to their final names.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        shard_specs: list[list[TensorSpec]],
        *,
        params: dict,
        force: bool = False,
        extra_bytes: int = 0,
        inputs: Iterable[str | os.PathLike | None] | None = None,
    ):
        if not shard_specs:
            raise InputError("a Meta checkpoint needs at least one shard")
        super().__init__(
            out_dir,
            [(meta_shard_name(i), specs) for i, specs in enumerate(shard_specs)],
            fmt="meta-pth",
            force=force,
            inputs=inputs,
            layout=TorchZipLayout(),
        )
        self.smaller_files = "write more, smaller shards (to-meta --shards, merge-lora --pth-shards)"
        self.files.append(PARAMS_JSON)
        self.add_file(PARAMS_JSON, (json.dumps(params) + "\n").encode())
        self._check_destination(extra_bytes)

    def write(self, shard: int, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor of shard ``shard``; it must have the planned dtype and shape."""
        self.write_to(shard, name, tensor)


@register_sink("meta-pth", owns=re.compile(r"^(consolidated\.\d+\.pth|params\.json)$"))
class MetaPthSink:
    """HF-named LLaMA tensors in; Meta ``consolidated.NN.pth`` shards and ``params.json`` out.

    Given the HF specs up front (as every sink), it maps names, un-permutes wq/wk to Meta's interleaved
    rotary rows and splits each tensor over ``shards`` files (default: Meta's count for the hidden size).
    Tensors Meta has no place for (``rotary_emb.inv_freq``) are dropped; ``config.json`` becomes
    ``params.json``, so only tokenizer files are carried.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        specs: list[TensorSpec],
        *,
        config: dict,
        shards: int | None = None,
        force: bool = False,
        extra_bytes: int = 0,
        inputs: Iterable[str | os.PathLike | None] | None = None,
        config_path: object = None,
    ):
        params = meta_params(config, config_path)
        self.shards = shards or default_meta_shards(params["dim"])
        kv = params.get("n_kv_heads", params["n_heads"])
        check_rotary_heads({s.name: s.shape for s in specs}, params["n_heads"], kv, path=config_path)
        if params["n_heads"] % self.shards or kv % self.shards:
            raise InputError(
                f"{self.shards} model-parallel shards do not divide the model's {params['n_heads']} "
                f"attention heads ({kv} key/value heads)",
                hint="choose a shard count that divides the heads (Meta: 7B 1, 13B 2, 33B 4, 65B 8)",
            )
        self._heads = {
            "attention.wq.weight": params["n_heads"],
            "attention.wk.weight": params.get("n_kv_heads", params["n_heads"]),
        }
        model = Path(str(config_path)).parent if config_path is not None else None
        self._names = {s.name: m for s in specs if (m := hf_to_meta_name(s.name, model)) is not None}
        shard_specs: list[list[TensorSpec]] = [[] for _ in range(self.shards)]
        for s in specs:
            meta = self._names.get(s.name)
            if meta is not None:
                for i, shape in enumerate(meta_split_sizes(meta, s.shape, self.shards)):
                    shard_specs[i].append(TensorSpec(meta, s.dtype, shape))
        self._writer = MetaShardWriter(
            out_dir, shard_specs, params=params, force=force, extra_bytes=extra_bytes, inputs=inputs
        )

    @property
    def files(self) -> list[str]:
        return self._writer.files

    def __getattr__(self, name: str):  # total_size, free_disk_bytes, space_margin, needed_disk_bytes
        if name in (
            "total_size",
            "free_disk_bytes",
            "space_margin",
            "needed_disk_bytes",
            "out_dir",
            "kept_files",
            "replaced_files",
        ):
            return getattr(self._writer, name)
        raise AttributeError(name)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        meta = self._names.get(name)
        if meta is None:
            return  # a buffer Meta's layout has no place for
        leaf = ".".join(meta.split(".")[-3:])
        if leaf in self._heads:  # HF rotate-half -> Meta's interleaved rotary rows
            tensor = unpermute_hf_to_meta(tensor, self._heads[leaf])
        for i, piece in enumerate(meta_split(meta, tensor, self.shards)):
            self._writer.write_to(i, meta, piece)

    def add_file(self, name: str, data: bytes) -> None:
        self._writer.add_file(name, data)

    def copy_aux_files(
        self,
        folder: Path | None,
        *,
        dtype: torch.dtype | None = None,
        vocab_size: int | None = None,
        skip: Iterable[str] = (),
        only: Iterable[str] | None = None,
    ) -> list[str]:
        wanted = set(TOKENIZER_FILES if only is None else only) - set(skip)
        return self._writer.copy_files(folder, [n for n in TOKENIZER_FILES if n in wanted])

    def __enter__(self) -> MetaPthSink:
        self._writer.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.__exit__(exc_type, exc, tb)
