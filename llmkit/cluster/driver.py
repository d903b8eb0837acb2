"""``--ray ADDRESS``: the driver. Plan and check as always, then one Ray task per output file (a one-file
``.ckpt``: per byte range, :mod:`llmkit.cluster.ranges`); the output is made final only when every piece is
back and verified.

The order of a run (:func:`run_on_ray`): what cannot be split is refused in one line before anything is
opened (:func:`refusal`); the sink is opened as in one process (destination checks, claim, stage); the side
files are carried; one :func:`~llmkit.cluster.worker.write_piece_task` per output file is submitted, each
declaring the plan's working set as its memory (Ray packs tasks per node by it) and retried up to
``MAX_RETRIES`` times when its worker dies. Each piece that comes back is checked: its layout (offsets,
size) is the one the driver's sink plans, its file in the stage has that size, and the ledger the worker
wrote records the hash it returned. Then the split taps take the pieces' parts in the run's order, every
tap is judged, the index and side files are written and the stage is renamed, as in one process.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.cluster import current_address
from llmkit.cluster.jobs import JOB_ENTRIES
from llmkit.cluster.ranges import RANGE_FORMATS
from llmkit.cluster.worker import HOLD_ENV, PieceDone, PieceTask, TaskContext, write_piece_task
from llmkit.errors import CheckFailed, InputError
from llmkit.io.core.pieces import PIECE_DIR
from llmkit.pipeline import (
    Check,
    Notice,
    Plan,
    PlanReport,
    ProgressFactory,
    R,
    RunOptions,
    carry_side_files,
    no_progress,
    open_plan_sink,
    planned_result,
)
from llmkit.read_order import leaf_reads, leaf_sources, run_order
from llmkit.runner import Execution
from llmkit.units import human_bytes

if TYPE_CHECKING:
    from llmkit.chain_hook import ChainHook
    from llmkit.io.core.sink import Sink
    from llmkit.io.core.writer import ShardSetWriter

MAX_RETRIES = 3  # a piece whose worker died is written again (same name, same bytes)
CONNECT_SECONDS = 5
SPLIT_FORMATS = ("safetensors", "bin")  # outputs of several files, one task per file


def refusal(plan: Plan, options: RunOptions, chain: ChainHook | None = None) -> str | None:
    """Why ``plan`` (the last stage of ``chain``, if any) cannot run as Ray tasks yet (one line), or None."""
    from llmkit.io.remote.url import remote_url

    if chain is not None and chain.entry is None:
        return "--ray runs a chain of jobs only as a recipe's fused step (llmkit recipe run --ray)"
    if chain is not None and chain.entry is not None and getattr(chain.entry[1], "keep", None):
        return "--ray does not write a chain's inner outputs from its tasks (--keep-intermediate)"
    if str(plan.output) == "-":
        return "--ray writes files on a shared filesystem, not a stream on stdout (-o -)"
    if remote_url(plan.output) is not None:
        return "--ray writes into a folder every node shares; an s3:// or hf:// output is not split yet"
    if plan.job not in JOB_ENTRIES:
        return f"--ray does not run {plan.job} yet (it runs {', '.join(sorted(set(JOB_ENTRIES)))})"
    if plan.fmt not in SPLIT_FORMATS + RANGE_FORMATS:
        return f"--ray does not split a {plan.fmt} output yet (it splits by file, and by byte range a .ckpt or a .gguf)"
    if plan.fmt == "gguf" and plan.sink_options.get("split_max_size"):
        return "--ray writes a GGUF as one file by byte range; a split GGUF (--split-max-size) is not split yet"
    if plan.sink_options.get("enc_key") is not None:
        return (
            "an encrypted .ckpt is one chain of AES blocks written front to back: --ray cannot split it by byte range"
        )
    for tap in [t for top in plan.taps for t in getattr(top, "stage_taps", [top])]:  # a chain: its stages'
        if not hasattr(tap, "part") and getattr(tap, "reads_output", True):
            return f"--ray cannot combine {type(tap).__name__} from pieces"
    for spec in plan.specs:
        if any(src.stream_position(key) is not None for src, key in leaf_reads(plan, spec.name)):
            return "--ray reads inputs on every node; a stream on stdin is not split"
    for f in dataclasses.fields(options):  # type: ignore[arg-type]
        value = getattr(options, f.name)
        if isinstance(value, str) and value.startswith("env:"):
            return f"--{f.name.replace('_', '-')} {value.split(':')[0]}:VAR is read from this process's environment, which Ray workers do not see; use a key file every node can read"
    return None


def run_on_ray(
    plan: Plan,
    options: RunOptions,
    result_for: Callable[[PlanReport, Sink], R],
    progress: ProgressFactory | None,
    *,
    chain: ChainHook | None = None,
) -> R:
    """:func:`llmkit.pipeline.run_plan` on the Ray cluster at ``--ray``'s address (see the module docstring)
    for a plan :func:`refusal` lets through; ``plan`` is the last stage of ``chain`` (absorbed), which each
    task runs again whole."""
    address = current_address()
    assert address is not None
    with plan:
        sink = open_plan_sink(plan, force=options.force)
        one_file = plan.fmt in RANGE_FORMATS
        writer = sink if one_file else _writer(sink)
        if options.dry_run:  # in the plan's notices: every job shows those with its plan
            plan.notices += dry_run_notices(writer, address, one_file=one_file)
        result = planned_result(plan, options, result_for, sink)
        if options.dry_run:
            return result
        job = Job(plan, options, chain)
        if one_file:
            from llmkit.cluster.ranges import run_ranges

            done = run_ranges(job, sink, address, progress)  # type: ignore[arg-type]
        else:
            done = _run(job, sink, address, progress)
    result.files, result.seconds, result.outputs = done.files, done.seconds, [result.output]
    result.checks += done.checks
    return result


@dataclasses.dataclass(frozen=True)
class Job:
    """What the driver runs: the plan that writes the output, the run's options, and the chain it ends (if any)."""

    plan: Plan
    options: RunOptions
    chain: ChainHook | None = None

    @property
    def entry(self) -> tuple[str, Any]:
        """(job, options) a task calls to plan the output again (``llmkit.cluster.jobs``): a chain's whole."""
        if self.chain is not None and self.chain.entry is not None:
            return self.chain.entry
        return self.plan.job, self.options

    @functools.cached_property
    def context(self) -> TaskContext:
        """What every task must see as this run does: the hub endpoint, the remote inputs' listings."""
        from llmkit.io.remote.ranged import listing
        from llmkit.io.remote.store import current_endpoint

        return TaskContext(current_endpoint(), listing(remote_inputs(self.plan)))

    def submit_input_checks(self, ray: Any) -> dict[Any, Any]:
        """One Ray task per remote input file read by range: read whole, judged against the listed digest
        (Ray ref -> its :class:`~llmkit.io.remote.ranged.VerifyFile`); :func:`wait_for` them."""
        from llmkit.io.remote.ranged import verifications, verify_file

        files = verifications(remote_inputs(self.plan), self.context.endpoint)
        remote = ray.remote(verify_file).options(max_retries=MAX_RETRIES, retry_exceptions=False, num_cpus=1)
        return {remote.remote(v): v for v in files}

    def judged(self, sink: Sink, parts: dict[str, list[object]], inner: list[dict[str, list[object]]]) -> list[Check]:
        """Every tap judged from the pieces' parts (a chain's inner stages' too: ``inner``, merged per stage)."""
        if self.chain is not None:
            self.chain.take_inner_parts(self.plan, run_order(self.plan, sink), inner)
        return judged_taps(self.plan, sink, parts)


def remote_inputs(plan: Plan) -> list[Any]:
    """The remote sources ``plan`` reads by range (``--ray``), each once."""
    return [src for src in leaf_sources(plan) if getattr(src, "ranged", False)]


def wait_for(ray: Any, refs: dict[Any, Any]) -> None:
    """Every task of ``refs`` done; the first that failed raises its own error."""
    for _ in gathered(ray, refs):
        pass


def merge_inner(into: list[dict[str, list[object]]], got: list[dict[str, list[object]]]) -> None:
    """Add one piece's inner-stage parts (one dict per inner stage) to ``into``."""
    if not into:
        into.extend({} for _ in got)
    for mine, theirs in zip(into, got, strict=True):
        mine.update(theirs)


def _writer(sink: Sink) -> ShardSetWriter:
    from llmkit.io.core.writer import ShardSetWriter

    if not isinstance(sink, ShardSetWriter) or sink.stage_folder is None:
        raise InputError("--ray needs an output folder on a local or shared filesystem", hint="run without --ray")
    return sink


def piece_sizes(writer: ShardSetWriter) -> list[tuple[str, int]]:
    """(file name, tensor bytes) of every piece, in file order."""
    return [(sh.name, sum(s.nbytes for s in sh.specs)) for sh in writer.shards]


def dry_run_notices(writer: Any, address: str, *, one_file: bool = False) -> list[Notice]:
    """What ``--dry-run --ray`` adds: the pieces (files, or a one-file output's byte ranges), bytes per
    piece, the parallelism the cluster offers."""
    cpus, nodes, error = cluster_cpus(address)
    if one_file:
        from llmkit.cluster.ranges import dry_run_lines

        lines, count = dry_run_lines(writer, cpus)
    else:
        pieces = piece_sizes(writer)
        listed = ", ".join(f"{n} ({human_bytes(b)})" for n, b in pieces)
        lines, count = [f"ray: {len(pieces)} piece(s), one task per file: {listed}"], len(pieces)
    if cpus is None:
        at_once = f"parallelism unknown ({error})"
    else:
        at_once = f"{min(count, int(cpus))} task(s) at once ({int(cpus)} CPUs on {nodes} node(s))"
    return [*(Notice.info(line) for line in lines), Notice.info(f"ray: {at_once}")]


def cluster_cpus(address: str) -> tuple[float | None, int, str]:
    """(CPUs, alive nodes, '') of the cluster at ``address``, or (None, 0, why) when none is reachable."""
    try:
        ray = connect(address)
    except Exception as e:  # a dry run says why, whatever Ray raised
        why = e.args[0] if isinstance(e, InputError) and e.args else str(e)
        return None, 0, str(why).splitlines()[0] if str(why) else type(e).__name__
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return float(ray.cluster_resources().get("CPU", 0)), len(nodes), ""


def connect(address: str) -> Any:
    """Ray, connected to ``address`` (``auto``: RAY_ADDRESS or the cluster running on this machine)."""
    try:
        import ray
    except ImportError as e:
        raise InputError("--ray needs Ray", hint="pip install 'llmkit[ray]'") from e
    if not ray.is_initialized():
        _check_reachable(address)
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
    return ray


def _check_reachable(address: str) -> None:
    """One line, at once, when nothing answers at ``address`` (``ray.init`` would retry for minutes)."""
    import socket

    target = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # auto without RAY_ADDRESS: Ray looks for the cluster on this machine itself
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise InputError(
            f"no Ray cluster answers at {target} ({e.strerror or e})",
            hint="start one (ray start --head) or pass the head's HOST:PORT to --ray",
        ) from None


def task_memory(ray: Any, plan: Plan) -> int:
    """The memory each task declares: the plan's working set, at most the largest node's (never unschedulable)."""
    largest = max((n.get("Resources", {}).get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    return int(min(plan.working_set_bytes, largest)) if largest else 0


def _tasks(job: Job, writer: ShardSetWriter, stage: Path) -> list[PieceTask]:
    hold, (entry, options) = os.environ.get(HOLD_ENV), job.entry
    return [
        PieceTask(entry, options, i, sh.name, list(sh.specs), writer.layout, writer.metadata, str(stage), hold,
                  planned=job.plan.job, context=job.context)
        for i, sh in enumerate(writer.shards)
    ]  # fmt: skip


def _run(job: Job, sink: Sink, address: str, progress: ProgressFactory | None) -> Execution:
    start, plan = time.perf_counter(), job.plan
    writer = _writer(sink)
    ray = connect(address)
    from llmkit.cluster import resume

    if resume.resumable(job):
        writer._staging.salvage = resume.salvage  # type: ignore[attr-defined]  # a StagedFolder (_writer)
    with writer:
        carry_side_files(plan, sink)
        stage = writer.stage_folder
        assert stage is not None
        (stage / PIECE_DIR).mkdir()
        kept = resume.kept_pieces(job, writer, stage)
        tasks = {t.index: t for t in _tasks(job, writer, stage) if t.index not in kept}
        memory = task_memory(ray, plan)
        remote = ray.remote(write_piece_task).options(
            max_retries=MAX_RETRIES, retry_exceptions=False, num_cpus=1, **({"memory": memory} if memory else {})
        )
        checks_of_inputs = job.submit_input_checks(ray)
        refs = {remote.remote(t): t for t in tasks.values()}
        parts: dict[str, list[object]] = {}
        inner: list[dict[str, list[object]]] = []
        total = sum(s.nbytes for s in plan.specs)
        with (progress or no_progress)(plan.label, total) as advance:
            advance(sum(s.nbytes for i in kept for s in writer.shards[i].specs))
            for done in gathered(ray, refs):
                _adopt(writer, stage, done, tasks[done.index])
                parts.update(done.parts)
                merge_inner(inner, done.inner)
                advance(sum(s.nbytes for s in tasks[done.index].specs))
        wait_for(ray, checks_of_inputs)
        checks = job.judged(sink, parts, inner) + resume.kept_check(kept, len(writer.shards))
        shutil.rmtree(stage / PIECE_DIR)
    return Execution(list(writer.files), checks, round(time.perf_counter() - start, 3))


def gathered(ray: Any, refs: dict[Any, Any]) -> Any:
    """Each piece's result as it comes back (``refs``: Ray ref -> its task, with ``.file``); a failed piece cancels the others and raises its own error."""
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                yield ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                raise (
                    cause
                    if isinstance(cause, Exception)
                    else InputError(f"the task writing {refs[ready[0]].file} failed: {str(e).splitlines()[0]}")
                ) from None
            except ray.exceptions.RayError as e:
                raise InputError(
                    f"the task writing {refs[ready[0]].file} failed after {MAX_RETRIES} retries: {type(e).__name__}",
                    hint="see the Ray logs of the cluster",
                ) from None
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def _adopt(writer: ShardSetWriter, stage: Path, done: PieceDone, task: PieceTask) -> None:
    """Verify a returned piece (layout as planned, size on disk, the ledger's hash) and count it as written."""
    import json

    planned = writer.planned_start(done.index, stage / PIECE_DIR / f"plan-{done.index}")
    piece = done.piece
    if piece.name != task.file or piece.start != planned:
        raise CheckFailed(f"{task.file} came back laid out differently from the plan; nothing is kept")
    actual = (stage / piece.name).stat().st_size
    if actual != planned.size or piece.size != planned.size:
        raise CheckFailed(f"{piece.name} has {actual} bytes in the stage, planned {planned.size}; nothing is kept")
    ledger = json.loads((stage / PIECE_DIR / f"{done.index}.json").read_text())
    if ledger.get("sha256") != piece.sha256:
        raise CheckFailed(
            f"{piece.name} was written twice with different bytes (sha256 {ledger.get('sha256')} and "
            f"{piece.sha256}): the job is not deterministic, nothing is kept"
        )
    writer.adopt(done.index, planned)


def judged_taps(plan: Plan, sink: Sink, parts: dict[str, list[object]]) -> list[Check]:
    """The split taps take every tensor's parts in the one-process order; then every tap is judged."""
    split = [t for t in plan.taps if hasattr(t, "part")]
    if split:
        for name in run_order(plan, sink):
            for tap, part in zip(split, parts[name], strict=True):
                tap.take(name, part)  # type: ignore[attr-defined]
    return [c for c in (tap.finish() for tap in plan.taps) if c is not None]
