"""Tensor sources: list names, dtypes and shapes from headers, read one tensor at a time.

:class:`TensorSource` is a model or adapter as one ordered set of named tensors over :class:`TensorFile`s
(one weight file each; ``renamed.RenamedSource`` shows a source under other names). :func:`open_source`
opens any path by asking the registered format families in rank order (:func:`register_source`; the
built-in ones: ``hf`` 10, ``meta`` 20, ``hf-file`` 30, ``mindspore`` 40, ``gguf`` 50); :func:`open_model` is how a job
opens the model it reads (its refusals, its view, the complete-LLaMA check). What a file carries beyond
tensors (a cipher, a CRC trailer, tensors split over several records, values nothing authenticates) is
part of the API with neutral defaults, which a format that has them overrides. Memory: listing costs
headers only; :meth:`TensorSource.get` materialises one tensor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from llmkit.errors import InputError
from llmkit.io.core.destination import broken_link
from llmkit.io.core.dtypes import st_code
from llmkit.io.core.formats import load_builtin_formats
from llmkit.io.core.jsonfile import read_json
from llmkit.io.core.llama_tensors import check_source
from llmkit.io.core.regular import check_regular, is_special, pread_into
from llmkit.io.core.spec import TensorInfo

if TYPE_CHECKING:
    from llmkit.io.core.llama_tensors import Findings
    from llmkit.io.core.llama_weights import PathArg
    from llmkit.io.hf.adapter_config import AdapterInfo


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
    index: Path | None = None  # the shard index the tensor list comes from, when there is one
    # True for a format whose files hold converted values (GGUF: quantized, narrowed): a tensor of it whose type
    # differs from another model's is judged by :meth:`as_stored` of that model's values (``verify --tensors``)
    stores_converted: ClassVar[bool] = False

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

    # ---- what the files carry beyond tensors (neutral unless a format has it: TensorFile) ----
    @property
    def encryption(self) -> str | None:
        """The cipher of the first encrypted weight file (``AES-GCM``, ``AES-CBC``, ``SM4-CBC``), else None."""
        return next((f.encryption for f in self.files if f.encryption), None)

    @property
    def has_crc(self) -> bool:
        """Some weight file ends in a CRC trailer."""
        return any(f.has_crc for f in self.files)

    def records(self, name: str) -> int:
        """How many records of its file hold ``name`` (more than one: stored split, e.g. at 512 MiB)."""
        return self.weight_map[name].records(name)

    def integrity_warnings(self, values_read: bool = True) -> list[str]:
        """Each file's warning that nothing vouches for its values (:meth:`TensorFile.integrity_warning`)."""
        return list(dict.fromkeys(w for f in self.files if (w := f.integrity_warning(values_read)) is not None))

    # ---- how the files store the tensors (neutral unless a format converts when reading: GGUF) ----
    def stored_type(self, name: str) -> str | None:
        """The type the file stores ``name`` in when :meth:`get` returns another one (GGUF's quantized types,
        ``Q8_0``, ``Q4_K``, ..., read as their dequantized float32 values), else None."""
        return None

    def stored_nbytes(self, name: str) -> int:
        """Bytes the file stores ``name`` in (:meth:`info`'s, unless :meth:`stored_type` names another type)."""
        return self.info(name).nbytes

    def as_stored(self, name: str, values: torch.Tensor) -> torch.Tensor | None:
        """``values`` (another model's tensor ``name``) as this source would read them back had its files
        stored them, or None for a source that stores what it reads (:attr:`stores_converted`); raises
        ``NotImplementedError`` when the stored type has no reference conversion."""
        return None

    def described_config(
        self, shapes: dict[str, tuple[int, ...]], cfg: dict | None, config_path: PathArg
    ) -> tuple[dict | None, PathArg, str]:
        """The config the complete-LLaMA check judges this model by, its path, and how a message names it:
        ``cfg`` when one is given, else the ``config.json`` beside the weights (a format with its own
        settings file overrides this)."""
        if cfg is None:
            cfg = self.config()
            if cfg is not None and self.folder is not None:
                config_path = Path(self.folder) / "config.json"
        return cfg, config_path, "its config.json"

    def prechecked(self) -> tuple[bool, Findings | None]:
        """``(True, findings)`` when this source ran the complete-LLaMA check itself when it was made."""
        return False, None

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
        """Tell the source ``name`` has been used: the pages it kept resident or cached are dropped."""
        if name in self.weight_map:
            self.weight_map[name].release(name)

    def prefetch(self, name: str) -> None:
        """Ask the OS to start reading ``name`` (files that support it), e.g. while the previous one is used."""
        if name in self.weight_map:
            self.weight_map[name].prefetch(name)

    # ---- read order (sources that can only be read front to back) ----
    def stream_position(self, name: str) -> int | None:
        """``name``'s place in a source read front to back once (a stream on stdin), else None: any order."""
        return None

    def expand_reads(self, name: str) -> list[tuple[TensorSource, str]]:
        """The ``(source, tensor)`` pairs reading ``name`` reads in the end: itself, or for a source computed
        from others (a plan read as a source) what computing ``name`` reads."""
        return [(self, name)]

    def read_order(self, names: list[str] | None = None) -> list[str]:
        """``names`` (default: every tensor) in the order to read them in: as given, or a stream's order."""
        names = self.keys() if names is None else names
        return sorted(names, key=lambda n: self.stream_position(n) or 0)

    def read_to_end(self) -> None:
        """The job has read what it needs: a stream reads what is left and checks it ended where its header
        says (a producer that failed or was killed is an error before any output is kept); others: nothing."""

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

    @contextmanager
    def closed_on_error(self) -> Iterator[TensorSource]:
        """``with src.closed_on_error():`` planning that keeps the source open, closing it if the block raises."""
        try:
            yield self
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(frozen=True)
class SourceFormat:
    """How one format family opens a path: each opener returns ``None`` for a path that is not its own.

    ``rank`` orders the families (lower asks first): a folder with both ``model.safetensors`` and Meta
    shards is Hugging Face's, a ``consolidated.00.pth`` is Meta's before any loose ``.pth`` is one file.
    """

    name: str
    rank: int
    open_file: Callable[[Path, Any], TensorSource | None]
    open_folder: Callable[[Path, Any], TensorSource | None]


SOURCES: list[SourceFormat] = []


def register_source(
    name: str,
    *,
    rank: int,
    open_file: Callable[[Path, Any], TensorSource | None],
    open_folder: Callable[[Path, Any], TensorSource | None],
) -> None:
    """Add a format family to :func:`open_source` (``open_*(path, ckpt_key)``; ``ckpt_key`` may be ignored)."""
    SOURCES[:] = sorted(
        [*(s for s in SOURCES if s.name != name), SourceFormat(name, rank, open_file, open_folder)],
        key=lambda s: s.rank,
    )


def source_formats() -> list[SourceFormat]:
    """The registered families, the built-in ones (``formats.BUILTIN_SOURCES``) imported on first use."""
    load_builtin_formats()
    return SOURCES


STDIN = "-"  # as a source: a safetensors stream on stdin, read front to back once

_SUPPLIED: ContextVar[dict[str, TensorSource] | None] = ContextVar("llmkit_supplied_sources", default=None)


@contextmanager
def supplying(sources: dict[str, TensorSource]) -> Iterator[None]:
    """Within the block, :func:`open_source` of one of these paths returns the given source instead of
    reading the path (a chain hands one job's planned output to the next job this way, ``llmkit.chain``)."""
    token = _SUPPLIED.set({**(_SUPPLIED.get() or {}), **{str(Path(k)): v for k, v in sources.items()}})
    try:
        yield
    finally:
        _SUPPLIED.reset(token)


def supplied_source(path: str | os.PathLike) -> TensorSource | None:
    """The source :func:`supplying` gives for ``path``, if any."""
    supplied = _SUPPLIED.get()
    return None if not supplied else supplied.get(str(Path(path)))


def open_source(path: str | os.PathLike, *, ckpt_key: Any = None) -> TensorSource:
    """Open any supported weight layout at ``path`` (a file or a folder) without reading tensor data.
    ``ckpt_key`` (``llmkit.io.mindspore.keys.CkptKey``) opens an encrypted MindSpore checkpoint; ``-`` reads
    a safetensors stream from stdin (``llmkit.io.hf.stream``); a path :func:`supplying` names is that source;
    ``hf://...``/``s3://...`` (or a registry model's name that is no local path) is read remotely
    (``llmkit.io.remote``)."""
    supplied = supplied_source(path)
    if supplied is not None:
        return supplied
    if str(path) == STDIN:
        from llmkit.io.hf.stream import open_stdin_stream

        return open_stdin_stream()
    from llmkit.io.remote.url import open_url

    remote = open_url(path)
    if remote is not None:
        return remote
    path = Path(path)
    if not path.exists():
        problem = broken_link(path)
        if problem is not None:
            raise InputError(f"the path {problem}", path=path, hint="fix the link or pass the model itself")
        raise InputError("no such file or folder", path=path, hint="check the path")
    if not path.is_dir():
        check_regular(path, "a weight file or a model folder")
    is_file = path.is_file()
    for fmt in source_formats():
        src = fmt.open_file(path, ckpt_key) if is_file else fmt.open_folder(path, ckpt_key)
        if src is not None:
            return src
    if is_file:
        raise InputError(
            "unknown weight file type",
            path=path,
            hint="expected .safetensors, .bin, .pth, .ckpt, .gguf, or an *.index.json",
        )
    encrypted = sorted(path.glob("*.enc"))
    if encrypted:
        raise InputError(
            f"no weight files found, only {len(encrypted)} .enc file(s) (encrypted weights)",
            path=path,
            hint=f"decrypt them first: llmkit decrypt {path} --key <LLaMA-1 7B consolidated.00.pth> -o <new folder>",
        )
    raise InputError(
        "no weight files found",
        path=path,
        hint="expected model.safetensors, model.safetensors.index.json, pytorch_model.bin(.index.json), "
        "consolidated.NN.pth, adapter_model.* or one .ckpt",
    )


def open_model(
    path: str | os.PathLike,
    *,
    key: Any = None,
    refuse: Callable[[TensorSource], InputError | None] | None = None,
    view: Callable[[TensorSource], TensorSource] | None = None,
    complete: bool = True,
) -> TensorSource:
    """The model a job reads, opened and checked before anything is planned (headers and small files only);
    closed again when a step fails, so callers need no cleanup of their own.

    In order: :func:`open_source` (``key``: an encrypted ``.ckpt``'s); ``refuse(src)``: the caller's error
    for a source of the wrong kind (an adapter, another layout), in the caller's words, or None;
    ``view(src)``: how the job sees it (``llmkit.io.meta.as_hf.open_as_hf``: a Meta folder as the HF model
    from-meta writes; a view closes ``src`` when it fails); with ``complete``, the complete-LLaMA check
    (:func:`~llmkit.io.core.llama_tensors.check_source`: every weight its config describes, once).
    """
    src = open_source(path, ckpt_key=key)
    try:
        problem = refuse(src) if refuse is not None else None
        if problem is not None:
            raise problem
    except BaseException:
        src.close()
        raise
    if view is not None:
        src = view(src)
    try:
        if complete:
            check_source(src)
    except BaseException:
        src.close()
        raise
    return src


def require_layout(
    layout: str, what: str, path: str | os.PathLike, hint: str
) -> Callable[[TensorSource], InputError | None]:
    """A ``refuse`` for :func:`open_model`: a source of another layout is "not a WHAT (this is LAYOUT)"."""

    def refuse(src: TensorSource) -> InputError | None:
        if src.layout == layout:
            return None
        return InputError(f"not a {what} (this is {src.layout})", path=path, hint=hint)

    return refuse


def safetensors_code(info: TensorInfo) -> str:
    """Display name of a tensor's dtype (safetensors codes: F16, BF16, F32, ...)."""
    return st_code(info.dtype)


def read_tensor(fd: int, offset: int, info: TensorInfo) -> torch.Tensor:
    """Tensor ``info`` read from the file open as ``fd`` at byte ``offset`` into a fresh tensor (one copy, no
    file mapping: the resident memory of a read is the tensor itself)."""
    tensor = torch.empty(info.shape, dtype=info.dtype)
    if tensor.numel():
        pread_into(fd, tensor.reshape(-1).view(torch.uint8).numpy().data, offset, info.file, f" tensor {info.name!r}")
    return tensor


class TensorFile:
    """One weight file. Subclasses fill ``infos`` at open time and read data in ``get``.

    The members after ``get`` have neutral defaults (no cipher, no CRC trailer, one record per tensor,
    nothing to warn about); a format whose files carry more overrides them (MindSpore's ``.ckpt``:
    ``llmkit.io.mindspore.reader.CkptFile``), so a job asks any file and never looks for a format's class.
    """

    path: Path
    infos: dict[str, TensorInfo]
    encryption: str | None = None  # the cipher the file is encrypted with, read through its key; else None

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    @property
    def has_crc(self) -> bool:
        """The file ends in a CRC trailer, checked while its tensors are read in order (:meth:`verify_crc`)."""
        return False

    def verify_crc(self) -> bool | None:
        """Check the CRC trailer, reading only what :meth:`get` has not covered yet: True when it matches (a
        mismatch raises :class:`~llmkit.errors.InputError`), None when the file has no trailer."""
        return None

    def integrity_warning(self, values_read: bool = True) -> str | None:
        """The warning a read of this file carries when nothing vouches for its values (a cipher that cannot
        authenticate them), else None. ``values_read``: the reader read the tensors (and so the CRC)."""
        return None

    def records(self, name: str) -> int:
        """How many records hold ``name`` (more than one: the tensor is stored split)."""
        return 1

    def release(self, name: str) -> None:
        """Drop memory or page cache this file still holds for ``name`` after it was used (default: nothing)."""

    def prefetch(self, name: str) -> None:
        """Start reading ``name`` from disk in the background (default: nothing)."""

    def close(self) -> None:
        pass
