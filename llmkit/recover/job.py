"""recover / make-diff as a job on the pipeline: options -> checks -> a Plan -> the one runner.

Each output tensor needs only ``base[k]`` and ``other[k]`` (the diff, or the tuned model for
make-diff), so the plan's ``produce(name)`` reads that pair, combines it (``llmkit.recover.arithmetic``)
and the runner hands the result to the sink: peak memory ~ three times the largest tensor plus a
constant, whatever the number of layers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmkit.errors import InputError
from llmkit.io.core.dtypes import CLI_DTYPES, dtype_name
from llmkit.io.core.llama_tensors import check_source
from llmkit.io.core.source import TensorSource
from llmkit.pipeline import (
    AuxCopy,
    Check,
    Notice,
    Plan,
    ProgressFactory,
    Result,
    execute,
    open_plan_sink,
    plan_report,
    plan_rows,
)
from llmkit.recover.arithmetic import INV_FREQ_FORMS, base_inv_freq, diff_tensor, recover_tensor, working_set
from llmkit.recover.integrity import (
    PublishedCheck,
    ReferenceCheck,
    SumCheck,
    SumTap,
    compare_by_tensors,
    published_checks,
)
from llmkit.recover.prechecks import (
    aux_plan,
    check_names,
    check_shapes,
    describe_role,
    dtype_counts,
    layer_count,
    open_model,
    rope_settings,
)
from llmkit.units import DEFAULT_SHARD_SIZE

# ------------------------------------------------------------------ options


@dataclass(frozen=True)
class RecoverOptions:
    """``llmkit recover``: ``out = diff + base`` for every tensor of the diff (SPEC.md section 2).

    ``dtype``: fp32/fp16/bf16, default the diff's. ``check_sum``: upstream's naive integrity check (fp64 sum
    of every output value, atol 1e-2; a mismatch keeps no output). ``reference``: compare the output tensor
    by tensor with another model afterwards. ``shard_size`` in bytes. ``base_inv_freq``: how the rotary
    ``inv_freq`` buffers are made when the diff holds them and the base's files do not
    (:func:`llmkit.recover.arithmetic.base_inv_freq`).
    """

    base: Path
    diff: Path
    output: Path
    dtype: str | None = None
    fmt: str = "safetensors"
    shard_size: int = DEFAULT_SHARD_SIZE
    force: bool = False
    dry_run: bool = False
    check_sum: float | None = None
    reference: Path | None = None
    base_inv_freq: str = "fp16"

    operation = "recover"

    @property
    def other(self) -> Path:
        return self.diff


@dataclass(frozen=True)
class MakeDiffOptions:
    """``llmkit make-diff``: ``diff = target - base`` computed in fp32, stored as fp32 or fp16."""

    base: Path
    target: Path
    output: Path
    dtype: str = "fp32"
    fmt: str = "safetensors"
    shard_size: int = DEFAULT_SHARD_SIZE
    force: bool = False
    dry_run: bool = False
    base_inv_freq: str = "fp16"  # as for recover, so that recover(make-diff(x)) gives x back

    operation = "make-diff"
    check_sum = None
    reference = None

    @property
    def other(self) -> Path:
        return self.target


WeightDiffOptions = RecoverOptions | MakeDiffOptions


# ------------------------------------------------------------------ results


@dataclass
class WeightDiffPlan:
    """What a recover / make-diff run will do, known before any tensor data is read. Sizes in bytes."""

    operation: str  # "recover" or "make-diff"
    base: str
    other: str  # the diff (recover) or the tuned model (make-diff)
    output: str
    dtype: str  # output dtype: fp32, fp16 or bf16
    arithmetic: str  # the formula, as applied
    format: str
    shard_size: int
    tensors: int
    parameters: int
    base_dtypes: dict[str, int]  # safetensors dtype code -> tensor count
    other_dtypes: dict[str, int]
    output_bytes: int
    input_bytes: int  # bytes read from both inputs
    files: list[str]
    largest_tensor: str
    largest_tensor_bytes: int
    memory_estimate_bytes: int  # peak RSS estimate: per-tensor working set + this process now
    free_disk_bytes: int
    needed_disk_bytes: int  # output + config/tokenizer files + the margin below; less free space is refused
    disk_margin_bytes: int  # free space kept beyond the output (llmkit.units.space_margin)
    computed_buffers: list[str] = field(default_factory=list)  # base inv_freq buffers computed from config
    aux_files: dict[str, str] = field(default_factory=dict)  # output file -> folder it is copied from
    notes: list[str] = field(default_factory=list)  # every notice's text (stable JSON)
    notices: list[Notice] = field(default_factory=list)


@dataclass
class WeightDiffResult(Result):
    """Result of ``recover`` / ``make_diff``. ``output``: the output folder as given (also for a dry run);
    ``files`` are final output names (empty for a dry run)."""

    output: str = field(default="", kw_only=True)
    plan: WeightDiffPlan
    dry_run: bool
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    check_sum: SumCheck | None = None
    published: list[PublishedCheck] = field(default_factory=list)
    reference: ReferenceCheck | None = None


# ------------------------------------------------------------------ planning

_ARITHMETIC = {
    ("recover", torch.float32): "out = fp32(diff) + fp32(base)",
    ("recover", torch.float16): "out = fp16(diff) + fp16(base), one rounding of the fp16 sum",
    ("recover", torch.bfloat16): "out = bf16(fp32(diff) + fp32(base)), one rounding",
    ("make-diff", torch.float32): "diff = fp32(tuned) - fp32(base)",
    ("make-diff", torch.float16): "diff = fp16(fp32(tuned) - fp32(base)), one rounding",
}


def _output_dtype(options: WeightDiffOptions, other: TensorSource) -> torch.dtype:
    if options.dtype is None:  # recover: the diff's dtype, the one holding most bytes
        by_dtype: dict[torch.dtype, int] = {}
        for i in other.infos():
            by_dtype[i.dtype] = by_dtype.get(i.dtype, 0) + i.nbytes
        out_dtype = max(by_dtype, key=by_dtype.__getitem__)
        if out_dtype not in CLI_DTYPES.values():
            raise InputError(
                f"the diff is {out_dtype}; choose the output dtype",
                path=other.path,
                hint=f"pass --dtype ({', '.join(CLI_DTYPES)})",
            )
        return out_dtype
    if options.dtype not in CLI_DTYPES:
        raise InputError(f"unknown dtype {options.dtype!r}", hint=f"use one of {', '.join(CLI_DTYPES)}")
    out_dtype = CLI_DTYPES[options.dtype]
    if options.operation == "make-diff" and out_dtype not in (torch.float32, torch.float16):
        raise InputError(
            f"make-diff writes fp32 or fp16, not {options.dtype}",
            hint="diffs are computed in fp32; store them as fp32 (exact) or fp16",
        )
    return out_dtype


@dataclass
class _Facts:
    """What the plan found that the result reports (beyond the pipeline's own report)."""

    base: TensorSource
    other: TensorSource
    out_dtype: torch.dtype
    computed: list[str]  # base rotary buffers computed from config.json
    aux: dict[str, str]  # output file -> folder it is copied from


def plan_weight_diff(options: WeightDiffOptions) -> tuple[Plan, _Facts]:
    """Open both models, run every check, and return the pipeline :class:`~llmkit.pipeline.Plan`.

    Nothing is read but headers and small files. The plan holds both sources open: close it.
    """
    operation = options.operation
    role = "diff" if operation == "recover" else "tuned"
    what = describe_role(role)
    base = open_model(options.base, "base")
    try:
        other = open_model(options.other, what)
    except BaseException:
        base.close()
        raise
    try:
        return _plan(options, base, other, role)
    except BaseException:
        base.close()
        other.close()
        raise


def _plan(options: WeightDiffOptions, base: TensorSource, other: TensorSource, role: str) -> tuple[Plan, _Facts]:
    operation, what = options.operation, describe_role(role)
    if len(other) == 0:
        raise InputError(f"the {what} holds no tensors", path=other.path)
    computed, ignored = check_names(other, base, role)
    rope = rope_settings(other, base)
    if computed and rope is None:
        raise InputError(
            f"the {what} has {len(computed)} rotary_emb.inv_freq buffer(s) the base lacks, and no "
            "config.json says how to compute them",
            path=base.path,
            hint="put the model's config.json beside the base or the diff",
        )
    check_shapes(other, base, role, computed, rope)
    check_source(base)  # each a complete LLaMA (after the pairwise checks, which explain a wrong base better)
    check_source(other)
    out_dtype = _output_dtype(options, other)
    aux, notes = aux_plan(other, base, role)
    notices = [Notice("warning" if "no tokenizer" in n else "info", n) for n in notes]
    notices += [Notice.warning(f"{base.path}: {w}") for w in base.warnings]  # e.g. a Meta base's shard order
    o_infos = other.infos()
    if computed:
        made = (
            "rounded to fp16 as a transformers 4.28-4.30 conversion stored them"
            if options.base_inv_freq == "fp16"
            else "in fp32 as transformers 4.28-4.30 computes them at init"
        )
        notices.append(
            Notice.info(
                f"the base has no rotary_emb.inv_freq buffers; the {len(computed)} the {what} holds are combined with "
                f"buffers computed from config.json (head dim {rope[0]}, theta {rope[1]:g}), {made} "
                "(--base-inv-freq)"
            )
        )
    if ignored:
        notices.append(
            Notice.info(
                f"{len(ignored)} rotary_emb.inv_freq buffer(s) of the base are not in the "
                f"{what} and are left out of the output"
            )
        )
    if operation == "recover" and out_dtype == torch.float16 and any(i.dtype == torch.float32 for i in o_infos):
        notices.append(
            Notice.info(
                "fp16 from an fp32 diff: the diff is rounded to fp16 before the sum, as upstream "
                "--is_fp16 does; for the closest fp16 model recover in fp32 and convert"
            )
        )
    computed_set = set(computed)
    inv_freq = base_inv_freq(rope[0], rope[1], options.base_inv_freq) if computed and rope else None
    compute = recover_tensor if operation == "recover" else diff_tensor

    def produce(name: str) -> torch.Tensor:
        b = inv_freq if name in computed_set else base.get(name)
        return compute(other.get(name), b, out_dtype)

    def reads(name: str) -> list[tuple[TensorSource, str]]:
        return [(other, name)] if name in computed_set else [(other, name), (base, name)]

    def b_dtype(name: str) -> torch.dtype:
        return inv_freq.dtype if inv_freq is not None and name in computed_set else base.info(name).dtype

    from llmkit.io.core.spec import TensorSpec

    folders: dict[str, list[str]] = {}
    for fname, folder in aux.items():
        folders.setdefault(folder, []).append(fname)
    plan = Plan(
        job=operation,
        output=Path(options.output),
        fmt=options.fmt,
        specs=[TensorSpec(i.name, out_dtype, i.shape) for i in o_infos],
        produce=produce,
        reads=reads,
        # The output may not be, be inside or contain an input: the weight files and the folders
        # config/tokenizer files are read from.
        inputs=[p for p in (base.path, base.folder, other.path, other.folder) if p is not None],
        input_bytes=other.total_bytes + sum(base.info(n).nbytes for n in other.keys() if n not in computed_set),
        working_set_bytes=max(working_set(i.numel, i.dtype, b_dtype(i.name), out_dtype, operation) for i in o_infos),
        label="recovering" if operation == "recover" else "making diff",
        aux=[AuxCopy(Path(folder), tuple(names), dtype=out_dtype) for folder, names in folders.items()],
        sink_options={"shard_size": options.shard_size},
        notices=notices,
        sources=[other, base],
    )
    if options.check_sum is not None:
        plan.taps.append(
            SumTap(
                options.check_sum,
                out_dtype,
                str(options.output),
                layer_count(other.keys()),
                rope,
                computed=len(computed),
                inv_freq_form=options.base_inv_freq,
            )
        )
    return plan, _Facts(base, other, out_dtype, computed, aux)


def _describe(options: WeightDiffOptions, plan: Plan, facts: _Facts, sink) -> WeightDiffPlan:
    base, other, out_dtype = facts.base, facts.other, facts.out_dtype
    report = plan_report(plan, sink)
    return WeightDiffPlan(
        operation=options.operation,
        base=str(base.path),
        other=str(other.path),
        output=str(options.output),
        dtype=dtype_name(out_dtype),
        arithmetic=_ARITHMETIC[(options.operation, out_dtype)],
        format=options.fmt,
        shard_size=options.shard_size,
        tensors=report.tensors,
        parameters=sum(i.numel for i in other.infos()),
        base_dtypes=dtype_counts([base.info(n) for n in base.keys()]),
        other_dtypes=dtype_counts(other.infos()),
        output_bytes=report.output_bytes,
        input_bytes=report.input_bytes,
        files=report.files,
        largest_tensor=report.largest_tensor,
        largest_tensor_bytes=report.largest_tensor_bytes,
        memory_estimate_bytes=report.memory_estimate_bytes,
        free_disk_bytes=report.free_disk_bytes,
        needed_disk_bytes=report.needed_disk_bytes,
        disk_margin_bytes=report.disk_margin_bytes,
        computed_buffers=list(facts.computed),
        aux_files=dict(facts.aux),
        notes=[n.text for n in plan.notices],
        notices=list(plan.notices),
    )


# ------------------------------------------------------------------ running


def run(
    options: WeightDiffOptions,
    *,
    progress: ProgressFactory | None = None,
    on_plan: Callable[[WeightDiffPlan], None] | None = None,
) -> WeightDiffResult:
    """Plan (every check before the first tensor is read), then run on the pipeline runner.

    ``on_plan`` sees the plan before the long work starts (the CLI logs it). With ``options.dry_run``
    nothing is written. A failed ``check_sum`` raises :class:`~llmkit.errors.CheckFailed` and keeps no
    output; published tables and ``reference`` are checked after the rename.
    """
    if options.base_inv_freq not in INV_FREQ_FORMS:
        raise InputError(f"--base-inv-freq must be one of {', '.join(INV_FREQ_FORMS)}, got {options.base_inv_freq!r}")
    if options.check_sum is not None and not math.isfinite(options.check_sum):
        raise InputError(f"--check-sum must be a finite number, got {options.check_sum}")
    if options.reference is not None and not Path(options.reference).exists():
        raise InputError("no such file or folder", path=options.reference, hint="check the --reference path")
    plan, facts = plan_weight_diff(options)
    with plan:
        sink = open_plan_sink(plan, force=options.force)
        described = _describe(options, plan, facts, sink)
        if on_plan is not None:
            on_plan(described)
        result = WeightDiffResult(
            output=str(options.output), plan=described, dry_run=options.dry_run, notices=list(plan.notices)
        )
        if options.dry_run:
            return result
        done = execute(plan, sink, progress=progress)
    result.files, result.seconds, result.checks = done.files, done.seconds, list(done.checks)
    result.outputs = [str(options.output)]
    taps = [t for t in plan.taps if isinstance(t, SumTap)]
    result.check_sum = taps[0].result if taps else None
    out_dir = Path(options.output)
    result.published = published_checks(out_dir, result.files, options.operation, progress)
    for p in result.published:
        result.checks.append(
            Check(
                f"published md5 {p.file}",
                "ok" if p.matched_table else "mismatch",
                f"{p.md5} "
                + (f"matches {p.matched_table}" if p.matched_table else f"matches none of {', '.join(p.tables)}"),
            )
        )
    if options.reference is not None:
        result.reference = compare_by_tensors(out_dir, options.reference)
        result.ok = result.reference.passed
        result.checks.append(
            Check("reference", "ok" if result.ok else "failed", f"{result.reference.identical} identical tensors")
        )
    return result


def recover(
    base: str | os.PathLike,
    diff: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str | None = None,
    fmt: str = "safetensors",
    shard_size: int = DEFAULT_SHARD_SIZE,
    force: bool = False,
    dry_run: bool = False,
    check_sum: float | None = None,
    reference: str | os.PathLike | None = None,
    base_inv_freq: str = "fp16",
    progress: ProgressFactory | None = None,
    on_plan: Callable[[WeightDiffPlan], None] | None = None,
) -> WeightDiffResult:
    """:func:`run` with :class:`RecoverOptions` built from keywords."""
    return run(
        RecoverOptions(
            Path(base),
            Path(diff),
            Path(out),
            dtype=dtype,
            fmt=fmt,
            shard_size=shard_size,
            force=force,
            dry_run=dry_run,
            check_sum=check_sum,
            reference=Path(reference) if reference is not None else None,
            base_inv_freq=base_inv_freq,
        ),
        progress=progress,
        on_plan=on_plan,
    )


def make_diff(
    base: str | os.PathLike,
    target: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dtype: str = "fp32",
    fmt: str = "safetensors",
    shard_size: int = DEFAULT_SHARD_SIZE,
    force: bool = False,
    dry_run: bool = False,
    base_inv_freq: str = "fp16",
    progress: ProgressFactory | None = None,
    on_plan: Callable[[WeightDiffPlan], None] | None = None,
) -> WeightDiffResult:
    """:func:`run` with :class:`MakeDiffOptions` built from keywords."""
    return run(
        MakeDiffOptions(
            Path(base),
            Path(target),
            Path(out),
            dtype=dtype,
            fmt=fmt,
            shard_size=shard_size,
            force=force,
            dry_run=dry_run,
            base_inv_freq=base_inv_freq,
        ),
        progress=progress,
        on_plan=on_plan,
    )


def describe_plan(plan: WeightDiffPlan) -> list[tuple[str, str]]:
    """Rows for a human rendering of a plan (the CLI and the demo): the job's own rows, then the rows
    every tensor job's ``--dry-run`` shows (:func:`llmkit.pipeline.plan_rows`)."""
    role = "diff" if plan.operation == "recover" else "tuned"
    return [
        ("base", f"{plan.base} ({', '.join(f'{k} x{v}' for k, v in plan.base_dtypes.items())})"),
        (role, f"{plan.other} ({', '.join(f'{k} x{v}' for k, v in plan.other_dtypes.items())})"),
        ("dtype", f"{plan.dtype}: {plan.arithmetic}"),
        ("tensors", f"{plan.tensors} ({plan.parameters:,} parameters)"),
        *plan_rows(plan),
    ]
