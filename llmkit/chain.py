"""One pass through several tensor jobs: each job's plan is read as the next job's source, only the last writes.

``run_chain([stage, ...])`` takes the jobs as calls of their library functions (the same options a command
builds) and runs them nested: stage 1 plans (every check of its command) and, where the runner would open
its sink, hands its :class:`~llmkit.pipeline.Plan` to the chain instead; the chain makes it a
:class:`PlanSource` (``keys()``/``info()`` from the plan's specs, ``get(name)`` = ``produce(name)``) and runs
stage 2 with that source supplied under stage 1's output path (``llmkit.io.core.source.supplying``), and so
on. The last stage runs normally: its one runner pulls every tensor through the chain, one tensor at a
time, each computed once; nothing but its output is written. So:

- every stage's pre-checks run before the first byte is read (they are the commands' own checks);
- inner stages' taps (recover's integrity sum) are fed the tensors they produce and judged before the
  final rename (a failure keeps nothing); their checks go to their own stage's result;
- the final output may not be, be in, or contain any stage's input; ``--dry-run`` of the last stage shows
  what the whole chain reads, its memory, and the disk the final output needs;
- ``keep``: inner outputs to write as well, from the same pass (a tee into that stage's own sink, checked
  when the stage is planned, made final after the last stage's output).

An inner stage is called as a dry run by the caller (its options' ``dry_run``), so nothing after its
runner (published tables of files it never writes) runs for it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.chain_hook import chain_hook
from llmkit.errors import InputError
from llmkit.io.core.source import TensorFile, TensorSource, supplying
from llmkit.io.core.spec import TensorInfo
from llmkit.pipeline import (
    Check,
    Plan,
    PlanReport,
    PlanResult,
    RunOptions,
    open_plan_sink,
    plan_report,
)
from llmkit.read_order import leaf_reads

if TYPE_CHECKING:
    import torch

    from llmkit.io.core.sink import Sink

Stage = Callable[[], Any]  # one job's library call, e.g. lambda: recover.run(options)


class _PlanFile(TensorFile):
    """The one "file" of a :class:`PlanSource`: its tensors are computed, not read."""

    def __init__(self, source: PlanSource):
        self.path = source.plan.output
        self.infos = {s.name: TensorInfo(s.name, s.dtype, s.shape, self.path) for s in source.plan.specs}
        self.source = source

    def get(self, name: str) -> torch.Tensor:
        return self.source.computed(name)

    def prefetch(self, name: str) -> None:
        for src, key in self.source.plan.reads(name):
            src.prefetch(key)
        self.source.compute_ahead(name)

    def release(self, name: str) -> None:
        for src, key in self.source.plan.reads(name):
            src.release(key)


class PlanSource(TensorSource):
    """A plan's output read as a source, without writing it: ``info`` from the specs, ``get`` computes.

    Each tensor is computed when asked for, and not kept (a consumer that asks twice gets it computed
    twice: none of the jobs does); the plan's taps see each tensor the first time, ``tee`` (a sink) too.
    Every tensor is computed on the source's own thread, in the order asked for; ``prefetch(name)`` (the
    runner's, for the tensor after the one it computes) starts computing ``name`` there at once, unless it
    is as large as the largest tensor (the embedding, lm_head: computed when asked, so the peak memory is
    what it is without it). So each stage of a chain computes its next tensor while the stage after it
    uses the current one, as commands joined by pipes do. The plan's side files (config.json with its new
    dtype, tokenizer) are in a private folder, the source's ``folder``, removed by :meth:`close`.
    :meth:`drain` computes what the consumer did not ask for, when taps or a tee need it.
    """

    def __init__(self, plan: Plan, *, tee: Sink | None = None):
        self.plan, self.tee = plan, tee
        self.done: set[str] = set()
        self._sizes = {s.name: s.nbytes for s in plan.specs}
        self._largest = max(self._sizes.values(), default=0)
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: dict[str, Future[torch.Tensor]] = {}
        self.parts: dict[str, list[object]] | None = None  # in a Ray task: split-tap parts instead of feeding
        file = _PlanFile(self)
        super().__init__(
            path=plan.output,
            layout="safetensors" if plan.fmt == "safetensors" else plan.fmt,
            files=[file],
            weight_map={s.name: file for s in plan.specs},
            folder=_side_folder(plan),
        )

    def produce(self, name: str) -> torch.Tensor:
        """Compute ``name`` (on the source's thread), feeding the taps and the tee the first time."""
        tensor = self.plan.produce(name)
        if name not in self.done:
            if self.parts is not None:  # a Ray task: the driver's taps take these (take_parts)
                self.parts[name] = [t.part(name, tensor) for t in self.plan.taps if hasattr(t, "part")]
            else:
                for tap in self.plan.taps:
                    tap.feed(name, tensor)
            if self.tee is not None:
                self.tee.write(name, tensor)
            self.done.add(name)
        return tensor

    def _submit(self, name: str) -> Future[torch.Tensor]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmkit-stage")
        return self._pool.submit(self.produce, name)

    def compute_ahead(self, name: str) -> None:
        """Start computing ``name`` now, unless it is started, done, or as large as the largest tensor."""
        if name in self._ahead or name in self.done or self._sizes.get(name, self._largest) >= self._largest:
            return
        self._ahead[name] = self._submit(name)

    def computed(self, name: str) -> torch.Tensor:
        """``name``, computed ahead or now (either way on the source's thread: one tensor at a time)."""
        future = self._ahead.pop(name, None)
        return (future if future is not None else self._submit(name)).result()

    def expand_reads(self, name: str) -> list[tuple[TensorSource, str]]:
        return list(self.plan.reads(name))

    def take_parts(self, order: list[str], parts: dict[str, list[object]]) -> None:
        """On the driver of a Ray run: the split taps take the tasks' parts of the tensors in ``order`` (the
        one-process order); those count as computed, so :meth:`drain` computes only what no task did."""
        split: list[Any] = [t for t in self.plan.taps if hasattr(t, "part")]  # SplitTaps
        for name in order:
            if name in parts and name not in self.done:
                for tap, part in zip(split, parts[name], strict=True):
                    tap.take(name, part)
                self.done.add(name)

    def drain(self) -> None:
        """Compute every tensor nobody asked for, if a tap or the tee must see it."""
        if not self.plan.taps and self.tee is None:
            return
        for spec in self.plan.specs:
            if spec.name not in self.done:
                self.computed(spec.name)
                for src, key in self.plan.reads(spec.name):
                    src.release(key)

    def close(self) -> None:
        if self._pool is not None:  # a tensor still being computed finishes before the files close
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._ahead.clear()
        self.plan.close()
        if self.folder is not None and self.folder.name.startswith("llmkit-chain-"):
            shutil.rmtree(self.folder, ignore_errors=True)


def _side_folder(plan: Plan) -> Path | None:
    """The side files the plan's sink would write (carried config/tokenizer files, config.json with the new
    dtype and vocabulary size, the files the job makes), in a private folder; None when there are none."""
    from llmkit.io.core.writer import side_files

    files: dict[str, bytes] = {}
    for a in plan.aux:
        files.update(side_files(a.folder, a.names, dtype=a.dtype, vocab_size=a.vocab_size))
    files.update(plan.files)
    if not files:
        return None
    folder = Path(tempfile.mkdtemp(prefix="llmkit-chain-"))
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@dataclass
class _Inner:
    """One inner stage as captured: its plan as a source, its result, and where its output would go."""

    source: PlanSource
    result: PlanResult
    input_bytes: int  # what it reads from files (not from the stage before it)


@dataclass
class _StageDone:
    """The tap through which the last stage's runner judges an inner stage before the final rename: what
    the consumer did not ask for is computed, the inner taps are judged (their checks go to the inner
    stage's result), a tee is made final."""

    inner: _Inner

    @property
    def stage_taps(self) -> list[Any]:
        """The inner stage's own taps (``--ray`` checks each can be combined from pieces)."""
        return list(self.inner.source.plan.taps)

    def feed(self, name: str, tensor: torch.Tensor) -> None:
        pass

    def finish(self) -> Check | None:
        src = self.inner.source
        src.drain()
        for tap in src.plan.taps:
            check = tap.finish()
            if check is not None:
                self.inner.result.checks.append(check)
        return None


@dataclass
class _Chain:
    """The state of one :func:`run_chain`: the stages, which one runs, the inner stages captured so far."""

    stages: list[Stage]
    keep: set[str]
    force: bool
    results: list[Any] = field(default_factory=list)
    inner: list[_Inner] = field(default_factory=list)
    current: int = 0
    entry: tuple[str, Any] | None = None  # (job, options) that run this chain again (a Ray task's)

    @property
    def at_last(self) -> bool:
        """The stage now running is the last one (its runner writes; the others are captured)."""
        return self.current == len(self.stages) - 1

    def capture(self, plan: Plan, options: RunOptions, result_for: Callable[[PlanReport, Any], Any]) -> Any:
        """Stage N's runner: its plan becomes a source, stage N+1 runs inside with it; stage N's result back."""
        keep = str(plan.output) in self.keep
        sink: Any = open_plan_sink(plan, force=self.force) if keep else _Unwritten(plan)
        result = result_for(plan_report(plan, sink), sink)
        result.output, result.dry_run = str(plan.output), False
        result.notices, result.checks = list(plan.notices), list(plan.checks)
        with ExitStack() as stack:
            if keep:
                stack.enter_context(sink)
                for a in plan.aux:
                    sink.copy_aux_files(a.folder, dtype=a.dtype, vocab_size=a.vocab_size, only=a.names)
                for name, data in plan.files.items():
                    sink.add_file(name, data)
            source = PlanSource(plan, tee=sink if keep else None)
            stack.callback(source.close)
            self.inner.append(_Inner(source, result, _file_bytes(plan)))
            with supplying({str(plan.output): source}):
                _run_stage(self, self.current + 1)
        if keep:
            result.files, result.outputs = list(sink.files), [result.output]
        return result

    def absorb(self, plan: Plan) -> None:
        """The last stage's plan takes on the chain: every input, the inner stages' judgements, the sizes."""
        plan.input_bytes = _file_bytes(plan) + sum(i.input_bytes for i in self.inner)
        plan.working_set_bytes += sum(i.source.plan.working_set_bytes for i in self.inner)
        for i in self.inner:
            plan.inputs += [p for p in i.source.plan.inputs if p not in plan.inputs]
        plan.taps += [_StageDone(i) for i in self.inner]

    def inner_parts(self) -> list[dict[str, list[object]]]:
        """In a Ray task: from now on each inner stage keeps its split-tap parts (filled as it computes)."""
        for i in self.inner:
            i.source.parts = {}
        return [i.source.parts for i in self.inner if i.source.parts is not None]

    def take_inner_parts(self, plan: Plan, order: list[str], parts: list[dict[str, list[object]]]) -> None:
        """On the driver: each inner stage's taps take the tasks' parts in the one-process order, the last
        stage's tensors ``order`` followed back through each stage's reads."""
        consumer, names = plan, order
        for inner, got in reversed(list(zip(self.inner, parts, strict=True))):
            names = _reads_from(consumer, names, inner.source)
            inner.source.take_parts(names, got)
            consumer = inner.source.plan


def _reads_from(plan: Plan, names: list[str], source: PlanSource) -> list[str]:
    """The tensors of ``source`` that producing ``names`` (in order) reads, in the order first read."""
    read = (key for n in names for src, key in leaf_reads(plan, n, stop=source) if src is source)
    return list(dict.fromkeys(read))


def _file_bytes(plan: Plan) -> int:
    """The tensor bytes ``plan`` reads from files: its input bytes less those of the plans it reads."""
    seen: dict[int, TensorSource] = {}
    for spec in plan.specs:
        for src, _ in plan.reads(spec.name):
            seen[id(src)] = src
    computed = sum(s.total_bytes for s in seen.values() if isinstance(s, PlanSource))
    return max(0, plan.input_bytes - computed)


@dataclass
class _Unwritten:
    """What an inner stage's result is planned against instead of a sink: its output is never written."""

    plan: Plan
    files: list[str] = field(default_factory=list)
    free_disk_bytes: int = 0
    space_margin: int = 0
    needed_disk_bytes: int = 0
    kept_files: list[str] = field(default_factory=list)

    @property
    def total_size(self) -> int:
        return sum(s.nbytes for s in self.plan.specs)


def _run_stage(chain: _Chain, index: int) -> None:
    """Stage ``index``'s call, its result kept; an inner one must reach its runner (which runs the rest)."""
    chain.current = index
    result = chain.stages[index]()
    if index < len(chain.stages) - 1 and chain.results[index + 1] is None:
        raise InputError(f"chain stage {index + 1} wrote no tensors, so the stages after it have no input")
    chain.results[index] = result


def run_chain(
    stages: list[Stage], *, keep: set[str] | None = None, force: bool = False, entry: tuple[str, Any] | None = None
) -> list[Any]:
    """Run ``stages`` (each a tensor job's library call) as one pass; their results, in order.

    Stage N+1 must read stage N's output path as its model. ``keep``: inner output paths to write too
    (``force``: replacing what is there). ``entry``: the (job, options) whose call runs this chain, so
    ``--ray`` tasks can run it again (``llmkit.cluster.jobs``). Raises what a stage raises; then no
    stage's output is kept.
    """
    keeping = {str(Path(k)) for k in keep or ()}
    chain = _Chain(list(stages), keeping, force, [None] * len(stages), entry=entry)
    if stages:
        with chain_hook(chain):
            _run_stage(chain, 0)
    return chain.results
