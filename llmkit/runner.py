"""The runner: :func:`execute` runs a plan into its opened sink, one tensor at a time (``pipeline.run_plan``
calls it; see docs/DEVELOPING.md "Runner")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llmkit.pipeline import Check, Plan, ProgressFactory, carry_side_files, no_progress
from llmkit.read_order import leaf_reads, run_order

if TYPE_CHECKING:
    import torch

    from llmkit.io.core.sink import Sink


@dataclass
class Execution:
    """What :func:`execute` did: final file names, tap results, seconds."""

    files: list[str]
    checks: list[Check]
    seconds: float


def tensor_stream(plan: Plan, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, produced tensor) in the order ``names``; the next tensor's inputs are prefetched while this one
    is computed. The caller releases each tensor's inputs (:func:`release_inputs`) once it has been written."""
    for i, name in enumerate(names):
        if i + 1 < len(names):
            for src, key in plan.reads(names[i + 1]):
                src.prefetch(key)
        yield name, plan.produce(name)


def release_inputs(plan: Plan, name: str) -> None:
    """Drop the pages of ``name``'s inputs (mapped ``.bin`` pages do not pile up in RSS, read pages leave
    the page cache). Only after the write: a produced tensor may be a view of a mapped input."""
    for src, key in plan.reads(name):
        src.release(key)


def _write(sink: Sink, name: str, tensor: torch.Tensor) -> int:
    sink.write(name, tensor)
    return tensor.numel() * tensor.element_size()


def execute(plan: Plan, sink: Sink, *, progress: ProgressFactory | None = None) -> Execution:
    """Run ``plan`` into ``sink`` (from :func:`open_plan_sink`); a failure or a failed tap keeps nothing.

    One background thread writes tensor N while tensor N+1 is read and computed (file writes and
    torch ops release the GIL); at most one finished tensor waits, so peak memory is about one
    tensor's working set plus one finished tensor, whatever the model size.
    """
    start = time.perf_counter()
    checks: list[Check] = []
    total = sum(s.nbytes for s in plan.specs)
    order = run_order(plan, sink)
    streams = {  # read to their ends at the last: streams, and remote files read by range (judged whole)
        id(src): src
        for n in order
        for src, key in leaf_reads(plan, n)
        if src.stream_position(key) is not None or getattr(src, "ranged", False)
    }
    with sink, ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmkit-write") as pool:
        # the side files first: they are small and read now, and a stream sink puts config.json in its header
        carry_side_files(plan, sink)
        with (progress or no_progress)(plan.label, total) as advance:
            pending: tuple[Future, str] | None = None
            for name, tensor in tensor_stream(plan, order):
                for tap in plan.taps:
                    tap.feed(name, tensor)
                if pending is not None:
                    advance(pending[0].result())
                    release_inputs(plan, pending[1])
                pending = pool.submit(_write, sink, name, tensor), name
                del tensor
            if pending is not None:
                advance(pending[0].result())
                release_inputs(plan, pending[1])
        for src in streams.values():  # a stream read to its end: one that stopped short keeps nothing
            src.read_to_end()
        for tap in plan.taps:  # decided before the rename: a failed tap raises and nothing is kept
            check = tap.finish()
            if check is not None:
                checks.append(check)
    return Execution(list(sink.files), checks, round(time.perf_counter() - start, 3))
