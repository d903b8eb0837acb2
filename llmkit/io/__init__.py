"""The only code that knows file formats: tensor sources (readers), sinks (writers), sniffing, destinations.

The re-exports below are resolved on first use (PEP 562), so importing a torch-free module of this
package (``llmkit.io.sniff``, ``llmkit.io.destination``) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DEFAULT_SHARD_SIZE": "llmkit.io.sinks",
    "ShardedWriter": "llmkit.io.sinks",
    "TensorSpec": "llmkit.io.sinks",
    "parse_size": "llmkit.io.sinks",
    "TensorInfo": "llmkit.io.sources",
    "TensorSource": "llmkit.io.sources",
    "open_source": "llmkit.io.sources",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
