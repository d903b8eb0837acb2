"""The ``gguf`` sink: a LLaMA as the GGUF file llama.cpp and ollama run, written by the safe writer.

``-o model.gguf`` is one file, staged under a hidden name beside it and renamed when complete (as the ``ckpt``
sink); with ``split_max_size`` the output is a folder of llama.cpp's ``NAME-0000N-of-0000M.gguf`` files (the
split rule of ``gguf.GGUFWriter``), made final in one rename. Planned tensors arrive under Hugging Face names;
the sink stores them under llama.cpp's names, q/k rows interleaved, each as its ``--outtype`` type
(``llmkit.io.gguf.types``). The header (metadata and every tensor's offset) needs the side files (config,
tokenizer), which the runner hands over before any tensor (:meth:`GGUFSink.side_files_ready`); then every
tensor is converted, one at a time, and written to its place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from llmkit.errors import InputError
from llmkit.io.core.destination import ensure_output_file_is_new
from llmkit.io.core.layout import FileLayout, FileStart
from llmkit.io.core.sink import register_sink
from llmkit.io.core.spec import TensorSpec
from llmkit.io.core.staging import Staging, staged_output
from llmkit.io.core.writer import ShardSetWriter, plan_shards
from llmkit.io.gguf.metadata import GGUFTensor, gguf_writer, header_bytes
from llmkit.io.gguf.names import DROPPED, gguf_name, rotary_role, to_interleaved
from llmkit.io.gguf.quant import quantize
from llmkit.io.gguf.types import OutType, parse_outtype, tensor_nbytes, tensor_type
from llmkit.units import DEFAULT_SHARD_SIZE, check_space, free_bytes

ALIGNMENT = 32  # gguf.GGUF_DEFAULT_ALIGNMENT: the header and every tensor are padded to it
HEADER_ALLOWANCE = 4 << 20  # bytes counted for the header until the side files are known (a 50k vocab: ~1 MiB)


def pad(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


class GGUFLayout(FileLayout):
    """A GGUF file: the header the sink computed, padding, then each tensor at its padded offset."""

    name = "gguf"

    def __init__(self, sink: GGUFSink):
        self.sink = sink

    def start(self, f: BinaryIO, path: Path, specs: list[TensorSpec], metadata: dict[str, str] | None) -> FileStart:
        header = self.sink.header_of(specs)
        f.write(header + bytes(pad(len(header)) - len(header)))
        offsets, at = {}, pad(len(header))
        for s in specs:
            offsets[s.name] = at
            at += pad(s.nbytes)
        f.truncate(at)
        return FileStart(offsets, at, {})


class GGUFSink(ShardSetWriter):
    """Write planned HF-named LLaMA tensors as one GGUF file (or a folder of splits); a context manager."""

    wants_side_files_first = True  # the runner hands config and tokenizer over before opening the report
    carries_side_files = False  # they go into the header: the output is the .gguf file(s) alone

    def __init__(
        self,
        path: str | os.PathLike,
        specs: list[TensorSpec],
        *,
        force: bool = False,
        inputs: Iterable[str | os.PathLike | None] | None = None,
        extra_bytes: int = 0,
        outtype: str | OutType = "f16",
        split_max_size: int = 0,
        model_name: str | None = None,
        display_name: str | None = None,
        order: list[str] | None = None,
    ):
        self.path = Path(path)
        self.planned_specs = {s.name: s for s in specs}  # HF names, as the plan produces them
        self.outtype = outtype if isinstance(outtype, OutType) else parse_outtype(outtype)
        self.split = split_max_size > 0
        self.tensors = _plan_tensors(
            folder_order(specs) if order is None else _ordered(specs, order), self.outtype, self.path
        )
        byte_specs = [TensorSpec(t.name, torch.uint8, (t.nbytes,)) for t in self.tensors.values()]
        groups = plan_shards(byte_specs, split_max_size) if self.split else [byte_specs]
        names = [self.path.name] if not self.split else split_names(self.path.name, len(groups))
        super().__init__(
            self.path if self.split else self.path.parent,
            list(zip(names, groups, strict=True)),
            fmt="gguf",
            layout=GGUFLayout(self),
            force=force,
            metadata={},
            inputs=inputs,
        )
        self.split_max_size = split_max_size
        self.model_name = model_name
        self.display_name = display_name
        self._side: dict[str, bytes] = {}
        self._headers: list[bytes] | None = None
        self._heads: dict[str, int] | None = None
        self._shard_of = {s.name: i for i, sh in enumerate(self.shards) for s in sh.specs}
        self.total_size = sum(pad(s.nbytes) for s in byte_specs) + HEADER_ALLOWANCE * len(groups)
        self._extra = extra_bytes
        self._check_destination(extra_bytes)

    # ---- where the output goes ----
    def _make_staging(self) -> Staging:
        return staged_output(
            self.path, one_file=not self.split, writes=self._writes, owned=self._owned, force=self.force
        )

    def _owned(self, name: str) -> bool:
        return name.endswith(".gguf")

    def _check_destination(self, extra_bytes: int) -> None:
        if self.split or self._staging.remote:
            super()._check_destination(extra_bytes)
            return
        ensure_output_file_is_new(self.path, self.inputs or [])
        self._existing = self._staging.check()
        need = self.total_size + extra_bytes
        self.free_disk_bytes = free_bytes(self.path.parent)
        self.space_margin = check_space(self.path.parent, need, self.free_disk_bytes)
        self.needed_disk_bytes = need + self.space_margin

    # ---- the side files: the header's metadata ----
    def add_file(self, name: str, data: bytes) -> None:
        """A side file (config, tokenizer): read into the header's metadata; GGUF stores no files."""
        self._side[name] = data
        self._headers = self._heads = None

    def side_files_ready(self) -> None:
        """Fix the header now that config and tokenizer are known: exact sizes, the disk check again."""
        self._headers = None
        headers = self._header_list()
        self.total_size = sum(
            pad(len(h)) + sum(pad(s.nbytes) for s in sh.specs) for h, sh in zip(headers, self.shards, strict=True)
        )
        self._check_destination(self._extra)

    def _header_list(self) -> list[bytes]:
        if self._headers is None:
            infos = list(self.tensors.values())
            name = self.model_name or (self.path.name if self.split else self.path.stem)
            w = gguf_writer(
                self._side,
                infos,
                self.outtype,
                model_name=name,
                display_name=self.display_name,
                split_max_size=self.split_max_size,
            )
            self._headers = header_bytes(w)
            if len(self._headers) != len(self.shards):
                raise AssertionError("the gguf writer split the tensors differently")
        return self._headers

    def header_of(self, specs: list[TensorSpec]) -> bytes:
        """The header of the file holding ``specs``."""
        index = next(i for i, sh in enumerate(self.shards) if sh.specs is specs or sh.specs == specs)
        return self._header_list()[index]

    # ---- tensors ----
    def _file_order(self) -> list[str]:
        """HF names in file order (the tensors GGUF drops, rotary tables, are not written at all)."""
        at = {s.name: (i, j) for i, sh in enumerate(self.shards) for j, s in enumerate(sh.specs)}
        return sorted(self.tensors, key=lambda hf: at[self.tensors[hf].name])

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if DROPPED.search(name):
            return
        t = self.tensors.get(name)
        if t is None:
            raise InputError(f"tensor {name!r} is not in the output plan")
        data = tensor_data(name, tensor, t.ttype, self.heads())
        self.write_to(self._shard_of[t.name], t.name, torch.from_numpy(data))

    def _config(self) -> dict:
        cfg = self._side.get("config.json")
        return json.loads(cfg) if cfg else {}

    def heads(self) -> dict[str, int]:
        """:func:`rotary_heads` of the side files' config (a Ray range task is handed them)."""
        if self._heads is None:
            self._heads = rotary_heads(self._config())
        return self._heads


def rotary_heads(cfg: dict) -> dict[str, int]:
    """q/k -> the heads its rows are interleaved by: ``num_attention_heads`` (k: ``num_key_value_heads`` when
    the config has it); empty for a config without heads (no q/k tensor can be converted then)."""
    if "num_attention_heads" not in cfg:
        return {}
    heads = cfg["num_attention_heads"]
    return {"q": heads, "k": cfg.get("num_key_value_heads", heads)}


def tensor_data(hf: str, tensor: torch.Tensor, ttype: int, heads: dict[str, int]) -> np.ndarray:
    """The bytes GGUF stores for the HF tensor ``hf`` as GGML type ``ttype`` (flat uint8, unpadded): q/k rows
    interleaved by ``heads`` (:func:`rotary_heads`), then quantized. The one conversion of the sink and of a
    Ray range task (``llmkit.cluster.gguf_ranges``)."""
    role = rotary_role(hf)
    if role is not None:
        tensor = to_interleaved(tensor, heads[role])
    return quantize(tensor, ttype)


def split_names(stem: str, count: int) -> list[str]:
    """The files of a split output in the ``-o`` folder ``stem``: llama.cpp's names (``gguf.GGUFWriter``'s)."""
    return [f"{stem}.gguf"] if count == 1 else [f"{stem}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def folder_order(specs: list[TensorSpec]) -> list[TensorSpec]:
    """``specs`` in the order ``convert_hf_to_gguf.py`` would read them from the Hugging Face folder llmkit
    writes of them (5 GB shards filled in plan order, each file's tensors sorted by name): so a job's GGUF is
    the converter's file of the folder the job writes without ``--format gguf``, fused, piped or not."""
    return [s for shard in plan_shards(list(specs), DEFAULT_SHARD_SIZE) for s in sorted(shard, key=lambda s: s.name)]


def _ordered(specs: list[TensorSpec], order: list[str]) -> list[TensorSpec]:
    place = {n: i for i, n in enumerate(order)}
    return sorted(specs, key=lambda s: place.get(s.name, len(place)))


def _plan_tensors(specs: list[TensorSpec], outtype: OutType, path: Path) -> dict[str, GGUFTensor]:
    """HF name -> the GGUF tensor it becomes, in plan order; a name llama.cpp's LLaMA has no place for is refused."""
    tensors: dict[str, GGUFTensor] = {}
    for s in specs:
        if DROPPED.search(s.name):
            continue
        name = gguf_name(s.name)
        if name is None:
            raise InputError(
                f"tensor {s.name!r} has no place in llama.cpp's LLaMA layout",
                path=path,
                hint="--format gguf writes LLaMA models only; write safetensors instead",
            )
        ttype = tensor_type(name, tuple(s.shape), outtype)
        tensors[s.name] = GGUFTensor(name, tuple(s.shape), ttype, tensor_nbytes(tuple(s.shape), ttype))
    return tensors


def _factory(out: Any, specs: list[TensorSpec], **kw: Any) -> GGUFSink:
    return GGUFSink(out, specs, **kw)


register_sink("gguf")(_factory)
