"""A tensor source shown under other names (a Meta folder as HF names, a MindSpore checkpoint as HF names)."""

from __future__ import annotations

import torch

from llmkit.errors import InputError
from llmkit.io.core.source import TensorSource
from llmkit.io.core.spec import TensorInfo


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
            index=source.index,
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

    def records(self, name: str) -> int:
        return self.inner.records(self._stored[name])

    @property
    def stores_converted(self) -> bool:  # type: ignore[override]  # the inner source's, per instance
        return self.inner.stores_converted

    def stored_type(self, name: str) -> str | None:
        return self.inner.stored_type(self._stored[name])

    def stored_nbytes(self, name: str) -> int:
        return self.inner.stored_nbytes(self._stored[name])

    def as_stored(self, name: str, values: torch.Tensor) -> torch.Tensor | None:
        return self.inner.as_stored(self._stored[name], values)

    def stream_position(self, name: str) -> int | None:
        return self.inner.stream_position(self._stored[name]) if name in self._stored else None

    def read_to_end(self) -> None:
        self.inner.read_to_end()

    def close(self) -> None:
        self.inner.close()
