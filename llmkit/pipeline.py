"""One shape for every job: options -> plan -> one runner -> a sink from the registry.

A job module (recover, lora, ...) turns its frozen options dataclass and its opened sources into a
:class:`Plan`: the output tensors in output order (:class:`~llmkit.io.core.spec.TensorSpec`), a
``produce(name)`` transform that reads what it needs, ``reads(name)`` (what ``produce`` reads, so
mapped pages can be prefetched and released), the aux files, the pre-checks already done and
structured :class:`Notice` s. Then:

- :func:`open_plan_sink` opens the sink the plan names from the registry (``llmkit.io.core.writer.open_sink``);
  the sink checks the destination (not an input, not existing without ``force``, free disk) before
  anything is created;
- :func:`plan_report` says what a run would do (sizes, disk, memory): every ``--dry-run`` renders it;
- :func:`execute` runs any plan: one tensor at a time, the next tensor's pages prefetched while this
  one is computed, used pages released, a writer thread so that reading and computing tensor N+1
  overlap with writing tensor N, taps (hashes, integrity sums) fed while streaming and judged before
  the rename, one progress convention;
- :func:`run_plan` is those three in the order every tensor job runs them, into its result.

Every command's result derives from :class:`Result` (``ok``, ``outputs``, ``checks``, ``notices``),
which ``--json`` serializes the same way for every command (docs/json.md); a tensor job's from
:class:`PlanResult`, which holds the :class:`PlanReport` and what the run wrote.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:  # torch and the io layer load when a job runs, not when the CLI starts
    import torch

    from llmkit.io.core.sink import Sink
    from llmkit.io.core.source import TensorSource
    from llmkit.io.core.spec import TensorSpec


from llmkit.chain_hook import current_chain
from llmkit.read_order import check_read_order, run_order  # the runner orders tensors with these

# progress(label, total_bytes) -> context manager yielding advance(nbytes); Output.progress fits.
ProgressFactory = Callable[[str, "int | None"], AbstractContextManager[Callable[[int], None]]]


@contextmanager
def no_progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """The progress factory that shows nothing."""
    yield lambda n: None


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class Notice:
    """Something a user should read: ``level`` is ``info`` (a log line) or ``warning``."""

    level: str
    text: str

    @classmethod
    def info(cls, text: str) -> Notice:
        return cls("info", text)

    @classmethod
    def warning(cls, text: str) -> Notice:
        return cls("warning", text)


@dataclass
class Check:
    """One verification: ``status`` is ``ok``, ``mismatch`` (a warning), ``failed`` or ``info``."""

    name: str
    status: str
    detail: str


@dataclass(kw_only=True)
class Result:
    """What every command's result holds, serialized the same way by ``--json``.

    ``ok``: every check passed; ``outputs``: the files or folders written (final names; empty for a
    dry run); ``checks``: what was verified; ``notices``: what the user should read.
    """

    ok: bool = True
    outputs: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)

    def texts(self, level: str) -> list[str]:
        return [n.text for n in self.notices if n.level == level]


# ------------------------------------------------------------------ plans


class Tap(Protocol):
    """Sees every output tensor while it streams (a hash, an integrity sum)."""

    def feed(self, name: str, tensor: torch.Tensor) -> None: ...

    def finish(self) -> Check | None:
        """Judged before the output is renamed: raise :class:`~llmkit.errors.CheckFailed` to keep nothing."""
        ...


class SplitTap(Tap, Protocol):
    """A tap whose ``feed`` is ``take(name, part(name, tensor))``: a Ray task computes the parts of its
    tensors, the driver takes them in the run's order, so the result is the one-process result
    (``llmkit.cluster``). A tap with ``reads_output = False`` (it judges inputs only) is finished by the
    driver as is; any other tap is refused with ``--ray``."""

    def part(self, name: str, tensor: torch.Tensor) -> object: ...  # small and picklable

    def take(self, name: str, part: object) -> None: ...


@dataclass
class AuxCopy:
    """Config/tokenizer files carried from ``folder`` (those of ``names`` that exist); ``config.json``
    gets ``dtype`` and ``vocab_size`` when given."""

    folder: Path | None
    names: tuple[str, ...]
    dtype: torch.dtype | None = None
    vocab_size: int | None = None


@dataclass
class Plan:
    """Everything a run will do, known before any tensor data is read. Sizes in bytes."""

    job: str  # the command: recover, make-diff, merge-lora, ...
    output: Path
    fmt: str  # a sink registry name: safetensors, bin, meta-pth
    specs: list[TensorSpec]  # output tensors in output order
    produce: Callable[[str], torch.Tensor]  # one output tensor (planned dtype and shape)
    reads: Callable[[str], list[tuple[TensorSource, str]]]  # (source, tensor) that produce(name) reads
    inputs: list[Path]  # every file and folder read: the output may not be, be in, or contain one
    input_bytes: int  # tensor bytes read from the inputs
    working_set_bytes: int  # bytes alive while the largest tensor is processed
    label: str = "writing"  # the progress bar's label
    aux: list[AuxCopy] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # small files made by the job (a derived config.json)
    sink_options: dict[str, Any] = field(default_factory=dict)  # shard_size; meta-pth: config, shards
    checks: list[Check] = field(default_factory=list)  # pre-checks done while planning
    notices: list[Notice] = field(default_factory=list)
    taps: list[Tap] = field(default_factory=list)
    sources: list[TensorSource] = field(default_factory=list)  # closed by close()

    def __post_init__(self) -> None:
        """The sources' warnings that nothing vouches for their values (a remote file read without a published
        digest, a cipher that cannot authenticate) join the notices, once each."""
        texts = {n.text for n in self.notices}
        for s in self.sources:
            for w in s.integrity_warnings():
                if w not in texts:
                    texts.add(w)
                    self.notices.append(Notice.warning(w))

    def close(self) -> None:
        for s in self.sources:
            s.close()

    def __enter__(self) -> Plan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def aux_bytes(self) -> int:
        """Bytes of the files carried and made; a carried file that is a FIFO or device is refused here,
        before any output exists (reading it could block forever)."""
        from llmkit.io.core.regular import check_regular, is_special

        carried = [a.folder / n for a in self.aux if a.folder is not None for n in a.names]
        for p in carried:
            if is_special(p):
                check_regular(p, f"a {p.name} file")
        return sum(p.stat().st_size for p in carried if p.is_file()) + sum(len(d) for d in self.files.values())


@dataclass
class PlanReport:
    """What ``--dry-run`` shows for every tensor job, the same way. Sizes in bytes."""

    output: str
    format: str
    tensors: int
    output_bytes: int
    input_bytes: int
    files: list[str]
    largest_tensor: str
    largest_tensor_bytes: int
    memory_estimate_bytes: int  # peak RSS estimate: the working set + this process now
    free_disk_bytes: int
    needed_disk_bytes: int  # output + copied files + margin; less free space is refused
    disk_margin_bytes: int


@dataclass(kw_only=True)
class PlanResult(Result):
    """What every tensor job's result holds (:func:`run_plan` fills it). ``output``: the output as given
    (also for a dry run); ``plan``: the report of :func:`plan_report` (a job may show it only for a dry
    run, or extend it); ``files``: final output file names (empty for a dry run); ``seconds``: the run."""

    output: str = ""
    plan: PlanReport | None = None
    dry_run: bool = False
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0


class RunOptions(Protocol):
    """What :func:`run_plan` reads from a job's options (every tensor job's frozen options dataclass)."""

    @property
    def force(self) -> bool: ...

    @property
    def dry_run(self) -> bool: ...


R = TypeVar("R", bound=PlanResult)


def open_plan_sink(plan: Plan, *, force: bool = False) -> Sink:
    """The plan's sink from the registry; it checks the destination before anything is created."""
    from llmkit.io.core.sink import open_sink

    sink = open_sink(
        plan.fmt,
        plan.output,
        plan.specs,
        force=force,
        inputs=plan.inputs,
        extra_bytes=plan.aux_bytes,
        **plan.sink_options,
    )
    if getattr(sink, "wants_side_files_first", False):  # a GGUF header holds the config and the tokenizer
        carry_side_files(plan, sink)
        sink.side_files_ready()  # type: ignore[attr-defined]
    kept = sink.kept_files
    if kept:
        plan.notices.append(Notice.info(f"kept in the output folder (not written by llmkit): {', '.join(kept)}"))
    return sink


def carry_side_files(plan: Plan, sink: Sink) -> None:
    """Hand the sink the plan's side files: the aux copies (config.json updated) and the files the job made."""
    for a in plan.aux:
        sink.copy_aux_files(a.folder, dtype=a.dtype, vocab_size=a.vocab_size, only=a.names)
    for file_name, data in plan.files.items():
        sink.add_file(file_name, data)


def current_rss() -> int:
    """Resident bytes of this process now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _side_file_names(plan: Plan) -> list[str]:
    return sorted(
        {n for a in plan.aux if a.folder is not None for n in a.names if (a.folder / n).is_file()} | set(plan.files)
    )


def shown_path(path: Path) -> str:
    """An output as results show it (a URL as ``s3://...``)."""
    from llmkit.io.remote.url import shown

    return shown(path)


def plan_report(plan: Plan, sink: Sink) -> PlanReport:
    from llmkit.read_order import held_bytes, run_order

    largest = max(plan.specs, key=lambda s: s.nbytes, default=None)
    return PlanReport(
        output=shown_path(plan.output),
        format=plan.fmt,
        tensors=len(plan.specs),
        output_bytes=sink.total_size,
        input_bytes=plan.input_bytes,
        files=list(sink.files) + (_side_file_names(plan) if getattr(sink, "carries_side_files", True) else []),
        largest_tensor=largest.name if largest else "",
        largest_tensor_bytes=largest.nbytes if largest else 0,
        memory_estimate_bytes=plan.working_set_bytes + current_rss() + held_bytes(plan, run_order(plan, sink)),
        free_disk_bytes=sink.free_disk_bytes,
        needed_disk_bytes=sink.needed_disk_bytes,
        disk_margin_bytes=sink.space_margin,
    )


def plan_rows(report: Any) -> list[tuple[str, str]]:
    """What ``--dry-run`` shows for every tensor job, the same way: (label, text) rows for a
    :class:`PlanReport` (recover's extends it)."""
    from llmkit.units import human_bytes

    return [
        ("output", f"{report.output} ({report.format}, {report.tensors} tensors, {human_bytes(report.output_bytes)})"),
        ("files", ", ".join(report.files)),
        ("reads", human_bytes(report.input_bytes)),
        ("largest tensor", f"{report.largest_tensor} ({human_bytes(report.largest_tensor_bytes)})"),
        ("memory", f"about {human_bytes(report.memory_estimate_bytes)} peak (one tensor at a time)"),
        (
            "disk",
            "none: a stream on stdout"
            if report.output == "-"
            else f"needs {human_bytes(report.needed_disk_bytes)} free (with a {human_bytes(report.disk_margin_bytes)} "
            f"margin); free: {human_bytes(report.free_disk_bytes)}",
        ),
    ]


# ------------------------------------------------------------------ running a plan (execute: llmkit.runner)


def run_plan(
    plan: Plan,
    options: RunOptions,
    result_for: Callable[[PlanReport, Sink], R],
    progress: ProgressFactory | None = None,
) -> R:
    """Run a tensor job's plan the one way: open its sink (the destination is checked before anything is
    created), report, and unless ``options.dry_run`` execute; the plan's sources are closed at the end.

    ``result_for(report, sink)`` makes the job's result once the sink is open, before any tensor is read
    (so a job can log its plan first): the job's own fields and ``plan`` (the report, or what the job
    shows of it). This fills the rest: ``output``, ``dry_run``, ``notices`` (the plan's, with what opening
    the sink added), ``checks`` (the plan's pre-checks, then the taps'), and after a run ``files``,
    ``seconds`` and ``outputs``. A failure, or a tap that fails, raises and keeps no output.
    """
    from llmkit import cluster

    chain = current_chain()
    if chain is not None and not chain.at_last:  # an inner stage of a chain: its plan is the next stage's source
        return chain.capture(plan, options, result_for)
    if cluster.current_piece() is not None:  # inside a Ray task: write its one file, nothing else
        from llmkit.cluster.worker import run_piece

        run_piece(plan, chain)
    if chain is not None:
        chain.absorb(plan)
    if cluster.current_address() is not None:
        from llmkit.cluster.driver import refusal, run_on_ray
        from llmkit.errors import InputError

        why = refusal(plan, options, chain)
        if why is None:
            return run_on_ray(plan, options, result_for, progress, chain=chain)
        if not cluster.falls_back():
            with plan:
                raise InputError(why, path=plan.output, hint="run without --ray")
        plan.notices.append(Notice.info(f"ray: {plan.job} runs in this process: {why}"))
    with plan:
        sink = open_plan_sink(plan, force=options.force)  # checks only: nothing is created or read yet
        check_read_order(plan, run_order(plan, sink))
        result = planned_result(plan, options, result_for, sink)
        if options.dry_run:
            return result
        from llmkit.runner import execute

        done = execute(plan, sink, progress=progress)
    result.files, result.seconds, result.outputs = done.files, done.seconds, [result.output]
    result.checks += done.checks
    return result


def planned_result(plan: Plan, options: RunOptions, result_for: Callable[[PlanReport, Sink], R], sink: Sink) -> R:
    """The job's result before the run: ``result_for``'s, with ``output``, ``dry_run``, ``notices``, ``checks``."""
    result = result_for(plan_report(plan, sink), sink)
    result.output, result.dry_run = shown_path(plan.output), options.dry_run
    result.notices, result.checks = list(plan.notices), list(plan.checks)
    return result
