"""The ``meta-pth`` sink (:class:`MetaPthSink`): HF-named tensors in, ``consolidated.NN.pth`` +
``params.json`` out: names mapped, wq/wk un-permuted, tensors split across the model-parallel shards.
The files are torch zips (``hf.torchzip.TorchZipLayout``) written by the safe writer (``llmkit.io.core.writer``).
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


@register_sink("meta-pth", owns=re.compile(r"^(consolidated\.\d+\.pth|params\.json)$"))
class MetaPthSink(ShardSetWriter):
    """HF-named LLaMA tensors in; Meta ``consolidated.NN.pth`` shards and ``params.json`` out; a context
    manager (on a clean exit the files are checked and renamed to their final names).

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
        config_path: str | os.PathLike[str] | None = None,
    ):
        params = meta_params(config, config_path)
        self.mp_shards = shards or default_meta_shards(params["dim"])  # model-parallel shard count
        kv = params.get("n_kv_heads", params["n_heads"])
        check_rotary_heads({s.name: s.shape for s in specs}, params["n_heads"], kv, path=config_path)
        if params["n_heads"] % self.mp_shards or kv % self.mp_shards:
            raise InputError(
                f"{self.mp_shards} model-parallel shards do not divide the model's {params['n_heads']} "
                f"attention heads ({kv} key/value heads)",
                hint="choose a shard count that divides the heads (Meta: 7B 1, 13B 2, 33B 4, 65B 8)",
            )
        self._heads = {"attention.wq.weight": params["n_heads"], "attention.wk.weight": kv}
        model = Path(config_path).parent if config_path is not None else None
        self._names = {s.name: m for s in specs if (m := hf_to_meta_name(s.name, model)) is not None}
        shard_specs: list[list[TensorSpec]] = [[] for _ in range(self.mp_shards)]
        for s in specs:
            meta = self._names.get(s.name)
            if meta is not None:
                for i, shape in enumerate(meta_split_sizes(meta, s.shape, self.mp_shards)):
                    shard_specs[i].append(TensorSpec(meta, s.dtype, shape))
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

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one HF-named planned tensor: renamed, wq/wk un-permuted, split over the shards."""
        meta = self._names.get(name)
        if meta is None:
            return  # a buffer Meta's layout has no place for
        leaf = ".".join(meta.split(".")[-3:])
        if leaf in self._heads:  # HF rotate-half -> Meta's interleaved rotary rows
            tensor = unpermute_hf_to_meta(tensor, self._heads[leaf])
        for i, piece in enumerate(meta_split(meta, tensor, self.mp_shards)):
            self.write_to(i, meta, piece)

    def _aux_names(self, only: Iterable[str] | None, skip: Iterable[str]) -> list[str]:
        """Tokenizer files only, in their usual order: ``params.json`` takes the place of the config."""
        wanted = set(TOKENIZER_FILES if only is None else only) - set(skip)
        return [n for n in TOKENIZER_FILES if n in wanted]
