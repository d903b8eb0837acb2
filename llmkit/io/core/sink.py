"""The sink protocol and its registry: ``open_sink(fmt, out_dir, specs, ...)`` for every output format.

A sink is given the full list of output tensors up front (so it can lay out files before the first
tensor arrives), checks the destination when made, and is a context manager that owns temporary names,
fsync and the final rename (``llmkit.io.core.writer.ShardSetWriter`` does all of that for the built-in
formats). Each format family registers its sinks from its own sub-package (``formats.BUILTIN_SINKS``),
with the file names it owns (what ``--force`` replaces, and what makes an existing folder an output).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import torch

from llmkit.errors import InputError
from llmkit.io.core.formats import load_builtin_formats
from llmkit.io.core.spec import TensorSpec


@runtime_checkable
class Sink(Protocol):
    """Where a job's tensors go. Given every output spec up front; checks the destination when made
    (not an input, not existing without ``force``, free disk) and exposes what it found; a context
    manager that owns temporary names, fsync and the final rename (nothing kept on an exception).

    ``files``: the output's file names (final once the context exits cleanly); ``total_size``: the bytes
    of its weights; ``free_disk_bytes``, ``space_margin``, ``needed_disk_bytes``: what the destination
    check found and required; ``kept_files``: the user's files of an existing output folder that stay.
    """

    @property
    def files(self) -> list[str]: ...

    @property
    def total_size(self) -> int: ...

    @property
    def free_disk_bytes(self) -> int: ...

    @property
    def space_margin(self) -> int: ...

    @property
    def needed_disk_bytes(self) -> int: ...

    @property
    def kept_files(self) -> list[str]: ...

    def write(self, name: str, tensor: torch.Tensor) -> None: ...

    def add_file(self, name: str, data: bytes) -> None: ...

    def copy_aux_files(
        self,
        folder: Path | None,
        *,
        dtype: torch.dtype | None = None,
        vocab_size: int | None = None,
        skip: Iterable[str] = (),
        only: Iterable[str] | None = None,
    ) -> list[str]: ...

    def __enter__(self) -> Sink: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


SinkFactory = Callable[..., Sink]
SINKS: dict[str, SinkFactory] = {}
OWN_FILES: dict[str, re.Pattern[str]] = {}  # format -> the file names its outputs consist of
ANY_INDEX = re.compile(r"^.*\.index\.json$")  # a shard index of any layout
STDOUT = "-"  # as an output: a safetensors stream on stdout, for the next command of a pipe


def register_sink(fmt: str, *, owns: re.Pattern[str] | None = None) -> Callable[[SinkFactory], SinkFactory]:
    """Register ``factory(out_dir, specs, *, force, inputs, extra_bytes, **options)`` as format ``fmt``;
    ``owns``: the names of the files it writes (``--force`` replaces those of an earlier output)."""

    def deco(factory: SinkFactory) -> SinkFactory:
        SINKS[fmt] = factory
        if owns is not None:
            OWN_FILES[fmt] = owns
        return factory

    return deco


def own_files(fmt: str) -> re.Pattern[str] | None:
    """The file names format ``fmt`` writes (None: a format that writes one file, not a folder)."""
    load_builtin_formats()
    return OWN_FILES.get(fmt)


def is_weight_file(name: str) -> bool:
    """Whether ``name`` is a weight file (or index, or ``params.json``) of any layout llmkit writes."""
    load_builtin_formats()
    return bool(ANY_INDEX.match(name)) or any(p.match(name) for p in OWN_FILES.values())


def open_sink(
    fmt: str,
    out_dir: str | os.PathLike,
    specs: list[TensorSpec],
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike | None] | None = None,
    extra_bytes: int = 0,
    **options: Any,
) -> Sink:
    """The sink for format ``fmt`` (``safetensors``, ``bin``, ``meta-pth``, ``ckpt``), destination checked;
    ``out_dir`` ``-``: a safetensors stream on stdout (``llmkit.io.hf.stream_sink``; ``out=`` another stream)."""
    if str(out_dir) == STDOUT:
        if fmt != "safetensors":
            raise InputError(
                f"-o - writes a safetensors stream, not {fmt} files",
                hint=f"use --format safetensors, or write {fmt} to a path: -o PATH",
            )
        from llmkit.io.hf.stream_sink import open_stream_sink

        return open_stream_sink(specs, force=force, inputs=inputs, extra_bytes=extra_bytes, **options)
    load_builtin_formats()
    if fmt not in SINKS:
        raise InputError(f"unknown output format {fmt!r}", hint=f"use one of {', '.join(sorted(SINKS))}")
    return SINKS[fmt](out_dir, specs, force=force, inputs=inputs, extra_bytes=extra_bytes, **options)
