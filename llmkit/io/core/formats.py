"""The built-in format families: the modules whose import registers their source and their sink.

A format family is one sub-package of ``llmkit.io`` (``hf``, ``meta``, ``mindspore``, ``gguf``): its source module
calls :func:`llmkit.io.core.source.register_source`, its sink module
:func:`llmkit.io.core.sink.register_sink`. They are imported on first use (the first ``open_source`` or
``open_sink``), so a command that never opens a model never imports torch through them.
"""

from __future__ import annotations

from importlib import import_module

BUILTIN_SOURCES = (
    "llmkit.io.hf.source",
    "llmkit.io.meta.source",
    "llmkit.io.mindspore.source",
    "llmkit.io.gguf.source",
)
BUILTIN_SINKS = ("llmkit.io.hf.sink", "llmkit.io.meta.sink", "llmkit.io.mindspore.sink", "llmkit.io.gguf.sink")
BUILTIN_NAMINGS = ("llmkit.io.mindspore.mindformers", "llmkit.io.meta.names")  # LLaMA weight names (core.naming)


def load_builtin_formats() -> None:
    """Import every built-in format module (each registers itself; a second call costs a dict lookup)."""
    for module in (*BUILTIN_SOURCES, *BUILTIN_SINKS, *BUILTIN_NAMINGS):
        import_module(module)
