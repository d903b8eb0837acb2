"""recover / make-diff as a job on the pipeline: options -> checks -> a Plan -> the one runner.

Each output tensor needs only ``base[k]`` and ``other[k]`` (the diff, or the tuned model for
make-diff), so the plan's ``produce(name)`` reads that pair, combines it (``llmkit.recover.arithmetic``)
and the runner hands the result to the sink: peak memory ~ three times the largest tensor plus a
constant, whatever the number of layers. The options and the result: ``llmkit.recover.options``; the
checks and the plan: ``llmkit.recover.plan``; here, the run and the checks after it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

from llmkit.errors import InputError
from llmkit.pipeline import Check, ProgressFactory, run_plan
from llmkit.recover.arithmetic import INV_FREQ_FORMS
from llmkit.recover.integrity import SumTap, compare_by_tensors, published_checks
from llmkit.recover.options import (
    MakeDiffOptions,
    RecoverOptions,
    WeightDiffOptions,
    WeightDiffReport,
    WeightDiffResult,
)
from llmkit.recover.plan import plan_weight_diff, weight_diff_report
from llmkit.units import DEFAULT_SHARD_SIZE


def run(
    options: WeightDiffOptions,
    *,
    progress: ProgressFactory | None = None,
    on_plan: Callable[[WeightDiffReport], None] | None = None,
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
    to_stdout = str(options.output) == "-"
    if options.reference is not None and to_stdout:
        raise InputError(
            "--reference compares the written output, and -o - writes none",
            hint="compare the stream instead: ... -o - | llmkit verify --tensors - REFERENCE",
        )
    if options.reference is not None and not Path(options.reference).exists():
        raise InputError("no such file or folder", path=options.reference, hint="check the --reference path")
    plan, facts = plan_weight_diff(options)

    def planned(report: WeightDiffReport) -> WeightDiffResult:
        if on_plan is not None:
            on_plan(report)
        return WeightDiffResult(plan=report)

    result = run_plan(
        plan,
        options,
        lambda report, sink: planned(weight_diff_report(options, facts, report, plan.notices)),
        progress,
    )
    if not options.dry_run:
        taps = [t for t in plan.taps if isinstance(t, SumTap)]
        result.check_sum = taps[0].result if taps else None
        if not to_stdout:  # a stream has no files to look up in the published tables
            _check_output(options, result, progress)
    return result


def _check_output(options: WeightDiffOptions, result: WeightDiffResult, progress: ProgressFactory | None) -> None:
    """After the rename: the output's files against the published tables, and against ``--reference``."""
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
    on_plan: Callable[[WeightDiffReport], None] | None = None,
) -> WeightDiffResult:
    """:func:`run` with :class:`RecoverOptions` built from keywords."""
    ref = Path(reference) if reference is not None else None
    fields = (dtype, fmt, shard_size, force, dry_run, check_sum, ref, base_inv_freq)  # in the options' order
    return run(RecoverOptions(Path(base), Path(diff), Path(out), *fields), progress=progress, on_plan=on_plan)


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
    on_plan: Callable[[WeightDiffReport], None] | None = None,
) -> WeightDiffResult:
    """:func:`run` with :class:`MakeDiffOptions` built from keywords."""
    options = MakeDiffOptions(
        Path(base), Path(target), Path(out), dtype, fmt, shard_size, force, dry_run, base_inv_freq
    )
    return run(options, progress=progress, on_plan=on_plan)
