"""Inside a Ray task: plan the job again from its options and write one output file into the driver's stage.

:func:`write_piece_task` is the task (a module-level function: Ray pickles it by name, so every node needs
the same llmkit). It calls the job's library function (``llmkit.cluster.jobs``) under
:func:`llmkit.cluster.writing_piece`; the job plans as always, and its ``run_plan`` comes here
(:func:`run_piece`): the piece's tensors produced in file order with the same ``produce`` code, written by
:func:`llmkit.io.core.pieces.write_piece`, the parts of the plan's split taps kept, and the job left by
:class:`PieceWritten` (nothing after its runner runs on a worker).

The ledger: each piece's size and sha256 are recorded in the stage (``.llmkit-pieces/N.json``) once its
file is in place. A retried piece (its worker was killed after the record) must hash the same, or the job
fails: a plan whose bytes change between runs is a bug, never hidden.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.errors import CheckFailed, InputError
from llmkit.io.core.layout import FileLayout
from llmkit.io.core.pieces import PIECE_DIR, PieceFile, write_piece
from llmkit.io.core.spec import TensorSpec

if TYPE_CHECKING:
    import torch

    from llmkit.chain_hook import ChainHook
    from llmkit.cluster.ranges import RangeTask
    from llmkit.pipeline import Plan

HOLD_ENV = "LLMKIT_TEST_HOLD_PIECE"  # tests only: a folder; piece 0's first attempt records its PID there and waits
HOLD_SECONDS = 300


@dataclass(frozen=True)
class PieceTask:
    """One output file to write: the job and its options (to plan it again), the file as the driver's sink
    laid it out, and the driver's stage folder (on a filesystem every node shares)."""

    job: str  # the entry that plans it again (llmkit.cluster.jobs): the job, or "chain" for a fused chain
    options: Any  # the entry's frozen options dataclass
    index: int  # the file's number in the sink's plan
    file: str
    specs: list[TensorSpec]  # in file order
    layout: FileLayout
    metadata: dict[str, str] | None
    stage: str
    hold: str | None = None  # HOLD_ENV of the driver (tests)
    planned: str = ""  # the job whose plan writes the file (a chain's last stage), when not ``job``
    context: TaskContext | None = None  # what the driver's run saw: the hub endpoint, the remote listings


@dataclass(frozen=True)
class TaskContext:
    """What a task must see as the driver did: the hub endpoint (``--endpoint``) and each remote input's
    listing (URL -> file -> size and digest), which the task's own listing must equal."""

    endpoint: str | None = None
    listing: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class PieceDone:
    """What a task returns: the file written and, per tensor, its split taps' parts (in the plan's tap order);
    in a chain, also each inner stage's (``inner``, in stage order)."""

    index: int
    piece: PieceFile
    parts: dict[str, list[object]] = field(default_factory=dict)
    pid: int = 0
    inner: list[dict[str, list[object]]] = field(default_factory=list)


class PieceWritten(Exception):  # not an error: how a job's call ends inside a task
    """Raised by :func:`run_piece` to leave the job's library call once the piece is written."""

    def __init__(self, done: Any):  # a PieceDone, or a RangeDone (llmkit.cluster.ranges)
        super().__init__(done.index)
        self.done = done


def write_piece_task(task: PieceTask) -> PieceDone:
    """The Ray task: plan ``task.job`` from its options and write file ``task.index``."""
    done: PieceDone = rebuilt_and_written(task)
    return done


def rebuilt_and_written(task: Any) -> Any:
    """Run ``task.job`` from ``task.options`` in piece mode: its ``run_plan`` writes the task's file (or byte
    range) and raises :class:`PieceWritten` with what it wrote, which this returns."""
    from llmkit import cluster
    from llmkit.cluster.jobs import job_entry
    from llmkit.io.remote.ranged import listed_as
    from llmkit.io.remote.store import hub_endpoint

    entry = job_entry(task.job)
    context = task.context or TaskContext()
    with cluster.writing_piece(task), hub_endpoint(context.endpoint), listed_as(context.listing):
        try:
            entry(task.options)
        except PieceWritten as written:
            return written.done
    raise InputError(f"{task.job} ended without reaching its runner on the worker")


def run_piece(plan: Plan, chain: ChainHook | None = None) -> None:
    """``run_plan`` inside a task: write this task's file from ``plan`` (the last stage of ``chain``, when the
    task runs a fused chain: its inner stages' tap parts are kept too); always raises (:class:`PieceWritten`)."""
    from llmkit import cluster

    task = cluster.current_piece()
    assert task is not None
    inner = chain.inner_parts() if chain is not None else []
    if not isinstance(task, PieceTask):  # a byte range of a one-file output
        from llmkit.cluster.ranges import run_range

        run_range(plan, task, inner)
    with plan:
        _check_same_plan(plan, task)
        split = [t for t in plan.taps if hasattr(t, "part")]
        parts: dict[str, list[object]] = {}
        stage = Path(task.stage)
        tensors = _produced(plan, task, split, parts)
        piece = write_piece(stage, task.file, task.specs, task.layout, task.metadata, tensors, started=_hold(task))
        _record(stage, task.index, piece)
    raise PieceWritten(PieceDone(task.index, piece, parts, os.getpid(), inner))


def _check_same_plan(plan: Plan, task: PieceTask | RangeTask) -> None:
    """The plan made here must be the driver's for this file (same job, same names, dtypes and shapes)."""
    mine = {s.name: (s.dtype, s.shape) for s in plan.specs}
    planned = task.planned or task.job
    if plan.job != planned:
        raise InputError(f"the worker planned {plan.job}, the driver {planned}")
    for s in task.specs:
        if mine.get(s.name) != (s.dtype, s.shape):
            raise InputError(
                f"the plan made on the worker differs from the driver's at {s.name!r}",
                path=plan.output,
                hint="every node must see the same input files and run the same llmkit",
            )


def _produced(
    plan: Plan, task: PieceTask | RangeTask, split: list, parts: dict[str, list[object]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """The piece's tensors in file order: the next one's inputs prefetched, each one's released once written."""
    from llmkit.runner import release_inputs, tensor_stream

    for name, tensor in tensor_stream(plan, [s.name for s in task.specs]):
        parts[name] = [t.part(name, tensor) for t in split]
        yield name, tensor
        del tensor
        release_inputs(plan, name)


def _record(stage: Path, index: int, piece: PieceFile) -> None:
    """Record the piece in the stage's ledger (:func:`record`)."""
    entry = {"file": piece.name, "size": piece.size, "sha256": piece.sha256}
    record(stage / PIECE_DIR / f"{index}.json", entry, piece.name)


def record(ledger: Path, entry: dict[str, Any], what: str) -> None:
    """Record a piece (or a byte range) of ``what`` in the ledger file ``ledger``; a record already there (an
    earlier attempt of the same task) must agree, else the job is not deterministic and fails."""
    if ledger.exists():
        earlier = json.loads(ledger.read_text())
        if earlier != entry:
            raise CheckFailed(
                f"{what} was written twice with different bytes (sha256 {earlier.get('sha256')} then "
                f"{entry.get('sha256')}): the job is not deterministic, nothing is kept"
            )
        return
    tmp = ledger.with_suffix(f".{os.getpid()}")
    tmp.write_text(json.dumps(entry))
    os.replace(tmp, ledger)


def _hold(task: PieceTask) -> Any:
    """Tests only: piece 0's first attempt records its PID in ``task.hold`` once its header is written and
    waits to be killed (or for its stage to go: the driver died and a re-run removed it)."""
    if task.hold is None or task.index != 0:
        return None
    mark = Path(task.hold) / "piece-0.pid"

    def wait(path: Path) -> None:
        if mark.exists():  # a retry: write
            return
        tmp = mark.with_suffix(".tmp")
        tmp.write_text(str(os.getpid()))
        os.replace(tmp, mark)
        deadline = time.monotonic() + HOLD_SECONDS
        while time.monotonic() < deadline and Path(task.stage).is_dir():
            time.sleep(0.05)
        raise InputError("the held piece was not killed")

    return wait
