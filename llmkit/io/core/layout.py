"""How one weight file is laid out on disk, for the streaming writer (``llmkit.io.core.writer``).

The writer knows every tensor of a file up front, so a layout can fix the header and every
tensor's byte offset before the first tensor arrives; each tensor is then written straight to its
place and dropped. A layout is the hook a new file format implements:

- :meth:`FileLayout.start`: write the header / skeleton of a file whose tensors are ``specs``;
  return each tensor's data offset and the final file size;
- :meth:`FileLayout.write_tensor`: put one tensor's bytes in place (a format that splits large
  tensors into several records, as MindSpore ``.ckpt`` does over 512 MiB, overrides this);
- :meth:`FileLayout.finish`: patch what is known only at the end (zip CRCs, a CRC trailer).

The layouts: ``hf.safetensors.SafetensorsLayout`` (bytes identical to ``safetensors.torch.save_file``),
``hf.torchzip.TorchZipLayout`` (a torch zip laid out by ``torch.save`` under ``skip_data``; also Meta
``.pth``) and ``mindspore.ckpt.CkptLayout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from llmkit.io.core.spec import TensorSpec

WRITE_SLICE = 1 << 20  # bytes per write() call: one huge write() is several times slower


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """A tensor's raw little-endian C-order bytes, without a copy when it is already contiguous."""
    t = t.detach().cpu().contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return t.view(torch.uint8).numpy().data


@dataclass
class FileStart:
    """Where a started file's tensors go: ``offsets[name]`` (bytes), the final ``size``, and per-format
    bookkeeping (``records``: torch zip record names)."""

    offsets: dict[str, int]
    size: int
    records: dict[str, str]


class FileLayout:
    """The hook every weight-file format implements (see the module docstring).

    ``name``: the format it writes; ``needs_crc``: whether :meth:`finish` is handed each tensor's CRC-32
    (the writer computes them as the bytes go out only for a layout that asks); ``sequential``: whether the
    file is written front to back when its tensors come in file order (False: it patches earlier bytes, so
    it cannot be streamed to an object store).
    """

    name: str = ""
    needs_crc: bool = False
    sequential: bool = True  # written front to back when tensors come in file order (an upload can take it)

    def start(self, f: BinaryIO, path: Path, specs: list[TensorSpec], metadata: dict[str, str] | None) -> FileStart:
        raise NotImplementedError

    def write_tensor(self, f: BinaryIO, start: FileStart, name: str, data: memoryview) -> None:
        f.seek(start.offsets[name])
        for i in range(0, len(data), WRITE_SLICE):
            f.write(data[i : i + WRITE_SLICE])

    def finish(self, f: BinaryIO, start: FileStart, crcs: dict[str, int]) -> None:
        """Patch what is known only when every tensor is in (``crcs``: tensor name -> CRC-32)."""
