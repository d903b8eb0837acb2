"""The only code that knows file formats, one sub-package per format family on a shared core.

- ``core``: tensor specs, the source and sink protocols and their registries (``open_source``,
  ``open_sink``), the safe sharded writer, staging and destination rules, the small-file readers;
- ``hf``: safetensors and torch ``.bin`` files, single or sharded, and peft adapters;
- ``meta``: Meta's ``consolidated.NN.pth`` + ``params.json``, and that layout seen as an HF model;
- ``mindspore``: MindSpore ``.ckpt`` (plain or encrypted) and MindFormers' names.

The re-exports below are resolved on first use (PEP 562), so importing a torch-free module of this
package (``llmkit.io.core.sniff``, ``llmkit.io.core.destination``) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DEFAULT_SHARD_SIZE": "llmkit.units",
    "ShardedWriter": "llmkit.io.hf.sink",
    "TensorSpec": "llmkit.io.core.spec",
    "parse_size": "llmkit.units",
    "TensorInfo": "llmkit.io.core.spec",
    "TensorSource": "llmkit.io.core.source",
    "open_model": "llmkit.io.core.source",
    "open_source": "llmkit.io.core.source",
    "open_sink": "llmkit.io.core.sink",
}
__all__ = [  # the names of _EXPORTS
    "DEFAULT_SHARD_SIZE",
    "ShardedWriter",
    "TensorInfo",
    "TensorSource",
    "TensorSpec",
    "open_model",
    "open_sink",
    "open_source",
    "parse_size",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
