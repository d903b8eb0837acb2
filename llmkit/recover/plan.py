"""recover / make-diff planned: both models opened and checked against each other, the output dtype and
the notices decided, and the pipeline :class:`~llmkit.pipeline.Plan` whose ``produce(name)`` reads
``base[k]`` and ``other[k]`` and combines them (``llmkit.recover.arithmetic``). Headers and small files only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llmkit.errors import InputError
from llmkit.io.core.dtypes import CLI_DTYPES, dtype_name
from llmkit.io.core.llama_tensors import check_source
from llmkit.io.core.source import TensorSource
from llmkit.io.core.spec import TensorSpec
from llmkit.outputs import job_sink_options
from llmkit.pipeline import AuxCopy, Notice, Plan, PlanReport
from llmkit.recover.arithmetic import base_inv_freq, diff_tensor, recover_tensor, working_set
from llmkit.recover.integrity import SumTap
from llmkit.recover.options import WeightDiffOptions, WeightDiffReport
from llmkit.recover.prechecks import (
    aux_plan,
    check_names,
    check_shapes,
    describe_role,
    dtype_counts,
    layer_count,
    open_input,
    rope_settings,
)

_ARITHMETIC = {
    ("recover", torch.float32): "out = fp32(diff) + fp32(base)",
    ("recover", torch.float16): "out = fp16(diff) + fp16(base), one rounding of the fp16 sum",
    ("recover", torch.bfloat16): "out = bf16(fp32(diff) + fp32(base)), one rounding",
    ("make-diff", torch.float32): "diff = fp32(tuned) - fp32(base)",
    ("make-diff", torch.float16): "diff = fp16(fp32(tuned) - fp32(base)), one rounding",
}


@dataclass
class WeightDiffFacts:
    """What planning found that the report shows beyond the pipeline's own (:func:`weight_diff_report`)."""

    base: TensorSource
    other: TensorSource
    out_dtype: torch.dtype
    computed: list[str]  # base rotary buffers computed from config.json
    aux: dict[str, str]  # output file -> folder it is copied from


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


def plan_weight_diff(options: WeightDiffOptions) -> tuple[Plan, WeightDiffFacts]:
    """Open both models, run every check, and return the pipeline :class:`~llmkit.pipeline.Plan`.

    Nothing is read but headers and small files. The plan holds both sources open: close it.
    """
    role = "diff" if options.operation == "recover" else "tuned"
    base = open_input(options.base, "base")
    try:
        other = open_input(options.other, describe_role(role))
    except BaseException:
        base.close()
        raise
    try:
        return _plan(options, base, other, role)
    except BaseException:
        base.close()
        other.close()
        raise


def _check_pair(
    base: TensorSource, other: TensorSource, role: str
) -> tuple[list[str], list[str], tuple[int, float] | None]:
    """The two models fit each other, then each is a complete LLaMA (the pairwise checks explain a wrong base
    better): (base buffers to compute, base buffers left out, (head dim, rope theta) or None)."""
    what = describe_role(role)
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
    check_source(base)
    check_source(other)
    return computed, ignored, rope


def _notices(
    options: WeightDiffOptions,
    facts: WeightDiffFacts,
    notes: list[str],
    ignored: list[str],
    rope: tuple[int, float] | None,
    what: str,
) -> list[Notice]:
    """Where config/tokenizer files come from, how the base's rotary buffers are made, the fp16 rounding."""
    base, computed = facts.base, facts.computed
    notices = [Notice("warning" if "no tokenizer" in n else "info", n) for n in notes]
    notices += [Notice.warning(f"{base.path}: {w}") for w in base.warnings]  # e.g. a Meta base's shard order
    if computed and rope is not None:
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
    fp32_diff = any(i.dtype == torch.float32 for i in facts.other.infos())
    if options.operation == "recover" and facts.out_dtype == torch.float16 and fp32_diff:
        notices.append(
            Notice.info(
                "fp16 from an fp32 diff: the diff is rounded to fp16 before the sum, as upstream "
                "--is_fp16 does; for the closest fp16 model recover in fp32 and convert"
            )
        )
    return notices


def _plan(
    options: WeightDiffOptions, base: TensorSource, other: TensorSource, role: str
) -> tuple[Plan, WeightDiffFacts]:
    operation, what = options.operation, describe_role(role)
    computed, ignored, rope = _check_pair(base, other, role)
    out_dtype = _output_dtype(options, other)
    aux, notes = aux_plan(other, base, role)
    facts = WeightDiffFacts(base, other, out_dtype, computed, aux)
    notices = _notices(options, facts, notes, ignored, rope, what)
    computed_set = set(computed)
    inv_freq = base_inv_freq(rope[0], rope[1], options.base_inv_freq) if computed and rope else None
    compute = recover_tensor if operation == "recover" else diff_tensor

    def base_tensor(name: str) -> torch.Tensor:
        return inv_freq if inv_freq is not None and name in computed_set else base.get(name)

    def reads(name: str) -> list[tuple[TensorSource, str]]:
        return [(other, name)] if name in computed_set else [(other, name), (base, name)]

    def b_dtype(name: str) -> torch.dtype:
        return inv_freq.dtype if inv_freq is not None and name in computed_set else base.info(name).dtype

    folders: dict[str, list[str]] = {}
    for fname, folder in aux.items():
        folders.setdefault(folder, []).append(fname)
    o_infos = other.infos()
    plan = Plan(
        job=operation,
        output=Path(options.output),
        fmt=options.fmt,
        specs=[TensorSpec(i.name, out_dtype, i.shape) for i in o_infos],
        produce=lambda name: compute(other.get(name), base_tensor(name), out_dtype),
        reads=reads,
        # The output may not be, be inside or contain an input: the weight files and the folders
        # config/tokenizer files are read from.
        inputs=[p for p in (base.path, base.folder, other.path, other.folder) if p is not None],
        input_bytes=other.total_bytes + sum(base.info(i.name).nbytes for i in o_infos if i.name not in computed_set),
        working_set_bytes=max(working_set(i.numel, i.dtype, b_dtype(i.name), out_dtype, operation) for i in o_infos),
        label="recovering" if operation == "recover" else "making diff",
        aux=[AuxCopy(Path(folder), tuple(names), dtype=out_dtype) for folder, names in folders.items()],
        sink_options=job_sink_options(options),
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
    return plan, facts


def weight_diff_report(
    options: WeightDiffOptions, facts: WeightDiffFacts, report: PlanReport, notices: list[Notice]
) -> WeightDiffReport:
    """The report every tensor job's ``--dry-run`` shows, with recover's facts (``notices``: the plan's,
    once the sink is open)."""
    base, other = facts.base, facts.other
    return WeightDiffReport(
        **vars(report),
        operation=options.operation,
        base=str(base.path),
        other=str(other.path),
        dtype=dtype_name(facts.out_dtype),
        arithmetic=_ARITHMETIC[(options.operation, facts.out_dtype)],
        shard_size=options.shard_size,
        parameters=sum(i.numel for i in other.infos()),
        base_dtypes=dtype_counts(base.infos()),
        other_dtypes=dtype_counts(other.infos()),
        computed_buffers=list(facts.computed),
        aux_files=dict(facts.aux),
        notes=[n.text for n in notices],
        notices=list(notices),
    )
