"""``--ray`` for a one-file output whose layout is fixed by the plan (MindSpore ``.ckpt``): byte ranges.

A plain ``.ckpt`` is its tensors' records back to back in plan order (no header; every record header is
known from the specs, :func:`llmkit.io.mindspore.ckpt.record_headers`), so every tensor's offset is fixed
before any tensor is computed. The driver (:func:`run_ranges`) stages the one file as in one process
(:class:`~llmkit.io.core.staging.StagedFile`, with the claim), sizes it to its final length and splits the
tensors into contiguous byte ranges (:func:`split_ranges`: about two per cluster CPU, never more than the
tensors). Each Ray task (:func:`write_range_task`) plans the job again, writes its tensors' records at their
offsets in the staged file (a shared filesystem), fsyncs and returns the range's size, sha256 and CRC-32;
the ledger beside the stage (``<stage>.ranges/N.json``) records each range's hash once its bytes are in,
so a retry that hashes differently fails the job. A killed worker's retry rewrites the same bytes at the
same offsets. When every range is back and checked, the driver writes the CRC trailer (``--crc``: the
ranges' CRCs combined, :func:`crc32_combine`), fsyncs and renames. Encryption chains the file through AES
blocks written front to back: refused (:func:`llmkit.cluster.driver.refusal`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from llmkit.errors import CheckFailed, InputError, writing
from llmkit.io.core.layout import WRITE_SLICE, tensor_bytes
from llmkit.io.core.spec import TensorSpec

if TYPE_CHECKING:
    import torch

    from llmkit.cluster.driver import Job
    from llmkit.io.mindspore.ckpt import CkptStart
    from llmkit.io.mindspore.sink import CkptSink
    from llmkit.pipeline import Plan, ProgressFactory
    from llmkit.runner import Execution

RANGE_FORMATS = ("ckpt",)  # one file, every offset fixed by the plan
RANGES_PER_CPU = 2


@dataclass(frozen=True)
class ByteRange:
    """Tensors ``specs`` (contiguous, in file order), whose records fill bytes [offset, offset + size)."""

    offset: int
    size: int
    specs: list[TensorSpec]


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
    planned: str = ""  # the job whose plan writes the file (a chain's last stage), when not ``job``


@dataclass
class RangeDone:
    """What a range task returns: its bytes' size, sha256 and CRC-32, and its tensors' split-tap parts."""

    index: int
    size: int
    sha256: str
    crc: int
    parts: dict[str, list[object]] = field(default_factory=dict)
    pid: int = 0
    inner: list[dict[str, list[object]]] = field(default_factory=list)  # a chain's inner stages' parts


def split_ranges(specs: list[TensorSpec], start: CkptStart, count: int) -> list[ByteRange]:
    """At most ``count`` contiguous ranges of about equal bytes; a tensor is never cut (at least one per range)."""
    sizes = {s.name: sum(len(h) + n for h, n in start.headers[s.name]) for s in specs}
    total = sum(sizes.values()) or 1
    groups: list[list[TensorSpec]] = []
    last = -1
    for s in specs:
        mid = start.offsets[s.name] + sizes[s.name] // 2
        r = min(count - 1, mid * count // total)
        if r != last or not groups:
            groups.append([])
            last = r
        groups[-1].append(s)
    return [ByteRange(start.offsets[g[0].name], sum(sizes[s.name] for s in g), g) for g in groups]


def range_count(cpus: float | None, tensors: int) -> int:
    """Ranges for a cluster of ``cpus`` CPUs: two per CPU (a slow range does not hold the others), at most one
    per tensor; 2 when the cluster is unknown (a dry run without one)."""
    per = RANGES_PER_CPU * max(1, int(cpus)) if cpus else 2
    return max(1, min(per, tensors))


def planned(sink: CkptSink) -> tuple[list[TensorSpec], CkptStart]:
    """The file's specs and its layout (offsets, size), as the sink plans them (nothing is written)."""
    import io

    specs = list(sink.shards[0].specs)
    start = sink.layout.start(io.BytesIO(), sink.path, specs, {})
    return specs, start  # type: ignore[return-value]


# ------------------------------------------------------------------ the driver


def dry_run_lines(sink: CkptSink, cpus: float | None) -> tuple[list[str], int]:
    """What ``--dry-run --ray`` shows of a one-file output: its ranges and bytes; and how many."""
    from llmkit.units import human_bytes

    specs, start = planned(sink)
    ranges = split_ranges(specs, start, range_count(cpus, len(specs)))
    listed = ", ".join(f"bytes {r.offset}-{r.offset + r.size} ({len(r.specs)} tensors)" for r in ranges)
    line = f"ray: {len(ranges)} piece(s), byte ranges of {sink.path.name} ({human_bytes(start.size)}): {listed}"
    return [line], len(ranges)


def run_ranges(job: Job, sink: CkptSink, address: str, progress: ProgressFactory | None) -> Execution:
    """The one file written by range tasks; final only when every range is back and verified."""
    from llmkit.cluster import driver
    from llmkit.cluster.worker import HOLD_ENV
    from llmkit.pipeline import no_progress
    from llmkit.runner import Execution

    begun, plan, (entry, options) = time.perf_counter(), job.plan, job.entry
    ray = driver.connect(address)
    specs, start = planned(sink)
    ranges = split_ranges(specs, start, range_count(ray.cluster_resources().get("CPU"), len(specs)))
    with sink:
        stage = Path(getattr(sink._staging, "stage", ""))  # a StagedFile: the driver refused remote outputs
        ledger = Path(f"{stage}.ranges")  # a dead run's is removed with its stage (same prefix)
        try:
            ledger.mkdir()
            with writing(sink.path), open(stage, "wb") as f:
                f.truncate(start.size)  # no header in a .ckpt: record 0 starts at byte 0
            hold = os.environ.get(HOLD_ENV)
            tasks = [
                RangeTask(entry, options, i, f"{sink.path.name} bytes {r.offset}-{r.offset + r.size}", r.offset,
                          r.size, r.specs, str(stage), str(ledger), hold, planned=plan.job)
                for i, r in enumerate(ranges)
            ]  # fmt: skip
            memory = driver.task_memory(ray, plan)
            remote = ray.remote(write_range_task).options(
                max_retries=driver.MAX_RETRIES,
                retry_exceptions=False,
                num_cpus=1,
                **({"memory": memory} if memory else {}),
            )
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
            _finish(sink, stage, start, [dones[i] for i in range(len(tasks))])
            sink.adopt(0, start)
            checks = job.judged(sink, parts, inner)
        finally:
            shutil.rmtree(ledger, ignore_errors=True)
    return Execution(list(sink.files), checks, round(time.perf_counter() - begun, 3))


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


def _finish(sink: CkptSink, stage: Path, start: CkptStart, dones: list[RangeDone]) -> None:
    """What needs every range: the CRC trailer (CRC-32 of all records), then the file's fsync."""
    from llmkit.io.mindspore.ckpt import CRC_MAGIC

    with writing(sink.path), open(stage, "r+b") as f:
        if sink.layout.crc:  # type: ignore[attr-defined]
            crc = 0
            for d in dones:
                crc = crc32_combine(crc, d.crc, d.size)
            f.seek(sum(d.size for d in dones))
            f.write(CRC_MAGIC + crc.to_bytes(10, "big"))
        f.flush()
        os.fsync(f.fileno())


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A + B from ``crc1`` = crc32(A), ``crc2`` = crc32(B) and ``len2`` = len(B) (zlib's
    ``crc32_combine``, which Python's zlib does not expose): crc1 shifted through len2 zero bytes, xor crc2."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


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
    """Write the range's tensors (in file order) as their records at the range's offset in ``task.path``;
    fsync; (bytes written, their sha256, their CRC-32)."""
    from llmkit.io.mindspore.ckpt import record_headers

    h, crc, pos = hashlib.sha256(), 0, task.offset
    expected = iter(task.specs)
    with writing(Path(task.path)), open(task.path, "r+b") as f:
        f.seek(pos)
        for i, (name, tensor) in enumerate(tensors):
            spec = next(expected, None)
            if spec is None or name != spec.name or tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                raise InputError(
                    f"tensor {name!r} is not planned as {tensor.dtype} {tuple(tensor.shape)} in {task.file}"
                )
            data, done = tensor_bytes(tensor), 0
            for header, n in record_headers(spec):
                for chunk in (memoryview(header), data[done : done + n]):
                    for j in range(0, len(chunk), WRITE_SLICE):
                        f.write(chunk[j : j + WRITE_SLICE])
                    h.update(chunk)
                    crc = zlib.crc32(chunk, crc)
                done += n
                pos += len(header) + n
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
