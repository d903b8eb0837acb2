"""What a tensor is before its data: :class:`TensorSpec` (an output as planned) and :class:`TensorInfo`
(an input as its file's header describes it). Sizes in bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from llmkit.io.core.dtypes import itemsize


@dataclass(frozen=True)
class TensorSpec:
    """An output tensor as planned: name, dtype, shape."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * itemsize(self.dtype)


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
