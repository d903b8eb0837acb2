"""``--ray`` for a one-file output whose layout is fixed by the plan (a ``.ckpt``, a ``.gguf``): byte ranges.

Every tensor's offset in such a file is fixed before any tensor is computed: a plain ``.ckpt`` is its tensors'
records back to back in plan order (no header; every record header is known from the specs,
:func:`llmkit.io.mindspore.ckpt.record_headers`); a GGUF file is its header (fixed by the side files), then
each tensor at its padded offset (:mod:`llmkit.cluster.gguf_ranges`). :func:`one_file` is that layout as a
:class:`OneFile`: the bytes before the tensors, every tensor's slot, and how a tensor becomes its slot's bytes.
The driver (:func:`run_ranges`) stages the one file as in one process
(:class:`~llmkit.io.core.staging.StagedFile`, with the claim), writes the head, sizes the file to its final
length and splits the tensors into contiguous byte ranges (:func:`split_ranges`: about two per cluster CPU,
never more than the tensors). Each Ray task (:func:`write_range_task`) plans the job again, writes its
tensors' bytes at their offsets in the staged file (a shared filesystem), fsyncs and returns the range's
size, sha256 (and for a ``.ckpt`` its CRC-32); the ledger beside the stage (``<stage>.ranges/N.json``)
records each range's hash once its bytes are in, so a retry that hashes differently fails the job. A killed
worker's retry rewrites the same bytes at the same offsets. When every range is back and checked, the driver
writes the ``.ckpt``'s CRC trailer (``--crc``: the ranges' CRCs combined, :func:`llmkit.cluster.crc.crc32_combine`), fsyncs and
renames. Encryption chains the file through AES blocks written front to back: refused
(:func:`llmkit.cluster.driver.refusal`), as a split GGUF (a folder of files, each with its own header).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from llmkit.errors import CheckFailed, InputError, writing
from llmkit.io.core.layout import WRITE_SLICE, FileStart, tensor_bytes
from llmkit.io.core.spec import TensorSpec

if TYPE_CHECKING:
    import torch

    from llmkit.cluster.driver import Job
    from llmkit.cluster.worker import TaskContext
    from llmkit.io.core.writer import ShardSetWriter
    from llmkit.pipeline import Plan, ProgressFactory
    from llmkit.runner import Execution

RANGE_FORMATS = ("ckpt", "gguf")  # one file, every offset fixed by the plan
RANGES_PER_CPU = 2


class SlotBytes(Protocol):
    """How a tensor becomes the bytes of its slot in the file (pickled into each range task)."""

    def chunks(self, spec: TensorSpec, tensor: torch.Tensor) -> Iterator[memoryview]:
        """The slot's bytes, in order (the plan checked ``tensor`` is ``spec``)."""
        ...

    def narrowed(self, specs: list[TensorSpec]) -> SlotBytes:
        """What a range of the tensors ``specs`` needs of this (sent with its task)."""
        ...


@dataclass(frozen=True)
class Slot:
    """Where a planned tensor's bytes go: ``offset`` in the file, ``size`` bytes (record headers, padding
    included; 0: produced, as in one process, but not stored: GGUF drops the rotary tables)."""

    spec: TensorSpec  # the plan's tensor, as ``produce`` makes it
    offset: int
    size: int


@dataclass(frozen=True)
class OneFile:
    """A one-file output's layout, fixed by the plan: ``head`` (bytes at 0, the driver writes them: a GGUF
    header and its padding), every tensor's slot in file order, the file's ``size`` (bytes), the layout the
    sink adopts, how a slot's bytes are made (``bytes_of``); ``crc``: the ranges return CRC-32s and the
    driver appends a ``.ckpt`` CRC trailer."""

    head: bytes
    slots: list[Slot]
    size: int
    start: FileStart
    bytes_of: SlotBytes
    crc: bool = False


@dataclass(frozen=True)
class CkptRecords:
    """A ``.ckpt`` slot: the tensor's records (a header, then its data; split over 512 MiB)."""

    def chunks(self, spec: TensorSpec, tensor: torch.Tensor) -> Iterator[memoryview]:
        from llmkit.io.mindspore.ckpt import record_headers

        data, done = tensor_bytes(tensor), 0
        for header, n in record_headers(spec):
            yield memoryview(header)
            yield data[done : done + n]
            done += n

    def narrowed(self, specs: list[TensorSpec]) -> CkptRecords:
        return self


@dataclass(frozen=True)
class ByteRange:
    """Tensors ``specs`` (contiguous, in file order), whose bytes fill [offset, offset + size) of the file."""

    offset: int
    size: int
    specs: list[TensorSpec]
    offsets: tuple[int, ...]  # each tensor's, in the file


@dataclass(frozen=True)
class RangeTask:
    """One byte range of the staged file ``path`` to write: the job and its options (to plan it again)."""

    job: str
    options: Any
    index: int
    file: str  # for messages: "model.ckpt bytes A-B"
    offset: int
    size: int
    specs: list[TensorSpec]
    path: str  # the driver's staged file (a shared filesystem)
    ledger: str  # folder of the ranges' records
    hold: str | None = None  # HOLD_ENV of the driver (tests)
    offsets: tuple[int, ...] = ()  # each tensor's offset in the file
    bytes_of: SlotBytes = CkptRecords()
    crc: bool = False  # return the range's CRC-32 (a .ckpt's trailer)
    planned: str = ""  # the job whose plan writes the file (a chain's last stage), when not ``job``
    context: TaskContext | None = None  # the driver's hub endpoint and remote listings


@dataclass
class RangeDone:
    """What a range task returns: its bytes' size, sha256 and CRC-32 (0 unless asked), its tensors' split-tap parts."""

    index: int
    size: int
    sha256: str
    crc: int
    parts: dict[str, list[object]] = field(default_factory=dict)
    pid: int = 0
    inner: list[dict[str, list[object]]] = field(default_factory=list)  # a chain's inner stages' parts


def split_ranges(slots: list[Slot], count: int) -> list[ByteRange]:
    """At most ``count`` contiguous ranges of about equal bytes; a tensor is never cut (at least one per range),
    and one that fills no bytes stays in the range before it."""
    base = slots[0].offset if slots else 0
    total = sum(sl.size for sl in slots) or 1
    groups: list[list[Slot]] = []
    last = -1
    for sl in slots:
        r = min(count - 1, (sl.offset - base + sl.size // 2) * count // total)
        if not groups or (r != last and sl.size):
            groups.append([])
            last = r
        groups[-1].append(sl)
    return [
        ByteRange(g[0].offset, sum(sl.size for sl in g), [sl.spec for sl in g], tuple(sl.offset for sl in g))
        for g in groups
    ]


def range_count(cpus: float | None, tensors: int) -> int:
    """Ranges for a cluster of ``cpus`` CPUs: two per CPU (a slow range does not hold the others), at most one
    per tensor; 2 when the cluster is unknown (a dry run without one)."""
    per = RANGES_PER_CPU * max(1, int(cpus)) if cpus else 2
    return max(1, min(per, tensors))


def one_file(sink: ShardSetWriter) -> OneFile:
    """The sink's one file as planned (nothing is written): a ``.ckpt``'s, or a GGUF's (``gguf_ranges``)."""
    import io

    if sink.fmt == "gguf":
        from llmkit.cluster.gguf_ranges import gguf_file

        return gguf_file(sink)  # type: ignore[arg-type]
    from llmkit.io.mindspore.ckpt import CkptStart

    specs = list(sink.shards[0].specs)
    start = sink.layout.start(io.BytesIO(), Path(sink.files[0]), specs, {})
    assert isinstance(start, CkptStart)
    sizes = {s.name: sum(len(h) + n for h, n in start.headers[s.name]) for s in specs}
    slots = [Slot(s, start.offsets[s.name], sizes[s.name]) for s in specs]
    return OneFile(b"", slots, start.size, start, CkptRecords(), crc=bool(getattr(sink.layout, "crc", False)))


# ------------------------------------------------------------------ the driver


def dry_run_lines(sink: ShardSetWriter, cpus: float | None) -> tuple[list[str], int]:
    """What ``--dry-run --ray`` shows of a one-file output: its ranges and bytes; and how many."""
    from llmkit.units import human_bytes

    one = one_file(sink)
    ranges = split_ranges(one.slots, range_count(cpus, len(one.slots)))
    listed = ", ".join(f"bytes {r.offset}-{r.offset + r.size} ({len(r.specs)} tensors)" for r in ranges)
    line = f"ray: {len(ranges)} piece(s), byte ranges of {sink.files[0]} ({human_bytes(one.size)}): {listed}"
    return [line], len(ranges)


def run_ranges(job: Job, sink: ShardSetWriter, address: str, progress: ProgressFactory | None) -> Execution:
    """The one file written by range tasks; final only when every range is back and verified."""
    from llmkit.cluster import driver
    from llmkit.pipeline import no_progress
    from llmkit.runner import Execution

    begun, plan = time.perf_counter(), job.plan
    ray = driver.connect(address)
    one = one_file(sink)
    ranges = split_ranges(one.slots, range_count(ray.cluster_resources().get("CPU"), len(one.slots)))
    path = sink.out_dir / sink.files[0]
    with sink:
        stage = Path(getattr(sink._staging, "stage", ""))  # a StagedFile: the driver refused remote outputs
        ledger = Path(f"{stage}.ranges")  # a dead run's is removed with its stage (same prefix)
        try:
            ledger.mkdir()
            with writing(path), open(stage, "wb") as f:
                f.write(one.head)  # a .ckpt has none (record 0 starts at byte 0); a GGUF its header and padding
                f.truncate(one.size)
            tasks = _tasks(job, one, ranges, (path.name, stage, ledger))
            memory = driver.task_memory(ray, plan)
            remote = ray.remote(write_range_task).options(
                max_retries=driver.MAX_RETRIES,
                retry_exceptions=False,
                num_cpus=1,
                **({"memory": memory} if memory else {}),
            )
            checks_of_inputs = job.submit_input_checks(ray)
            refs = {remote.remote(t): t for t in tasks}
            dones: dict[int, RangeDone] = {}
            parts: dict[str, list[object]] = {}
            inner: list[dict[str, list[object]]] = []
            with (progress or no_progress)(plan.label, sum(s.nbytes for s in plan.specs)) as advance:
                for done in driver.gathered(ray, refs):
                    _check_range(done, tasks[done.index], ledger)
                    dones[done.index] = done
                    parts.update(done.parts)
                    driver.merge_inner(inner, done.inner)
                    advance(sum(s.nbytes for s in tasks[done.index].specs))
            driver.wait_for(ray, checks_of_inputs)
            _finish(path, stage, one, [dones[i] for i in range(len(tasks))])
            sink.adopt(0, one.start)
            checks = job.judged(sink, parts, inner)  # type: ignore[arg-type]  # a ckpt or gguf Sink
        finally:
            shutil.rmtree(ledger, ignore_errors=True)
    return Execution(list(sink.files), checks, round(time.perf_counter() - begun, 3))


def _tasks(job: Job, one: OneFile, ranges: list[ByteRange], where: tuple[str, Path, Path]) -> list[RangeTask]:
    """One task per range (``where``: the file's name, its stage, the ledger folder), each carrying only its
    own tensors' ``bytes_of``."""
    from llmkit.cluster.worker import HOLD_ENV

    name, stage, ledger = where
    hold, (entry, options) = os.environ.get(HOLD_ENV), job.entry
    return [
        RangeTask(entry, options, i, f"{name} bytes {r.offset}-{r.offset + r.size}", r.offset, r.size,
                  r.specs, str(stage), str(ledger), hold, planned=job.plan.job, context=job.context, offsets=r.offsets,
                  bytes_of=one.bytes_of.narrowed(r.specs), crc=one.crc)
        for i, r in enumerate(ranges)
    ]  # fmt: skip


def _check_range(done: RangeDone, task: RangeTask, ledger: Path) -> None:
    """A returned range: its size as planned, and the ledger records the hash it returned."""
    if done.size != task.size:
        raise CheckFailed(f"{task.file} came back with {done.size} bytes, planned {task.size}; nothing is kept")
    recorded = json.loads((ledger / f"{done.index}.json").read_text())
    if recorded.get("sha256") != done.sha256 or recorded.get("offset") != task.offset:
        raise CheckFailed(
            f"{task.file} was written twice with different bytes (sha256 {recorded.get('sha256')} and "
            f"{done.sha256}): the job is not deterministic, nothing is kept"
        )


def _finish(path: Path, stage: Path, one: OneFile, dones: list[RangeDone]) -> None:
    """What needs every range: a .ckpt's CRC trailer (CRC-32 of all records), then the file's fsync."""
    from llmkit.cluster.crc import crc32_combine
    from llmkit.io.mindspore.ckpt import CRC_MAGIC

    with writing(path), open(stage, "r+b") as f:
        if one.crc:
            crc = 0
            for d in dones:
                crc = crc32_combine(crc, d.crc, d.size)
            f.seek(one.slots[-1].offset + one.slots[-1].size)
            f.write(CRC_MAGIC + crc.to_bytes(10, "big"))
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------ the task


def write_range_task(task: RangeTask) -> RangeDone:
    """The Ray task: plan ``task.job`` from its options and write range ``task.index`` of the staged file."""
    from llmkit.cluster.worker import rebuilt_and_written

    done: RangeDone = rebuilt_and_written(task)
    return done


def run_range(plan: Plan, task: RangeTask, inner: list[dict[str, list[object]]]) -> NoReturn:
    """``run_plan`` inside a range task: write the range's records; always raises ``PieceWritten`` (``inner``:
    a chain's inner stages' tap parts, filled as the range's tensors are computed)."""
    from llmkit.cluster.worker import PieceWritten, _check_same_plan, _produced

    with plan:
        _check_same_plan(plan, task)
        split = [t for t in plan.taps if hasattr(t, "part")]
        parts: dict[str, list[object]] = {}
        size, digest, crc = write_records(task, _produced(plan, task, split, parts))
        _record(task, size, digest)
    raise PieceWritten(RangeDone(task.index, size, digest, crc, parts, os.getpid(), inner))


def write_records(task: RangeTask, tensors: Iterable[tuple[str, torch.Tensor]]) -> tuple[int, str, int]:
    """Write the range's tensors (in file order) as their slots' bytes (``task.bytes_of``) at their offsets in
    ``task.path``; fsync; (bytes written, their sha256, their CRC-32 when ``task.crc``, else 0)."""
    h, crc, pos = hashlib.sha256(), 0, task.offset
    offsets: tuple[int | None, ...] = task.offsets or (None,) * len(task.specs)
    expected = iter(zip(task.specs, offsets, strict=True))
    with writing(Path(task.path)), open(task.path, "r+b") as f:
        f.seek(pos)
        for i, (name, tensor) in enumerate(tensors):
            spec, at = next(expected, (None, None))
            if spec is None or name != spec.name or tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                raise InputError(
                    f"tensor {name!r} is not planned as {tensor.dtype} {tuple(tensor.shape)} in {task.file}"
                )
            if at is not None and at != pos:
                raise InputError(f"{task.file}: tensor {name!r} planned at byte {at}, reached at {pos}")
            for chunk in task.bytes_of.chunks(spec, tensor):
                for j in range(0, len(chunk), WRITE_SLICE):
                    f.write(chunk[j : j + WRITE_SLICE])
                h.update(chunk)
                if task.crc:
                    crc = zlib.crc32(chunk, crc)
                pos += len(chunk)
            if i == 0:
                f.flush()
                _hold(task)
        if next(expected, None) is not None or pos - task.offset != task.size:
            raise InputError(f"{task.file}: {pos - task.offset} bytes written, planned {task.size}")
        f.flush()
        os.fsync(f.fileno())
    return task.size, h.hexdigest(), crc


def _record(task: RangeTask, size: int, digest: str) -> None:
    """Record the range in the ledger (``worker.record``: an earlier attempt's record must agree)."""
    from llmkit.cluster.worker import record

    record(Path(task.ledger) / f"{task.index}.json", {"offset": task.offset, "size": size, "sha256": digest}, task.file)


def _hold(task: RangeTask) -> None:
    """Tests only: range 0's first attempt, its first tensor written, records its PID in ``task.hold`` and
    waits to be killed (or for its stage to go)."""
    from llmkit.cluster.worker import HOLD_SECONDS

    if task.hold is None or task.index != 0:
        return
    mark = Path(task.hold) / "piece-0.pid"
    if mark.exists():  # a retry: write
        return
    tmp = mark.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, mark)
    deadline = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < deadline and Path(task.path).exists():
        time.sleep(0.05)
    raise InputError("the held range was not killed")
