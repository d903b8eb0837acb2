"""Hugging Face weight folders and files as tensor sources (registered as ``hf`` and ``hf-file``).

- a single ``*.safetensors`` file, or shards with ``model.safetensors.index.json``;
- a single ``pytorch_model.bin`` (or any torch zip file), or shards with ``pytorch_model.bin.index.json``;
- a peft adapter folder (``adapter_model.safetensors`` / ``.bin``, ``adapter_config.json``).

An index is checked against its shards before anything is read (a shard missing, a tensor in two shards
or in none). Memory: listing costs headers only; ``get`` materialises one tensor.
"""

from __future__ import annotations

from pathlib import Path

from llmkit.errors import InputError
from llmkit.io.core.jsonfile import read_json
from llmkit.io.core.regular import is_special
from llmkit.io.core.source import TensorFile, TensorSource, register_source
from llmkit.io.hf.adapter_config import AdapterInfo
from llmkit.io.hf.names import ADAPTER_CONFIG, BIN_INDEX, SAFETENSORS_INDEX, SHARD_RE
from llmkit.io.hf.safetensors import SafetensorsFile
from llmkit.io.hf.torchzip import TorchFile


def _weight_map(index_path: Path) -> dict[str, str]:
    """The index's ``weight_map`` (tensor name -> shard file name), checked for type."""
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
    return weight_map


def _check_shard(f: TensorFile, name: str, weight_map: dict[str, str]) -> None:
    """Shard ``name`` holds exactly the tensors the index assigns to it."""
    listed = {k for k, v in weight_map.items() if v == name}
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


def _open_indexed(index_path: Path) -> TensorSource:
    folder = index_path.parent
    weight_map = _weight_map(index_path)
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
        _check_shard(f, n, weight_map)
    layout = "safetensors-sharded" if index_path.name.endswith(".safetensors.index.json") else "bin-sharded"
    ext = ".safetensors" if layout.startswith("safetensors") else ".bin"
    extra = sorted(
        p.name for p in folder.iterdir() if p.name.endswith(ext) and SHARD_RE.match(p.name) and p.name not in files
    )
    warnings = [f"{folder / e}: shard file not named by {index_path.name}; it is ignored" for e in extra]
    # Keep the file order the index gives, tensor order within each file as stored.
    ordered: dict[str, TensorFile] = {}
    for n in names:
        for k in files[n].infos:
            ordered[k] = files[n]
    return TensorSource(
        path=index_path,
        layout=layout,
        files=list(files.values()),
        weight_map=ordered,
        folder=folder,
        warnings=warnings,
        index=index_path,
    )


def _single(path: Path) -> TensorSource:
    f = open_file(path)
    layout = "safetensors" if path.suffix == ".safetensors" else "bin"
    return TensorSource(path=path, layout=layout, files=[f], weight_map=dict.fromkeys(f.infos, f), folder=path.parent)


def open_file(path: Path) -> TensorFile:
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    return TorchFile(path)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")  # one weight file of any of these is read alone
_NAMED_FILES = (
    SAFETENSORS_INDEX,
    "model.safetensors",
    "adapter_model.safetensors",
    BIN_INDEX,
    "pytorch_model.bin",
    "adapter_model.bin",
)  # in the order a folder is asked for them


def _adapter_of(folder: Path) -> AdapterInfo | None:
    config = folder / ADAPTER_CONFIG
    return AdapterInfo.read(config) if config.is_file() or is_special(config) else None


def _open_index_file(path: Path, key: object = None) -> TensorSource | None:
    return _open_indexed(path) if path.name.endswith(".index.json") else None


def _open_named_folder(folder: Path, key: object = None) -> TensorSource | None:
    """A folder holding one of the file names transformers and peft write (an index first)."""
    adapter = _adapter_of(folder)
    for c in (folder / n for n in _NAMED_FILES):
        if c.is_file():
            src = _open_indexed(c) if c.name.endswith(".index.json") else _single(c)
            src.path = folder
            src.adapter = adapter
            return src
    return None


def _open_weight_file(path: Path, key: object = None) -> TensorSource | None:
    return _single(path) if path.suffix in WEIGHT_SUFFIXES else None


def _open_loose_folder(folder: Path, key: object = None) -> TensorSource | None:
    """A folder with one weight file of another name (several without an index are refused)."""
    singles = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if len(singles) == 1:
        src = _single(singles[0])
        src.adapter = _adapter_of(folder)
        return src
    if singles:
        raise InputError(
            f"{len(singles)} weight files but no index file",
            path=folder,
            hint=f"add the {SAFETENSORS_INDEX} / {BIN_INDEX} that came with them, or pass one file",
        )
    return None


# Named files and indexes before Meta's shards; a loose weight file of another name after them.
register_source("hf", rank=10, open_file=_open_index_file, open_folder=_open_named_folder)
register_source("hf-file", rank=30, open_file=_open_weight_file, open_folder=_open_loose_folder)
