"""A one-file GGUF output (``-o x.gguf``, no ``--split-max-size``) as byte ranges (:mod:`llmkit.cluster.ranges`).

The driver's :class:`~llmkit.io.gguf.sink.GGUFSink` fixes the header from the side files (config, tokenizer:
``GGUFSink.side_files_ready``), and with it every tensor's offset: the header, zeros to the next multiple of
32 bytes, then each tensor's data in file order, each followed by zeros to the next multiple of 32
(``GGUFLayout``). :func:`gguf_file` is that layout as a :class:`~llmkit.cluster.ranges.OneFile`: the head is
the header and its padding (the driver writes it), a tensor's slot is its data and its padding (a task writes
both, so a range's sha256 covers every byte of it). A task converts each tensor with the sink's own
:func:`~llmkit.io.gguf.sink.tensor_data` (q/k rows interleaved by the config's head counts, then the GGML
type), so the bytes are the one-process file's. The rotary tables GGUF drops are produced (as in one process,
for the taps) in zero-byte slots.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmkit.cluster.ranges import OneFile, Slot
from llmkit.errors import InputError
from llmkit.io.core.spec import TensorSpec
from llmkit.io.gguf.metadata import GGUFTensor

if TYPE_CHECKING:
    import torch

    from llmkit.io.gguf.sink import GGUFSink


@dataclass(frozen=True)
class GGUFTensors:
    """A GGUF slot: HF name -> the tensor it becomes (GGUF name, shape, type, data bytes), and the head counts
    the q/k rows are interleaved by (:func:`llmkit.io.gguf.sink.rotary_heads`). A name not in ``tensors`` is
    one GGUF drops: an empty slot."""

    tensors: dict[str, GGUFTensor]
    heads: dict[str, int]

    def chunks(self, spec: TensorSpec, tensor: torch.Tensor) -> Iterator[memoryview]:
        import torch

        from llmkit.io.core.layout import tensor_bytes
        from llmkit.io.gguf.sink import pad, tensor_data

        t = self.tensors.get(spec.name)
        if t is None:
            return
        data = tensor_data(spec.name, tensor, t.ttype, self.heads)
        if data.nbytes != t.nbytes:
            raise InputError(f"tensor {spec.name!r} became {data.nbytes} bytes of {t.name}, planned {t.nbytes}")
        yield tensor_bytes(torch.from_numpy(data))  # as the sink hands its writer the bytes
        yield memoryview(bytes(pad(t.nbytes) - t.nbytes))

    def narrowed(self, specs: list[TensorSpec]) -> GGUFTensors:
        return GGUFTensors({s.name: self.tensors[s.name] for s in specs if s.name in self.tensors}, self.heads)


def gguf_file(sink: GGUFSink) -> OneFile:
    """The sink's one GGUF file as planned (nothing is written): head, slots in file order, size."""
    from llmkit.io.gguf.sink import pad

    if sink.split:
        raise AssertionError("a split GGUF is a folder of files, refused with --ray")
    buf = io.BytesIO()
    start = sink.layout.start(buf, sink.path, sink.shards[0].specs, {})  # the header and its padding, in memory
    slots = [
        Slot(sink.planned_specs[hf], start.offsets[sink.tensors[hf].name], pad(sink.tensors[hf].nbytes))
        for hf in sink._file_order()
    ]
    dropped = [s for hf, s in sink.planned_specs.items() if hf not in sink.tensors]
    slots += [Slot(s, start.size, 0) for s in dropped]
    head = buf.getvalue()
    if slots and len(head) != slots[0].offset:
        raise AssertionError("the GGUF header does not end where the first tensor starts")
    return OneFile(head, slots, start.size, start, GGUFTensors(dict(sink.tensors), sink.heads()))
