"""recover / make-diff: the options, what a run reports (:class:`WeightDiffReport`, the shared dry-run
report extended) and its result (:class:`WeightDiffResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmkit.pipeline import Notice, PlanReport, PlanResult, plan_rows
from llmkit.recover.integrity import PublishedCheck, ReferenceCheck, SumCheck
from llmkit.units import DEFAULT_SHARD_SIZE


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
    outtype: str | None = None  # fmt gguf: the GGUF tensor type (None: f16)
    split_max_size: int = 0  # fmt gguf: bytes per split file (0: one file)

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
    outtype = None  # a diff is no model to run: never GGUF
    split_max_size = 0

    @property
    def other(self) -> Path:
        return self.target


WeightDiffOptions = RecoverOptions | MakeDiffOptions


@dataclass
class WeightDiffReport(PlanReport):
    """What a recover / make-diff run will do, known before any tensor data is read: the report every
    tensor job's ``--dry-run`` shows, then the job's own facts. Sizes in bytes."""

    operation: str  # "recover" or "make-diff"
    base: str
    other: str  # the diff (recover) or the tuned model (make-diff)
    dtype: str  # output dtype: fp32, fp16 or bf16
    arithmetic: str  # the formula, as applied
    shard_size: int
    parameters: int
    base_dtypes: dict[str, int]  # safetensors dtype code -> tensor count
    other_dtypes: dict[str, int]
    computed_buffers: list[str] = field(default_factory=list)  # base inv_freq buffers computed from config
    aux_files: dict[str, str] = field(default_factory=dict)  # output file -> folder it is copied from
    notes: list[str] = field(default_factory=list)  # every notice's text (stable JSON)
    notices: list[Notice] = field(default_factory=list)


@dataclass(kw_only=True)
class WeightDiffResult(PlanResult):
    """Result of ``recover`` / ``make_diff``: the report (also for a dry run), and after a run the checks
    that ran: the integrity sum, the published tables, the reference comparison."""

    plan: WeightDiffReport
    check_sum: SumCheck | None = None
    published: list[PublishedCheck] = field(default_factory=list)
    reference: ReferenceCheck | None = None


def describe_plan(plan: WeightDiffReport) -> list[tuple[str, str]]:
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
