"""GGUF files as a tensor source (registered as ``gguf``): a LLaMA GGUF seen as the Hugging Face model it
came from.

- names: llama.cpp's (``blk.N.attn_q.weight``) -> Hugging Face's (``llmkit.io.gguf.names.hf_of_gguf``); a
  tensor with no HF name (``rope_freqs.weight``) keeps its GGUF name;
- shapes row-major (GGUF lists dims innermost first), q/k rows back to rotate-half (heads from
  ``llama.attention.head_count`` / ``head_count_kv``);
- F32/F16/BF16 read as float32/float16/bfloat16, bit for bit; a quantized type read as float32, its
  dequantized values (:meth:`GGUFSource.stored_type` names it, :meth:`GGUFSource.as_stored` is the reference
  another model's values are judged by);
- ``config()``: the LLaMA config the metadata describes (``llmkit.io.gguf.config``), also written with a
  ``generation_config.json`` into a private ``folder`` (as a Meta folder seen as HF has), removed on close;
- a split set (``NAME-00001-of-0000N.gguf``, llama.cpp's ``gguf-split`` / ``--split-max-size``): any part, or
  the folder holding it, is the whole model; the metadata is the first part's.

A GGUF of another architecture, a LoRA adapter, a damaged or truncated file: one :class:`InputError`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmkit.errors import InputError
from llmkit.io.core.llama_weights import PathArg, layers_seen
from llmkit.io.core.regular import is_special
from llmkit.io.core.source import TensorSource, register_source
from llmkit.io.gguf.config import ARCH, generation_config, hf_config, json_bytes, meta_int
from llmkit.io.gguf.dequant import as_stored, is_quantized
from llmkit.io.gguf.names import hf_of_gguf, rotary_role
from llmkit.io.gguf.reader import GGUFFile, GGUFTensorFile, StoredTensor
from llmkit.io.gguf.types import OUTTYPES

SPLIT = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_SPLIT_HINT = "keep every part of a split model, under llama.cpp's names NAME-0000N-of-0000M.gguf, in one folder"


@dataclass
class GGUFFacts:
    """What inspect shows of a GGUF file (docs/json.md): the model's ``general.*`` names, its file type
    (``general.file_type``: number, llama.cpp's name, the ``--outtype`` that writes it), the tensors' GGML
    types (type -> count), ``quantized`` (the quantized ones: type -> count), vocabulary and context length."""

    architecture: str
    name: str | None
    version: int
    file_type: int | None
    file_type_name: str | None
    outtype: str | None
    tensor_types: dict[str, int] = field(default_factory=dict)
    quantized: dict[str, int] = field(default_factory=dict)
    vocab_size: int | None = None
    context_length: int | None = None
    parts: int = 1


def split_parts(path: Path) -> list[Path]:
    """Every part of the split set ``path`` belongs to, in order (``[path]`` for a file of another name); a
    missing part is one error naming it."""
    m = SPLIT.match(path.name)
    if m is None:
        return [path]
    count = int(m.group("count"))
    parts = [path.parent / f"{m.group('stem')}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    for i, p in enumerate(parts, 1):
        if not (p.is_file() or is_special(p)):  # a FIFO is refused when opened, not taken as missing
            raise InputError(f"part {i} of {count} of this split GGUF is missing", path=p, hint=_SPLIT_HINT)
    return parts


def _check_model(first: GGUFFile) -> None:
    """A LLaMA model's GGUF, else one error saying what the file is."""
    meta, path = first.metadata, first.path
    arch = meta.get("general.architecture")
    if arch != ARCH:
        what = "has no general.architecture" if arch is None else f"is a {arch!r} model, not a LLaMA"
        raise InputError(
            f"this GGUF file {what}",
            path=path,
            hint="llmkit reads LLaMA-family GGUF files, general.architecture llama; use llama.cpp's tools for others",
        )
    if meta.get("general.type") == "adapter":
        raise InputError(
            "this GGUF file is a LoRA adapter (general.type adapter), not a model",
            path=path,
            hint="merge the adapter's peft folder with llmkit merge-lora, then convert the merged model",
        )
    experts = meta.get(f"{ARCH}.expert_count")
    if isinstance(experts, int) and experts > 0:
        raise InputError(
            f"this GGUF file is a mixture-of-experts model ({ARCH}.expert_count {experts}), not a LLaMA",
            path=path,
            hint="llmkit reads dense LLaMA models; use llama.cpp's tools for this one",
        )
    if not first.stored:
        raise InputError("this GGUF file holds no tensors (a vocabulary-only file)", path=path, hint="pass the model")


def _check_split(headers: list[GGUFFile]) -> None:
    """The parts' ``split.*`` keys agree with their names and with each other."""
    count = len(headers)
    for i, h in enumerate(headers):
        no, total = h.metadata.get("split.no", 0), h.metadata.get("split.count", 1)
        if (no, total) != (i, count):
            where = f"part {no + 1} of {total} of a split GGUF" if total > 1 else "not a part of a split GGUF"
            named = f"says part {i + 1} of {count}" if count > 1 else "is not a part's"
            raise InputError(
                f"this file is {where} (its split.no, split.count), but its name {named}",
                path=h.path,
                hint=_SPLIT_HINT,
            )
    stated = headers[0].metadata.get("split.tensors.count")
    held = sum(len(h.stored) for h in headers)
    if count > 1 and stated is not None and stated != held:
        raise InputError(
            f"the split GGUF holds {held} tensors in {count} parts, its split.tensors.count says {stated}",
            path=headers[0].path,
            hint=_SPLIT_HINT,
        )


class GGUFSource(TensorSource):
    """A LLaMA GGUF (one file or a split set) as its Hugging Face model; see the module's docstring."""

    stores_converted = True

    def __init__(self, path: Path, parts: list[Path]):
        headers = [GGUFFile(p) for p in parts]
        first = headers[0]
        if len(headers) > 1 or first.metadata.get("split.count", 1) != 1:
            _check_split(headers)
        _check_model(first)
        self.metadata, self.version = first.metadata, first.version
        self.heads = meta_int(self.metadata, f"{ARCH}.attention.head_count", first.path)
        self.kv_heads = meta_int(self.metadata, f"{ARCH}.attention.head_count_kv", first.path, default=self.heads)
        files: list[GGUFTensorFile] = []
        try:
            files += [GGUFTensorFile(h) for h in headers]
            weight_map = self._show(files)
            super().__init__(path=path, layout="gguf", files=list(files), weight_map=weight_map)
            shapes = {n: tuple(i.shape) for f in files for n, i in f.infos.items()}
            self._config = hf_config(self.metadata, shapes, layers_seen(list(shapes)), first.path)
            self.folder = self._hf_folder()
        except BaseException:
            for f in files:
                f.close()
            raise

    def _show(self, files: list[GGUFTensorFile]) -> dict[str, Any]:
        """Every stored tensor under its HF name (or its own), q/k rows to be un-interleaved; name -> file."""
        weight_map: dict[str, Any] = {}
        for f in files:
            for t in f.header.stored:
                name = hf_of_gguf(t.name) or t.name
                if name in weight_map:
                    raise InputError(
                        f"tensor {t.name!r} is stored twice", path=f.path, hint="download or convert it again"
                    )
                f.show(name, t, self._heads_of(name, t, f.path))
                weight_map[name] = f
        return weight_map

    def _heads_of(self, name: str, t: StoredTensor, path: Path) -> int | None:
        role = rotary_role(name)
        if role is None:
            return None
        heads = self.heads if role == "q" else self.kv_heads
        if heads is None:
            raise InputError(
                f"the GGUF metadata has no {ARCH}.attention.head_count", path=path, hint="convert it again"
            )
        if not t.shape or t.shape[0] % (2 * heads):
            raise InputError(
                f"tensor {t.name!r} has {t.shape[0] if t.shape else 0} rows, not a whole number of {heads} heads "
                f"of even size ({ARCH}.attention.head_count{'_kv' if role == 'k' else ''})",
                path=path,
                hint="the file's metadata and tensors disagree; convert it again",
            )
        return heads

    def _hf_folder(self) -> Path:
        """A private folder holding what an HF folder of this model holds besides weights and tokenizer: the
        derived ``config.json`` and ``generation_config.json`` (the files other jobs read); removed on close."""
        folder = Path(tempfile.mkdtemp(prefix="llmkit-gguf-hf-"))
        (folder / "config.json").write_bytes(json_bytes(self._config))
        (folder / "generation_config.json").write_bytes(json_bytes(generation_config(self._config)))
        return folder

    # ---- what the metadata says ----
    def config(self) -> dict:
        """The transformers ``LlamaConfig`` the metadata describes (``llmkit.io.gguf.config.hf_config``)."""
        return dict(self._config)

    def described_config(
        self, shapes: dict[str, tuple[int, ...]], cfg: dict | None, config_path: PathArg
    ) -> tuple[dict | None, PathArg, str]:
        if cfg is not None:
            return super().described_config(shapes, cfg, config_path)
        return self.config(), self.files[0].path, "its GGUF metadata"

    def stored(self, name: str) -> StoredTensor:
        return self._file(name).entries[name][0]

    def _file(self, name: str) -> GGUFTensorFile:
        try:
            f = self.weight_map[name]
        except KeyError:
            raise InputError(f"no tensor named {name!r}", path=self.path) from None
        assert isinstance(f, GGUFTensorFile)
        return f

    def stored_type(self, name: str) -> str | None:
        t = self.stored(name)
        return t.type_name if is_quantized(t.ttype) else None

    def stored_nbytes(self, name: str) -> int:
        return self.stored(name).nbytes

    def as_stored(self, name: str, values: torch.Tensor) -> torch.Tensor:
        """``values`` (another model's ``name``, rotate-half rows) as this file's type holds them, read back
        (``llmkit.io.gguf.dequant.as_stored``; rows are quantized each on its own, so their order does not matter)."""
        return as_stored(values, self.stored(name).ttype)

    def tensor_types(self) -> dict[str, int]:
        """GGML type name -> how many tensors have it, in the order types first appear."""
        return dict(Counter(self.stored(n).type_name for n in self.keys()))

    def facts(self) -> GGUFFacts:
        import gguf

        meta = self.metadata
        ftype = meta.get("general.file_type")
        ftype_name = None
        if isinstance(ftype, int):
            try:
                ftype_name = gguf.LlamaFileType(ftype).name
            except ValueError:
                ftype_name = None
        outtype = next((o.name for o in OUTTYPES.values() if o.file_type == ftype), None)
        name = meta.get("general.name")
        return GGUFFacts(
            architecture=str(meta.get("general.architecture")),
            name=name if isinstance(name, str) else None,
            version=self.version,
            file_type=ftype if isinstance(ftype, int) else None,
            file_type_name=ftype_name,
            outtype=outtype,
            tensor_types=self.tensor_types(),
            quantized=dict(Counter(t for n in self.keys() if (t := self.stored_type(n)) is not None)),
            vocab_size=self._config.get("vocab_size"),
            context_length=meta_int(meta, f"{ARCH}.context_length", self.files[0].path),
            parts=len(self.files),
        )

    def close(self) -> None:
        super().close()
        folder = self.folder
        if folder is not None and folder.name.startswith("llmkit-gguf-hf-"):
            shutil.rmtree(folder, ignore_errors=True)
            self.folder = None


def _open_gguf_file(path: Path, key: object = None) -> TensorSource | None:
    if path.suffix != ".gguf":
        return None
    return GGUFSource(path, split_parts(path))


def _open_gguf_folder(folder: Path, key: object = None) -> TensorSource | None:
    """A folder holding one GGUF model: one ``.gguf`` file, or the parts of one split set."""
    found = sorted(p for p in folder.glob("*.gguf") if p.is_file() or is_special(p))
    models = sorted(
        {(m.group("stem"), m.group("count")) if (m := SPLIT.match(p.name)) else (p.name, "") for p in found}
    )
    if not models:
        return None
    if len(models) > 1:
        shown = ", ".join(stem + (f"-*-of-{count}.gguf" if count else "") for stem, count in models[:4])
        raise InputError(
            f"{len(models)} GGUF models in this folder ({shown}{', ...' if len(models) > 4 else ''})",
            path=folder,
            hint="pass one .gguf file; of a split model, its first part",
        )
    return GGUFSource(folder, split_parts(found[0]))  # a split set: any part names them all


register_source("gguf", rank=50, open_file=_open_gguf_file, open_folder=_open_gguf_folder)
