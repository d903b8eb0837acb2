"""``llmkit recover`` and ``llmkit make-diff``: weight diffs (ZhiXi / stanford_alpaca style), streamed."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from llmkit.cli.helptext import CHECKS, INPUTS, examples
from llmkit.cli.options import (
    DryRunOpt,
    ForceOpt,
    HFFormat,
    JobOutTypeOpt,
    ShardSizeOpt,
    SplitMaxSizeOpt,
    WeightFormat,
    choice_option,
    dtype_option,
    gguf_output,
    output_option,
    reads_remote,
    runs_on_ray,
    tensor_output,
    with_output,
)
from llmkit.cli.output import NOTHING_WRITTEN, Failure, Output, print_rows
from llmkit.errors import EXIT_CHECK_FAILED
from llmkit.units import human_bytes

if TYPE_CHECKING:  # llmkit.recover (torch) is imported when a command runs, not at CLI start-up
    from llmkit.recover import MakeDiffOptions, RecoverOptions, WeightDiffReport, WeightDiffResult

# The published ZhiXi-13B fp32 sum (llmkit.recover.ZHIXI_13B_FP32_SUM); a literal so that --help needs no torch.
ZHIXI_SUM_TEXT = "94052.2891"

RECOVER_EXAMPLES = examples(
    "# ZhiXi-13B from LLaMA-13B in Hugging Face form, with upstream's integrity sum",
    f"llmkit recover --base llama-13b-hf --diff zhixi-13b-diff -o zhixi-13b --check-sum {ZHIXI_SUM_TEXT}",
    "# straight from Meta's LLaMA-13B folder, checks and plan only",
    "llmkit recover --base LLaMA/13B --diff zhixi-13b-diff -o zhixi-13b --dry-run",
    "# the fp16 diff, in 2 GiB shards",
    "llmkit recover --base llama-13b-hf --diff zhixi-13b-diff-fp16 -o zhixi-13b-fp16 --shard-size 2GiB",
)
MAKE_DIFF_EXAMPLES = examples(
    "# publish a fine-tune as a diff against LLaMA-13B (fp32: recover gives it back bit for bit)",
    "llmkit make-diff --base llama-13b-hf --target my-finetune -o my-finetune-diff",
    "# a half-size fp16 diff",
    "llmkit make-diff --base llama-13b-hf --target my-finetune -o my-finetune-diff-fp16 --dtype fp16",
)

FormatOpt = Annotated[HFFormat, choice_option("--format", HFFormat, "Output format of the weight files.")]
RecoverFormatOpt = Annotated[
    WeightFormat,
    choice_option("--format", WeightFormat, "Output format of the weight files (gguf: -o is one .gguf file)."),
]
BaseOpt = Annotated[
    Path,
    typer.Option(
        "--base",
        metavar="PATH",
        rich_help_panel=INPUTS,
        help="The base model (e.g. LLaMA-13B converted to Hugging Face, or Meta's "
        "folder); any layout: folder, shard index or single file; or - for a stream on stdin; or a URL: hf://OWNER/NAME, s3://BUCKET/PREFIX.",
    ),
]
OutOpt = Annotated[
    Path, output_option("Output folder (must not be an input folder), or - for a safetensors stream on stdout.")
]


class InvFreq(str, Enum):
    fp16 = "fp16"
    fp32 = "fp32"


InvFreqOpt = Annotated[
    InvFreq,
    choice_option(
        "--base-inv-freq",
        InvFreq,
        "Only when the diff holds rotary_emb.inv_freq buffers (saved by transformers <= 4.30) "
        "and the base's files do not (a Meta folder, or a conversion by transformers 4.31+ or "
        "llmkit from-meta): make the base's buffers as a transformers 4.28-4.30 conversion "
        "stored them, rounded to fp16 (fp16: what the published ZhiXi sum and tables assume), "
        "or as that transformers computed them at init when a checkpoint lacked them (fp32). "
        "Buffers stored in the base's files are always used as stored.",
        panel=CHECKS,
    ),
]


def _log_plan(out: Output, plan: WeightDiffReport, dry_run: bool) -> None:
    from llmkit.recover import describe_plan

    if not dry_run:
        for key, value in describe_plan(plan):
            out.log(f"{key:>15}  {value}")
    out.notices(plan)


def _outcome_rows(result: WeightDiffResult) -> list[tuple[str, str]]:
    """The plan (dry run), or what was written and how fast."""
    from llmkit.recover import describe_plan

    plan = result.plan
    if result.dry_run:
        return [*describe_plan(plan), *(("note", note) for note in plan.notes), ("dry run", NOTHING_WRITTEN)]
    verb = "recovered" if plan.operation == "recover" else "diff written"
    weights = [f for f in result.files if f not in plan.aux_files]
    rate = plan.output_bytes / result.seconds if result.seconds > 0 else 0.0
    where = "as a stream on stdout" if plan.output == "-" else f"in {len(weights)} file(s)"
    return [
        (verb, f"{plan.output} ({plan.dtype}, {plan.tensors} tensors, {human_bytes(plan.output_bytes)} {where})"),
        ("time", f"{result.seconds:.1f} s ({human_bytes(rate)}/s written)"),
        ("files", ", ".join(result.files) or "-"),
    ]


def _check_rows(result: WeightDiffResult) -> list[tuple[str, str]]:
    """The integrity sum, the published MD5s and the reference comparison, when they ran."""
    rows: list[tuple[str, str]] = []
    if result.check_sum is not None:
        c = result.check_sum
        extra = f", upstream fp32 way {c.sum_fp32_upstream:.4f}" if c.sum_fp32_upstream is not None else ""
        verdict = f"matches {c.expected:.4f} within {c.atol:g}" if c.passed else "FAILED"
        rows.append(("check-sum", f"{c.sum_fp64:.4f} (fp64{extra}): {verdict}"))
    for p in result.published:
        matched = (
            f"matches {p.matched_table}"
            if p.matched_table
            else (
                f"matches none of {', '.join(p.tables)} (byte layout differs from upstream's writer; compare by tensors)"
            )
        )
        rows.append(("published md5", f"{p.file} {p.md5} {matched}"))
    r = result.reference
    if r is not None and r.passed:
        rows.append(("reference", f"all {r.identical} tensors identical to {r.reference}: the content is right"))
    elif r is not None:
        shown = ", ".join((r.differing + r.only_output + r.only_reference)[:3])
        rows.append(
            (
                "reference",
                f"{len(r.differing)} differing, {len(r.only_output)} only in the output, "
                f"{len(r.only_reference)} only in {r.reference} (e.g. {shown})",
            )
        )
    return rows


def _render(result: WeightDiffResult) -> Callable[[Console], None]:
    return lambda console: print_rows(console, _outcome_rows(result) + _check_rows(result))


def _run(out: Output, options: RecoverOptions | MakeDiffOptions) -> None:
    """The one library call: the plan logged before the work, then the result; an output that differs
    from ``--reference`` is a failed check (exit 1)."""
    from llmkit.recover import run

    result = run(options, progress=out.progress, on_plan=lambda plan: _log_plan(out, plan, options.dry_run))
    r = result.reference
    failed = None
    if r is not None and not r.passed:
        failed = Failure(
            f"the output differs from the reference: {len(r.differing)} tensor(s) differ, "
            f"{len(r.only_output)} only in the output, {len(r.only_reference)} only in the reference",
            path=str(result.plan.output),
            hint=f"llmkit verify --tensors {result.plan.output} {r.reference} --json lists them",
            exit_code=EXIT_CHECK_FAILED,
        )
    out.result(result, _render(result), failed=failed)
    if failed is not None:
        raise typer.Exit(EXIT_CHECK_FAILED)


@with_output
@reads_remote
@runs_on_ray
def recover_command(
    base: BaseOpt,
    diff: Annotated[
        Path,
        typer.Option(
            "--diff",
            metavar="PATH",
            rich_help_panel=INPUTS,
            help="The published weight diff: a folder, hf://zjunlp/zhixi-13b-diff (read from the hub without a "
            "local copy), s3://BUCKET/PREFIX, or a registry name (zhixi-13b-diff: its hub repo); its config and "
            "tokenizer files go to the output.",
        ),
    ],
    output: OutOpt,
    dtype: Annotated[
        str | None,
        dtype_option(
            ("fp32", "fp16", "bf16"),
            "Output dtype (default: the diff's). fp32: fp32(diff) + fp32(base). fp16: fp16(diff) + fp16(base), one "
            "rounding of the fp16 sum, as upstream --is_fp16. bf16: the fp32 sum rounded once.",
        ),
    ] = None,
    fmt: RecoverFormatOpt = WeightFormat.safetensors,
    shard_size: ShardSizeOpt = "5GB",
    outtype: JobOutTypeOpt = None,
    split_max_size: SplitMaxSizeOpt = None,
    dry_run: DryRunOpt = False,
    check_sum: Annotated[
        float | None,
        typer.Option(
            "--check-sum",
            metavar="VALUE",
            rich_help_panel=CHECKS,
            help="Run upstream's naive integrity check: the sum of all output values (fp64) must equal "
            f"VALUE within 0.01 (ZhiXi-13B fp32: {ZHIXI_SUM_TEXT}, rotary buffers counted as "
            "--base-inv-freq fp16 makes them). Exit 1 and keep no output otherwise.",
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            "--reference",
            metavar="PATH",
            rich_help_panel=CHECKS,
            help="After writing, compare the output tensor by tensor with this model; exit 1 if any tensor differs.",
        ),
    ] = None,
    base_inv_freq: InvFreqOpt = InvFreq.fp16,
    force: ForceOpt = False,
    *,
    out: Output,
) -> None:
    """Recover a model from a weight diff (diff + base).

    out = diff + base for every tensor, streamed in bounded memory.
    """
    from llmkit.recover import RecoverOptions

    options = RecoverOptions(
        base,
        diff,
        output,
        dtype=dtype,
        check_sum=check_sum,
        reference=reference,
        base_inv_freq=base_inv_freq.value,
        **tensor_output(fmt, shard_size, force=force, dry_run=dry_run),
        **gguf_output(outtype, split_max_size),
    )
    _run(out, options)


@with_output
@reads_remote
@runs_on_ray
def make_diff_command(
    base: BaseOpt,
    target: Annotated[
        Path,
        typer.Option(
            "--target",
            metavar="PATH",
            rich_help_panel=INPUTS,
            help="The fine-tuned model; its config and tokenizer files go to the diff.",
        ),
    ],
    output: OutOpt,
    dtype: Annotated[
        str,
        dtype_option(
            ("fp32", "fp16"),
            "Diff dtype: computed as fp32(target) - fp32(base), stored in fp32 (exact) or rounded once to fp16.",
        ),
    ] = "fp32",
    fmt: FormatOpt = HFFormat.safetensors,
    shard_size: ShardSizeOpt = "5GB",
    dry_run: DryRunOpt = False,
    base_inv_freq: InvFreqOpt = InvFreq.fp16,
    force: ForceOpt = False,
    *,
    out: Output,
) -> None:
    """Make a weight diff (target - base), the inverse of recover.

    diff = target - base for every tensor, streamed in bounded memory.
    """
    from llmkit.recover import MakeDiffOptions

    options = MakeDiffOptions(
        base,
        target,
        output,
        dtype=dtype,
        base_inv_freq=base_inv_freq.value,
        **tensor_output(fmt, shard_size, force=force, dry_run=dry_run),
    )
    _run(out, options)
