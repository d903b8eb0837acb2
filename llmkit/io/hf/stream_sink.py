"""``-o -``: a job's output as one safetensors stream on stdout, for the next command of a shell pipe.

:class:`StreamSink` satisfies the :class:`~llmkit.io.core.sink.Sink` protocol. It writes the bytes of one
safetensors file (``safetensors_header``: 8-byte length, JSON padded with spaces to 8 bytes) without ever
seeking: the header at the first tensor (or at a clean exit for an empty model), listing the tensors in
stream order with contiguous offsets, then each tensor's bytes as it arrives. Stream order is transformers'
state-dict order (``hf_sort_key`` over each tensor's Hugging Face name): the order every consumer reads in
(to-ckpt's MindFormers file order), so the runner hands it the tensors in that order (``write_order``).

``__metadata__``: ``{"format": "pt"}`` (or the job's), one ``llmkit.file:<name>`` per side file gathered
(config, tokenizer, ``add_file``; base64 of its bytes) and ``llmkit.order``: the job's planned order, the
order its output folder would list them in (``llmkit.io.hf.stream``). Nothing is staged or claimed and no
disk is checked; a failed run leaves the stream short: its last byte is only written by a clean exit, so
the reader fails too.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import torch

from llmkit.errors import InputError
from llmkit.io.core.files import AUX_FILES
from llmkit.io.core.layout import WRITE_SLICE, tensor_bytes
from llmkit.io.core.llama_weights import hf_sort_key
from llmkit.io.core.naming import hf_name
from llmkit.io.core.spec import TensorSpec
from llmkit.io.core.writer import side_files
from llmkit.io.hf.safetensors import safetensors_header
from llmkit.io.hf.stream import FILE_KEY, ORDER_KEY


def stream_order(specs: list[TensorSpec]) -> list[TensorSpec]:
    """``specs`` in transformers' state-dict order (to-ckpt's order), whatever naming they are stored under."""
    return sorted(specs, key=lambda s: hf_sort_key(hf_name(s.name) or s.name))


class StreamSink:
    """The tensors of a job as one safetensors stream on ``out`` (default ``sys.stdout.buffer``); a context
    manager. ``write`` takes the tensors in :attr:`write_order` only."""

    def __init__(
        self,
        specs: list[TensorSpec],
        *,
        out: BinaryIO | None = None,
        metadata: dict[str, str] | None = None,
        **ignored: Any,  # force, inputs, extra_bytes, shard_size: nothing on disk to check or split
    ):
        self._out = out if out is not None else sys.stdout.buffer
        if self._out.isatty():
            raise InputError(
                "-o - writes a safetensors stream to stdout, which is a terminal",
                hint="pipe it into another command (llmkit ... -o - | llmkit to-ckpt - -o x.ckpt) or redirect it",
            )
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise InputError(f"tensor {next(n for n in names if names.count(n) > 1)!r} planned twice")
        self.specs = stream_order(specs)
        self.write_order = [s.name for s in self.specs]
        self._planned = names  # the job's own order: what an output folder would list
        self._metadata = {"format": "pt"} if metadata is None else dict(metadata)
        self.files: list[str] = []
        self.kept_files: list[str] = []
        self.total_size = sum(s.nbytes for s in specs)
        self.free_disk_bytes = self.space_margin = self.needed_disk_bytes = 0
        self._aux: dict[str, bytes] = {}
        self._next = 0  # index in self.specs of the next tensor to write
        self._size = 0  # bytes of the whole stream, once the header is made
        self._sent = 0  # bytes handed to out (the held-back tail included)
        self._tail = b""  # the stream's last byte: written by a clean exit only

    # ---- side files (gathered before the first tensor: they go into the header) ----
    def add_file(self, name: str, data: bytes) -> None:
        if self._size:
            raise InputError(f"{name} arrived after the stream's header was written")
        self._aux[name] = data

    def copy_aux_files(
        self,
        folder: Path | None,
        *,
        dtype: torch.dtype | None = None,
        vocab_size: int | None = None,
        skip: Iterable[str] = (),
        only: Iterable[str] | None = None,
    ) -> list[str]:
        """Carry config/tokenizer files from ``folder`` as a folder output would (``config.json`` updated)."""
        skipped = set(skip)
        names = [n for n in (AUX_FILES if only is None else tuple(only)) if n not in skipped]
        files = side_files(folder, names, dtype=dtype, vocab_size=vocab_size)
        for name, data in files.items():
            self.add_file(name, data)
        return list(files)

    # ---- the stream ----
    def _header(self) -> None:
        metadata = {**self._metadata, **{FILE_KEY + n: base64.b64encode(d).decode() for n, d in self._aux.items()}}
        metadata[ORDER_KEY] = json.dumps(self._planned, ensure_ascii=False)
        head = safetensors_header(self.specs, metadata)
        self._size = len(head) + self.total_size
        self._emit(memoryview(head))

    def _emit(self, data: memoryview) -> None:
        """Write ``data`` at the stream's current end, holding back the stream's very last byte."""
        keep = max(0, min(len(data), self._sent + len(data) - (self._size - 1)))
        for i in range(0, len(data) - keep, WRITE_SLICE):
            self._out.write(data[i : min(i + WRITE_SLICE, len(data) - keep)])
        if keep:
            self._tail += bytes(data[len(data) - keep :])
        self._sent += len(data)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """The next tensor of :attr:`write_order`, in its planned dtype and shape."""
        if self._next >= len(self.specs) or self.specs[self._next].name != name:
            expected = self.specs[self._next].name if self._next < len(self.specs) else "nothing more"
            raise InputError(f"tensor {name!r} arrived out of stream order (expected {expected!r})")
        spec = self.specs[self._next]
        if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise InputError(
                f"tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, planned {spec.dtype} {spec.shape}"
            )
        if not self._size:
            self._header()
        self._emit(tensor_bytes(tensor))
        self._out.flush()
        self._next += 1

    def __enter__(self) -> StreamSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            return  # the last byte never goes out: the reader fails instead of taking a partial model
        if self._next < len(self.specs):
            missing = len(self.specs) - self._next
            raise InputError(f"{missing} planned tensor(s) were never written, e.g. {self.specs[self._next].name!r}")
        if not self._size:
            self._header()  # an empty model: the header alone
        self._out.write(self._tail)
        self._out.flush()
        self._tail = b""


def open_stream_sink(specs: list[TensorSpec], **options: Any) -> StreamSink:
    """The sink of ``-o -`` (``llmkit.io.core.sink.open_sink``)."""
    return StreamSink(specs, **options)
