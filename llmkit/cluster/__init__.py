"""A plan's output files written as Ray tasks (``--ray ADDRESS``; docs/scaling.md).

This module is what the CLI and the runner import at start-up: two context variables and nothing of Ray.

- :func:`on_ray` (the CLI's ``--ray``): within it, :func:`llmkit.pipeline.run_plan` hands the plan to
  :func:`llmkit.cluster.driver.run_on_ray`, which opens the sink as always (claim, stage, checks), submits one
  task per output file (a one-file ``.ckpt`` or ``.gguf``: per byte range, :mod:`llmkit.cluster.ranges`), verifies every
  piece and makes the output final in one rename.
- :func:`writing_piece` (inside a task, :mod:`llmkit.cluster.worker`): the job is planned again from its
  options and ``run_plan`` writes only the task's file into the driver's stage (:func:`llmkit.cluster.worker.run_piece`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmkit.cluster.ranges import RangeTask
    from llmkit.cluster.worker import PieceTask

_ADDRESS: ContextVar[str | None] = ContextVar("llmkit_ray_address", default=None)
_FALLBACK: ContextVar[bool] = ContextVar("llmkit_ray_fallback", default=False)
_PIECE: ContextVar[PieceTask | RangeTask | None] = ContextVar("llmkit_ray_piece", default=None)


@contextmanager
def on_ray(address: str | None, *, local_fallback: bool = False) -> Iterator[None]:
    """Within the block, tensor jobs run as Ray tasks on the cluster at ``address`` (``auto`` or
    ``HOST:PORT``); None: in this process, as without the block. A job Ray cannot split is refused, or
    with ``local_fallback`` (a recipe's steps) runs in this process with a notice saying why."""
    token, fallback = _ADDRESS.set(address), _FALLBACK.set(local_fallback)
    try:
        yield
    finally:
        _ADDRESS.reset(token)
        _FALLBACK.reset(fallback)


def falls_back() -> bool:
    """Whether a job Ray cannot split runs in this process (a recipe's step) instead of being refused."""
    return _FALLBACK.get()


def current_address() -> str | None:
    """The ``--ray`` address of this run, or None (one process)."""
    return _ADDRESS.get()


@contextmanager
def writing_piece(task: PieceTask | RangeTask) -> Iterator[None]:
    """Within the block (a Ray task), ``run_plan`` writes ``task``'s one output file (or byte range) and nothing else."""
    token = _PIECE.set(task)
    try:
        yield
    finally:
        _PIECE.reset(token)


def current_piece() -> PieceTask | RangeTask | None:
    """The piece this process is writing (inside a Ray task), or None."""
    return _PIECE.get()
