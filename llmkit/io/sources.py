"""Tensor sources: list names, dtypes and shapes from headers, read one tensor at a time.

Every weight layout llmkit reads is a :class:`TensorSource`:

- a single ``*.safetensors`` file, or shards with ``model.safetensors.index.json``;
- a single ``pytorch_model.bin`` (or any torch zip file), or shards with ``pytorch_model.bin.index.json``;
- Meta ``consolidated.NN.pth`` shards with ``params.json`` (joined per SPEC.md section 4);
- a peft adapter folder (``adapter_model.safetensors`` / ``.bin``).

Pickled files are opened with ``torch.load(mmap=True, weights_only=True)``: nothing in them is
executed, and tensor data stays in the (copy-on-write) file mapping until it is used.
Memory: listing costs headers only; :meth:`TensorSource.get` materialises one tensor.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import pickle
import re
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import torch

from llmkit.errors import InputError, UnsafeFileError
from llmkit.io.destination import broken_link
from llmkit.io.dtypes import ST_TO_TORCH, st_code
from llmkit.io.jsonfile import read_json

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
ADAPTER_CONFIG = "adapter_config.json"
# A safetensors header larger than this is corrupt (the Rust reader's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's name, dtype and shape, known without reading its data."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


class TensorFile:
    """One weight file. Subclasses fill ``infos`` at open time and read data in ``get``."""

    path: Path
    infos: dict[str, TensorInfo]

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def release(self, name: str) -> None:
        """Drop memory this file still holds for ``name`` after it was used (no-op unless mapped)."""

    def prefetch(self, name: str) -> None:
        """Start reading ``name`` from disk in the background (no-op unless mapped)."""

    def close(self) -> None:
        pass


def _read_safetensors_header(path: Path) -> tuple[dict, int]:
    """Parse and validate a safetensors header; return (header, data start offset in bytes)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError("not a safetensors file: shorter than its 8-byte header length",
                             path=path, hint="the file is truncated; download it again")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise InputError(f"corrupt safetensors header (declares {n} header bytes, file has {size})",
                             path=path, hint="the file is truncated or not safetensors; download it again")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"corrupt safetensors header: {e}", path=path,
                         hint="the file is damaged; download it again") from None
    if not isinstance(header, dict):
        raise InputError("corrupt safetensors header: not a JSON object", path=path)
    data_len = size - 8 - n
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = entry["data_offsets"]
            dtype = entry["dtype"]
            shape = entry["shape"]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"corrupt safetensors header entry for {name!r}", path=path) from None
        if dtype not in ST_TO_TORCH:
            raise InputError(f"tensor {name!r} has dtype {dtype}, which llmkit cannot handle", path=path)
        end = max(end, stop)
    if end > data_len:
        raise InputError(
            f"file is truncated: its header describes {end} bytes of tensor data but only {data_len} are present",
            path=path, hint="download it again")
    if end < data_len:
        raise InputError(f"corrupt safetensors file: {data_len - end} unexpected bytes after the tensor data",
                         path=path, hint="download it again")
    return header, 8 + n


class SafetensorsFile(TensorFile):
    """A ``.safetensors`` file: header validated by llmkit and by ``safe_open``; data read with ``readinto``.

    ``get`` reads one tensor's bytes straight into a fresh tensor (one copy, no file mapping), so
    the resident memory of a read is the tensor itself, not the tensor plus mapped file pages.
    """

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = path
        header, self._data_start = _read_safetensors_header(path)
        self.metadata: dict[str, str] = header.get("__metadata__") or {}
        entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                         key=lambda kv: kv[1]["data_offsets"][0])
        self.infos = {k: TensorInfo(k, ST_TO_TORCH[v["dtype"]], tuple(v["shape"]), path) for k, v in entries}
        self._offsets = {k: tuple(v["data_offsets"]) for k, v in entries}
        try:  # the reference parser's own validation (overlaps, holes, shapes vs offsets)
            with safe_open(str(path), framework="pt", device="cpu"):
                pass
        except Exception as e:  # safetensors raises its own SafetensorError
            raise InputError(f"cannot open safetensors file: {e}", path=path,
                             hint="the file is damaged; download it again") from None
        self._handle: BinaryIO | None = open(path, "rb")

    def get(self, name: str) -> torch.Tensor:
        info = self.infos[name]
        begin, end = self._offsets[name]
        tensor = torch.empty(info.shape, dtype=info.dtype)
        if end > begin:
            assert self._handle is not None
            view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            self._handle.seek(self._data_start + begin)
            done = 0
            while done < len(view):  # one read() returns at most ~2 GB on Linux
                got = self._handle.readinto(view[done:])
                if not got:
                    raise InputError(f"file shrank while reading tensor {name!r}", path=self.path)
                done += got
        return tensor

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _explain_torch_load_error(path: Path, err: Exception) -> InputError:
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) or "Weights only load failed" in text:
        what = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"GLOBAL ([\w.]+)", text)
        detail = f" (it references {what.group(1)})" if what else ""
        return UnsafeFileError(
            f"refused to load: the pickle contains objects other than tensors{detail}; nothing in it was run",
            path=path, hint="only load weights from sources you trust; ask for a safetensors version")
    if "central directory" in text or "zip archive" in text or isinstance(err, zipfile.BadZipFile):
        return InputError("not a readable torch zip archive (truncated or corrupt)", path=path,
                          hint="download the file again")
    if "mmap" in text and "zipfile" in text:
        return InputError("legacy (pre-1.6) torch file format cannot be read lazily", path=path,
                          hint="re-save it with a current torch or convert it to safetensors")
    return InputError(f"cannot read torch file: {text.splitlines()[0] if text else type(err).__name__}",
                      path=path, hint="the file may be damaged; download it again")


class TorchFile(TensorFile):
    """A torch zip file (``.bin``/``.pth``/``.pt``) holding a flat ``{name: tensor}`` dict.

    Loaded with ``weights_only=True`` (no code runs) and ``mmap=True`` (data stays on disk).
    """

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except IsADirectoryError:
            raise InputError("expected a file, found a folder", path=path) from None
        if magic[:2] != b"PK":
            raise InputError("not a torch zip archive (legacy or corrupt torch file)", path=path,
                             hint="re-save it with torch>=1.6 or download it again")
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:
            raise _explain_torch_load_error(path, e) from None
        if not isinstance(state, dict):
            raise InputError(f"expected a dict of tensors, found {type(state).__name__}", path=path)
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise InputError(f"not a flat state dict: entry {bad[0]!r} is not a tensor", path=path,
                             hint="llmkit reads {name: tensor} checkpoints")
        self._state: dict[str, torch.Tensor] | None = state
        self.infos = {k: TensorInfo(k, v.dtype, tuple(v.shape), path) for k, v in state.items()}

    def get(self, name: str) -> torch.Tensor:
        assert self._state is not None
        return self._state[name]

    def release(self, name: str) -> None:
        # torch.load(mmap=True) maps the whole file privately and every page a tensor touched stays in
        # the process's RSS until the file is closed: 10 GB for one ZhiXi shard. MADV_DONTNEED drops
        # them; they would be re-read from the file (llmkit never writes into input mappings).
        _PAGES.advise(self, name, _MADV_DONTNEED)

    def prefetch(self, name: str) -> None:
        _PAGES.advise(self, name, _MADV_WILLNEED)

    def close(self) -> None:
        self._state = None
        _PAGES.forget(self.path)


_MADV_WILLNEED = 3
_MADV_DONTNEED = 4


class _PageAdvisor:
    """``madvise`` on the whole pages inside a tensor of a memory-mapped torch file (Linux only).

    Only address ranges that ``/proc/self/maps`` shows as mappings of that very file are touched,
    so a tensor that is not (or no longer) file-backed is never advised.
    """

    def __init__(self) -> None:
        self._libc = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                self._libc = libc
            except (OSError, AttributeError):
                self._libc = None
        self._ranges: dict[Path, list[tuple[int, int]]] = {}

    def _file_ranges(self, path: Path) -> list[tuple[int, int]]:
        path = path.resolve()
        if path not in self._ranges:
            ranges = []
            try:
                with open("/proc/self/maps") as f:
                    for line in f:
                        parts = line.split(maxsplit=5)
                        if len(parts) == 6 and parts[5].strip() == str(path):
                            lo, hi = (int(x, 16) for x in parts[0].split("-"))
                            ranges.append((lo, hi))
            except OSError:
                pass
            self._ranges[path] = ranges
        return self._ranges[path]

    def advise(self, f: "TorchFile", name: str, advice: int) -> None:
        if self._libc is None or f._state is None or name not in f._state:
            return
        storage = f._state[name].untyped_storage()
        lo, hi = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        page = mmap.PAGESIZE
        a, b = lo + (-lo) % page, hi - hi % page  # whole pages inside the tensor only
        if b > a and any(r_lo <= a and b <= r_hi for r_lo, r_hi in self._file_ranges(f.path)):
            self._libc.madvise(a, b - a, advice)

    def forget(self, path: Path) -> None:
        self._ranges.pop(path.resolve(), None)


_PAGES = _PageAdvisor()


def open_file(path: Path) -> TensorFile:
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    return TorchFile(path)


@dataclass
class AdapterInfo:
    """What ``adapter_config.json`` says about a peft LoRA adapter."""

    r: int
    lora_alpha: float
    target_modules: list[str]
    modules_to_save: list[str]
    fan_in_fan_out: bool
    use_rslora: bool
    base_model: str | None
    peft_type: str

    @classmethod
    def read(cls, path: Path) -> "AdapterInfo":
        cfg = read_json(path, hint="download the adapter again")
        assert isinstance(cfg, dict)
        targets = cfg.get("target_modules") or []
        if isinstance(targets, str):
            targets = [targets]
        saved = cfg.get("modules_to_save") or []
        if isinstance(saved, str):
            saved = [saved]
        base_model = cfg.get("base_model_name_or_path")
        try:
            if not isinstance(targets, list) or not isinstance(saved, list):
                raise TypeError
            return cls(
                r=int(cfg.get("r", 8)),
                lora_alpha=float(cfg.get("lora_alpha", 8)),
                target_modules=sorted(str(t) for t in targets),
                modules_to_save=[str(m) for m in saved],
                fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)),
                use_rslora=bool(cfg.get("use_rslora", False)),
                base_model=str(base_model) if base_model is not None else None,
                peft_type=str(cfg.get("peft_type", "LORA")),
            )
        except (TypeError, ValueError):
            raise InputError("adapter_config.json has a setting of the wrong type (r and lora_alpha must be "
                             "numbers, target_modules and modules_to_save lists of names)", path=path,
                             hint="download the adapter again") from None


@dataclass
class TensorSource:
    """A model or adapter as one ordered set of named tensors, whatever its files look like.

    ``layout`` is one of ``safetensors``, ``safetensors-sharded``, ``bin``, ``bin-sharded``,
    ``meta-pth``. ``folder`` holds the non-weight files (config, tokenizer), if any.
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
        if self.folder and (self.folder / "config.json").is_file():
            cfg = read_json(self.folder / "config.json")
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

    def __enter__(self) -> "TensorSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
        raise InputError("not a valid shard index: weight_map must map tensor names to shard file names",
                         path=index_path, hint="download it again")
    names = list(dict.fromkeys(weight_map.values()))
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise InputError(f"index names {len(missing)} missing shard(s): {', '.join(missing)}", path=index_path,
                         hint="download the missing files again")
    files = {n: open_file(folder / n) for n in names}
    for n, f in files.items():
        listed = {k for k, v in weight_map.items() if v == n}
        absent = sorted(listed - set(f.infos))
        if absent:
            raise InputError(f"shard lacks {len(absent)} tensor(s) the index assigns to it, e.g. {absent[0]!r}",
                             path=f.path, hint="the shard and the index come from different versions; "
                                               "download both again")
        unlisted = sorted(set(f.infos) - listed)
        if unlisted:
            raise InputError(f"shard holds {len(unlisted)} tensor(s) the index does not list, e.g. {unlisted[0]!r}",
                             path=f.path, hint="the shard and the index come from different versions; "
                                               "download both again")
    layout = "safetensors-sharded" if index_path.name.endswith(".safetensors.index.json") else "bin-sharded"
    ext = ".safetensors" if layout.startswith("safetensors") else ".bin"
    extra = sorted(p.name for p in folder.iterdir()
                   if p.name.endswith(ext) and _SHARD_RE.match(p.name) and p.name not in files)
    warnings = [f"{folder / e}: shard file not named by {index_path.name}; it is ignored" for e in extra]
    # Keep the file order the index gives, tensor order within each file as stored.
    ordered: dict[str, TensorFile] = {}
    for n in names:
        for k in files[n].infos:
            ordered[k] = files[n]
    return TensorSource(path=index_path, layout=layout, files=list(files.values()), weight_map=ordered,
                        folder=folder, warnings=warnings)


def _single(path: Path) -> TensorSource:
    f = open_file(path)
    layout = "safetensors" if path.suffix == ".safetensors" else "bin"
    return TensorSource(path=path, layout=layout, files=[f], weight_map={k: f for k in f.infos},
                        folder=path.parent)


def _meta(folder: Path, shards: list[Path]) -> TensorSource:
    from llmkit.io.meta import MetaSource  # the Meta rules live in io/meta.py, which builds on this module

    return MetaSource(folder, folder, [TorchFile(p) for p in shards])


def open_source(path: str | os.PathLike) -> TensorSource:
    """Open any supported weight layout at ``path`` (a file or a folder) without reading tensor data."""
    path = Path(path)
    if not path.exists():
        problem = broken_link(path)
        if problem is not None:
            raise InputError(f"the path {problem}", path=path, hint="fix the link or pass the model itself")
        raise InputError("no such file or folder", path=path, hint="check the path")
    if path.is_file():
        name = path.name
        if name.endswith(".index.json"):
            return _open_indexed(path)
        if name.endswith(".ckpt"):
            raise InputError("MindSpore .ckpt files are not readable by this llmkit version yet", path=path)
        if re.fullmatch(r"consolidated\.\d+\.pth", name):
            shards = sorted(path.parent.glob("consolidated.*.pth"))
            return _meta(path.parent, shards if len(shards) > 1 else [path])
        if path.suffix in (".safetensors", ".bin", ".pth", ".pt"):
            return _single(path)
        raise InputError("unknown weight file type", path=path,
                         hint="expected .safetensors, .bin, .pth, or an *.index.json")
    folder = path
    adapter = AdapterInfo.read(folder / ADAPTER_CONFIG) if (folder / ADAPTER_CONFIG).is_file() else None
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
    if len(singles) == 1:
        src = _single(singles[0])
        src.adapter = adapter
        return src
    if singles:
        raise InputError(f"{len(singles)} weight files but no index file", path=folder,
                         hint=f"add the {SAFETENSORS_INDEX} / {BIN_INDEX} that came with them, or pass one file")
    raise InputError("no weight files found", path=folder,
                     hint="expected model.safetensors, model.safetensors.index.json, pytorch_model.bin(.index.json), "
                          "consolidated.NN.pth or adapter_model.*")


def safetensors_code(info: TensorInfo) -> str:
    """Display name of a tensor's dtype (safetensors codes: F16, BF16, F32, ...)."""
    return st_code(info.dtype)
