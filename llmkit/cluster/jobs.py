"""The jobs a Ray task can plan again from their options: job name (``Plan.job``) -> its library call.

A worker cannot be handed a :class:`~llmkit.pipeline.Plan` (closures, open files), but every job's options
are a frozen dataclass of paths and strings, and its library call plans it from them the same way every time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# job -> "module:function", called as function(options) (every one ends in pipeline.run_plan)
JOB_ENTRIES = {
    "recover": "llmkit.recover.job:run",
    "make-diff": "llmkit.recover.job:run",
    "merge-lora": "llmkit.lora.merge:run",
    "from-meta": "llmkit.convert.meta:from_meta",
    "from-ckpt": "llmkit.convert.from_ckpt:from_ckpt",
    "from-gguf": "llmkit.convert.from_gguf:from_gguf",
    "to-ckpt": "llmkit.convert.to_ckpt:to_ckpt",  # a .ckpt by byte ranges (llmkit.cluster.ranges)
    "to-gguf": "llmkit.convert.gguf:to_gguf",  # a .gguf by byte ranges (llmkit.cluster.gguf_ranges)
    "chain": "llmkit.recipes.fusion:run_chain_step",  # a recipe's fused chain: its last stage's output
}


def job_entry(job: str) -> Callable[[Any], Any]:
    """The library call that plans and runs ``job`` from its options."""
    module, _, name = JOB_ENTRIES[job].partition(":")
    fn: Callable[[Any], Any] = getattr(importlib.import_module(module), name)
    return fn
