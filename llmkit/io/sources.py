"""Tensor sources: list names, dtypes and shapes from headers, read one tensor at a time.

Every weight layout llmkit reads is a :class:`TensorSource`:

- a single ``*.safetensors`` file, or shards with ``model.safetensors.index.json``;
- a single ``pytorch_model.bin`` (or any torch zip file), or shards with ``pytorch_model.bin.index.json``;
- Meta ``consolidated.NN.pth`` shards with ``params.json`` (joined per SPEC.md section 4);
- a peft adapter folder (``adapter_model.safetensors`` / ``.bin``);
- a MindSpore ``.ckpt`` (``llmkit.io.ckpt``; split records joined, read without MindSpore).

Pickled files are opened with ``torch.load(mmap=True, weights_only=True)``: nothing in them is
executed, and tensor data stays in the (copy-on-write) file mapping until it is used.
Memory: listing costs headers only; :meth:`TensorSource.get` materialises one tensor.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmkit.errors import InputError
from llmkit.io.adapter_config import AdapterConfig
from llmkit.io.destination import broken_link
from llmkit.io.dtypes import st_code
from llmkit.io.jsonfile import read_json
from llmkit.io.regular import check_regular, is_special
from llmkit.io.tensorfiles import (  # noqa: F401 (re-exported: the readers of single files)
    MAX_HEADER_BYTES,
    SafetensorsFile,
    TensorFile,
    TensorInfo,
    TorchFile,
    open_file,
)

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class AdapterInfo:
    """What ``adapter_config.json`` says about a peft LoRA adapter (parsed by :class:`AdapterConfig`)."""

    r: int
    lora_alpha: float
    target_modules: list[str]
    modules_to_save: list[str]
    fan_in_fan_out: bool
    use_rslora: bool
    base_model: str | None
    peft_type: str

    @classmethod
    def read(cls, path: Path) -> AdapterInfo:
        cfg = AdapterConfig.read(path)
        targets = cfg.target_modules
        return cls(
            r=cfg.r,
            lora_alpha=cfg.lora_alpha,
            target_modules=sorted([targets] if isinstance(targets, str) else targets or []),
            modules_to_save=list(cfg.modules_to_save),
            fan_in_fan_out=cfg.fan_in_fan_out,
            use_rslora=cfg.use_rslora,
            base_model=cfg.base_model,
            peft_type=cfg.peft_type,
        )


@dataclass
class TensorSource:
    """A model or adapter as one ordered set of named tensors, whatever its files look like.

    ``layout`` is one of ``safetensors``, ``safetensors-sharded``, ``bin``, ``bin-sharded``,
    ``meta-pth``, ``ckpt`` (MindSpore, names as stored). ``folder`` holds the non-weight files (config, tokenizer), if any.
    """

    path: Path
    layout: str
    files: list[TensorFile]
    weight_map: dict[str, TensorFile]
    folder: Path | None = None
    warnings: list[str] = field(default_factory=list)
    adapter: AdapterInfo | None = None

    # ---- listing (no tensor data is read) ----
    def keys(self) -> list[str]:
        return list(self.weight_map)

    def info(self, name: str) -> TensorInfo:
        return self.weight_map[name].infos[name]

    def infos(self) -> list[TensorInfo]:
        return [self.info(k) for k in self.weight_map]

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def __len__(self) -> int:
        return len(self.weight_map)

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos())

    @property
    def weight_files(self) -> list[Path]:
        return [f.path for f in self.files]

    def config(self) -> dict | None:
        """``config.json`` beside the weights, if any."""
        p = self.folder / "config.json" if self.folder else None
        if p is not None and (p.is_file() or is_special(p)):  # a FIFO or device: refused by read_json
            cfg = read_json(p)
            assert isinstance(cfg, dict)
            return cfg
        return None

    # ---- data ----
    def get(self, name: str) -> torch.Tensor:
        """One tensor (its data read now; peak memory ~ this tensor)."""
        try:
            f = self.weight_map[name]
        except KeyError:
            raise InputError(f"no tensor named {name!r}", path=self.path) from None
        return f.get(name)

    def release(self, name: str) -> None:
        """Tell the source ``name`` has been used: mapped pages it kept resident are dropped."""
        if name in self.weight_map:
            self.weight_map[name].release(name)

    def prefetch(self, name: str) -> None:
        """Ask the OS to start reading ``name`` (mapped files only), e.g. while the previous one is used."""
        if name in self.weight_map:
            self.weight_map[name].prefetch(name)

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        """One tensor at a time, the next one prefetched; each is released when the loop moves on
        (do not keep a yielded tensor from a ``.bin`` and modify it in place after that)."""
        names = list(self.weight_map)
        for i, name in enumerate(names):
            if i + 1 < len(names):
                self.prefetch(names[i + 1])
            yield name, self.get(name)
            self.release(name)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RenamedSource(TensorSource):
    """``source`` under other names (``mapping``: stored name -> shown name, one to one), same order;
    closing it closes ``source``."""

    def __init__(self, source: TensorSource, mapping: dict[str, str]):
        self.inner = source
        self._stored = {mapping[k]: k for k in source.keys()}
        super().__init__(
            path=source.path,
            layout=source.layout,
            files=source.files,
            weight_map={mapping[k]: f for k, f in source.weight_map.items()},
            folder=source.folder,
            warnings=source.warnings,
            adapter=source.adapter,
        )

    def info(self, name: str) -> TensorInfo:
        i = self.inner.info(self._stored[name])
        return TensorInfo(name, i.dtype, i.shape, i.file)

    def get(self, name: str) -> torch.Tensor:
        if name not in self._stored:
            raise InputError(f"no tensor named {name!r}", path=self.path)
        return self.inner.get(self._stored[name])

    def release(self, name: str) -> None:
        if name in self._stored:
            self.inner.release(self._stored[name])

    def prefetch(self, name: str) -> None:
        if name in self._stored:
            self.inner.prefetch(self._stored[name])

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------- opening any layout

_SHARD_RE = re.compile(r"^(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)$")


def _open_indexed(index_path: Path) -> TensorSource:
    folder = index_path.parent
    index = read_json(index_path, what="the shard index", hint="download it again")
    assert isinstance(index, dict)
    weight_map = index.get("weight_map")
    if weight_map is None:
        raise InputError("not a valid shard index: it has no weight_map", path=index_path, hint="download it again")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
        raise InputError(
            "not a valid shard index: weight_map must map tensor names to shard file names",
            path=index_path,
            hint="download it again",
        )
    names = list(dict.fromkeys(weight_map.values()))
    missing = [n for n in names if not ((folder / n).is_file() or is_special(folder / n))]
    if missing:
        raise InputError(
            f"index names {len(missing)} missing shard(s): {', '.join(missing)}",
            path=index_path,
            hint="download the missing files again",
        )
    files = {n: open_file(folder / n) for n in names}
    for n, f in files.items():
        listed = {k for k, v in weight_map.items() if v == n}
        absent = sorted(listed - set(f.infos))
        if absent:
            raise InputError(
                f"shard lacks {len(absent)} tensor(s) the index assigns to it, e.g. {absent[0]!r}",
                path=f.path,
                hint="the shard and the index come from different versions; download both again",
            )
        unlisted = sorted(set(f.infos) - listed)
        twice = [k for k in unlisted if k in weight_map]
        if twice:  # the same tensor in two shards: which copy is the model's is not for llmkit to guess
            raise InputError(
                f"shard holds {twice[0]!r}, which the index assigns to {weight_map[twice[0]]}: the same "
                f"tensor is in two shards",
                path=f.path,
                hint="the shards come from different versions or runs; download them again",
            )
        if unlisted:
            raise InputError(
                f"shard holds {len(unlisted)} tensor(s) the index does not list, e.g. {unlisted[0]!r}",
                path=f.path,
                hint="the shard and the index come from different versions; download both again",
            )
    layout = "safetensors-sharded" if index_path.name.endswith(".safetensors.index.json") else "bin-sharded"
    ext = ".safetensors" if layout.startswith("safetensors") else ".bin"
    extra = sorted(
        p.name for p in folder.iterdir() if p.name.endswith(ext) and _SHARD_RE.match(p.name) and p.name not in files
    )
    warnings = [f"{folder / e}: shard file not named by {index_path.name}; it is ignored" for e in extra]
    # Keep the file order the index gives, tensor order within each file as stored.
    ordered: dict[str, TensorFile] = {}
    for n in names:
        for k in files[n].infos:
            ordered[k] = files[n]
    return TensorSource(
        path=index_path, layout=layout, files=list(files.values()), weight_map=ordered, folder=folder, warnings=warnings
    )


def _single(path: Path) -> TensorSource:
    f = open_file(path)
    layout = "safetensors" if path.suffix == ".safetensors" else "bin"
    return TensorSource(path=path, layout=layout, files=[f], weight_map=dict.fromkeys(f.infos, f), folder=path.parent)


def _ckpt(path: Path, key=None) -> TensorSource:
    """A MindSpore checkpoint: one file, MindFormers names as stored; no folder of config files (the
    folder a ``.ckpt`` sits in is not part of the model). ``key``: a ``ckpt_crypto.CkptKey`` if encrypted."""
    from llmkit.io.ckpt_reader import CkptFile

    check_regular(path, "a MindSpore .ckpt file")
    f = CkptFile(path, key)
    return TensorSource(path=path, layout="ckpt", files=[f], weight_map=dict.fromkeys(f.infos, f))


def _meta(folder: Path, shards: list[Path]) -> TensorSource:
    from llmkit.io.meta import MetaSource  # the Meta rules live in io/meta.py, which builds on this module

    return MetaSource(folder, folder, [TorchFile(p) for p in shards])


def open_source(path: str | os.PathLike, *, ckpt_key=None) -> TensorSource:
    """Open any supported weight layout at ``path`` (a file or a folder) without reading tensor data.
    ``ckpt_key`` (``llmkit.io.ckpt_crypto.CkptKey``) opens an encrypted MindSpore checkpoint."""
    path = Path(path)
    if not path.exists():
        problem = broken_link(path)
        if problem is not None:
            raise InputError(f"the path {problem}", path=path, hint="fix the link or pass the model itself")
        raise InputError("no such file or folder", path=path, hint="check the path")
    if not path.is_dir():
        check_regular(path, "a weight file or a model folder")
    if path.is_file():
        name = path.name
        if name.endswith(".index.json"):
            return _open_indexed(path)
        if name.endswith(".ckpt"):
            return _ckpt(path, ckpt_key)
        if re.fullmatch(r"consolidated\.\d+\.pth", name):
            shards = sorted(path.parent.glob("consolidated.*.pth"))
            return _meta(path.parent, shards if len(shards) > 1 else [path])
        if path.suffix in (".safetensors", ".bin", ".pth", ".pt"):
            return _single(path)
        raise InputError(
            "unknown weight file type", path=path, hint="expected .safetensors, .bin, .pth, .ckpt, or an *.index.json"
        )
    folder = path
    config = folder / ADAPTER_CONFIG
    adapter = AdapterInfo.read(config) if config.is_file() or is_special(config) else None
    candidates = [
        folder / SAFETENSORS_INDEX,
        folder / "model.safetensors",
        folder / "adapter_model.safetensors",
        folder / BIN_INDEX,
        folder / "pytorch_model.bin",
        folder / "adapter_model.bin",
    ]
    for c in candidates:
        if c.is_file():
            src = _open_indexed(c) if c.name.endswith(".index.json") else _single(c)
            src.path = folder
            src.adapter = adapter
            return src
    meta = sorted(folder.glob("consolidated.*.pth"))
    if meta:
        return _meta(folder, meta)
    singles = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not singles:
        ckpts = sorted(folder.glob("*.ckpt"))
        if len(ckpts) == 1:
            return _ckpt(ckpts[0], ckpt_key)
        if ckpts:
            raise InputError(f"{len(ckpts)} .ckpt files in this folder", path=folder, hint="pass one .ckpt file")
    if len(singles) == 1:
        src = _single(singles[0])
        src.adapter = adapter
        return src
    if singles:
        raise InputError(
            f"{len(singles)} weight files but no index file",
            path=folder,
            hint=f"add the {SAFETENSORS_INDEX} / {BIN_INDEX} that came with them, or pass one file",
        )
    encrypted = sorted(folder.glob("*.enc"))
    if encrypted:
        raise InputError(
            f"no weight files found, only {len(encrypted)} .enc file(s) (encrypted weights)",
            path=folder,
            hint=f"decrypt them first: llmkit decrypt {folder} --key <LLaMA-1 7B consolidated.00.pth> -o <new folder>",
        )
    raise InputError(
        "no weight files found",
        path=folder,
        hint="expected model.safetensors, model.safetensors.index.json, pytorch_model.bin(.index.json), "
        "consolidated.NN.pth, adapter_model.* or one .ckpt",
    )


def safetensors_code(info: TensorInfo) -> str:
    """Display name of a tensor's dtype (safetensors codes: F16, BF16, F32, ...)."""
    return st_code(info.dtype)
