"""Checks of a recovered (or diff) output: upstream's integrity sum (a tap, judged before the rename),
the published MD5 tables, and a tensor-by-tensor comparison with a reference model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from llmkit.errors import CheckFailed
from llmkit.pipeline import Check, ProgressFactory
from llmkit.recover.arithmetic import ROTARY_BUFFER, base_inv_freq, fp64_sum

# The published integrity sum of the recovered ZhiXi-13B in fp32 (KnowLM tools/weight_diff.py). It sums the
# whole state_dict of transformers 4.28-4.30, 40 rotary_emb.inv_freq buffers included, with the base's buffers
# as that transformers' convert_llama_weights_to_hf stored them: in fp16 (base_inv_freq(..., "fp16")). The
# same buffers computed in fp32 sum to about 0.0105 less over 40 layers of head dim 128: more than the 1e-2.
ZHIXI_13B_FP32_SUM = 94052.2891
CHECK_SUM_ATOL = 1e-2


@dataclass
class SumCheck:
    """The upstream naive integrity check: the sum of every value of the output model."""

    expected: float
    atol: float
    sum_fp64: float  # llmkit's sum, fp64 accumulation
    sum_fp32_upstream: float | None  # upstream's way: fp32 tensor sums added in fp32 (fp32 output only)
    passed: bool
    rotary_buffers: int  # how many rotary_emb.inv_freq tensors the output holds (counted in the sum)
    missing_buffer_sum: float | None = None  # what absent inv_freq buffers would add (when absent)
    explanation: str | None = None


@dataclass
class PublishedCheck:
    """An output file whose name appears in a published ZhiXi MD5 table."""

    file: str
    md5: str
    tables: list[str]
    matched_table: str | None


@dataclass
class ReferenceCheck:
    """The output compared tensor by tensor with a reference model (llmkit.verify)."""

    reference: str
    identical: int
    differing: list[str]
    only_output: list[str]
    only_reference: list[str]

    @property
    def passed(self) -> bool:
        return not self.differing and not self.only_output and not self.only_reference


def _rotary_sum(rope: tuple[int, float] | None, count: int, form: str = "fp16") -> float | None:
    if rope is None or count <= 0:
        return None
    return count * fp64_sum(base_inv_freq(rope[0], rope[1], form))


def _other_form_text(
    expected: float, atol: float, s64: float, rope: tuple[int, float] | None, computed: int, form: str
) -> str:
    """What the sum would be with the base's missing buffers made the other way (``--base-inv-freq``)."""
    other = "fp32" if form == "fp16" else "fp16"
    chosen, alternative = _rotary_sum(rope, computed, form), _rotary_sum(rope, computed, other)
    if chosen is None or alternative is None:
        return ""
    alt = s64 - chosen + alternative
    return (
        f". The {computed} rotary_emb.inv_freq buffer(s) the base's files lack were made in {form} "
        f"(--base-inv-freq {form}); with --base-inv-freq {other} the sum would be {alt:.4f}, which "
        + (f"agrees: pass --base-inv-freq {other}" if abs(alt - expected) <= atol else "does not agree either")
    )


def _judge_sum(
    expected: float,
    atol: float,
    s64: float,
    s32: float | None,
    buffers: int,
    layers: int | None,
    rope: tuple[int, float] | None,
    *,
    computed: int = 0,
    inv_freq_form: str = "fp16",
) -> SumCheck:
    passed = abs(s64 - expected) <= atol or (s32 is not None and abs(s32 - expected) <= atol)
    check = SumCheck(
        expected=expected, atol=atol, sum_fp64=s64, sum_fp32_upstream=s32, passed=passed, rotary_buffers=buffers
    )
    if passed:
        return check
    text = (
        f"sum of all output values is {s64:.4f}, expected {expected:.4f} (atol {atol:g}; off by {s64 - expected:+.4f})"
    )
    if computed:
        text += _other_form_text(expected, atol, s64, rope, computed, inv_freq_form)
    if buffers == 0 and layers:
        missing = _rotary_sum(rope, layers, inv_freq_form)
        if missing is not None:
            check.missing_buffer_sum = missing
            with_buffers = s64 + missing
            agrees = abs(with_buffers - expected) <= atol
            text += (
                f". The published value counts the rotary_emb.inv_freq buffers that checkpoints saved by "
                f"older transformers hold ({layers} layers x {missing / layers:.4f}); this output has none "
                f"because the diff has none. With them the sum would be {with_buffers:.4f}, which "
                + (
                    "agrees with the published value: the weights look right, but the check as published "
                    "cannot pass without those buffers"
                    if agrees
                    else "does not agree either"
                )
            )
        else:
            text += (
                ". The published value counts rotary_emb.inv_freq buffers, which this output lacks, and no "
                "config.json says how to compute them"
            )
    check.explanation = text
    return check


class SumTap:
    """Upstream's naive integrity check while streaming: the sum of every output value, in fp64 (and the
    upstream fp32 way beside it for fp32 outputs). Judged before the rename: a mismatch keeps nothing."""

    def __init__(
        self,
        expected: float,
        out_dtype: torch.dtype,
        output: str,
        layers: int | None,
        rope: tuple[int, float] | None,
        atol: float = CHECK_SUM_ATOL,
        *,
        computed: int = 0,
        inv_freq_form: str = "fp16",
    ):
        self.expected, self.atol, self.output, self.layers, self.rope = expected, atol, output, layers, rope
        self.computed, self.inv_freq_form = computed, inv_freq_form
        self.s64 = 0.0
        self.s32 = torch.zeros((), dtype=torch.float32) if out_dtype == torch.float32 else None
        self.buffers = 0
        self.result: SumCheck | None = None

    def feed(self, name: str, tensor: torch.Tensor) -> None:
        self.take(name, self.part(name, tensor))

    def part(self, name: str, tensor: torch.Tensor) -> tuple[float, torch.Tensor | None]:
        """One tensor's share of the sums (a Ray task computes it; ``take`` adds it in the run's order)."""
        return fp64_sum(tensor), tensor.sum() if self.s32 is not None else None

    def take(self, name: str, part: object) -> None:
        s64, s32 = cast("tuple[float, torch.Tensor | None]", part)  # what part() returned
        self.s64 += float(s64)
        if self.s32 is not None and s32 is not None:
            self.s32 = self.s32 + s32  # upstream: Python sum of fp32 tensor sums
        self.buffers += name.endswith(ROTARY_BUFFER)

    def finish(self) -> Check:
        self.result = _judge_sum(
            self.expected,
            self.atol,
            self.s64,
            float(self.s32) if self.s32 is not None else None,
            self.buffers,
            self.layers,
            self.rope,
            computed=self.computed,
            inv_freq_form=self.inv_freq_form,
        )
        if not self.result.passed:
            raise CheckFailed(
                self.result.explanation or "integrity sum mismatch",
                path=self.output,
                hint="no output was kept; check that the base is the model the diff was made "
                "from (for ZhiXi-13B: LLaMA-13B converted to Hugging Face in fp16)",
            )
        return Check("check-sum", "ok", f"{self.s64:.4f} matches {self.expected:.4f} within {self.atol:g}")


def published_checks(
    out_dir: Path, files: list[str], operation: str, progress: ProgressFactory | None
) -> list[PublishedCheck]:
    """MD5 of output files whose names appear in a published table of this kind: recovered models
    (recover) or diffs (make-diff), through the one published-table check (``llmkit.verify``)."""
    from llmkit.registry import MODELS
    from llmkit.verify import published_matches

    stage = "recovered" if operation == "recover" else "download"
    tables = {m.tables[stage] for m in MODELS if m.kind == "diff" and stage in m.tables}
    return [
        PublishedCheck(m.file, m.digest, m.tables, m.matched_table)
        for m in published_matches(out_dir, files, tables, progress)
    ]


def compare_by_tensors(output: Path, reference: str | os.PathLike) -> ReferenceCheck:
    """Compare two models tensor by tensor (names, dtypes, shapes, bytes) with llmkit.verify."""
    from llmkit.verify import compare_sources

    cmp = compare_sources(Path(output), Path(reference))
    return ReferenceCheck(
        str(reference), cmp.compared - len(cmp.differing), list(cmp.differing), list(cmp.only_a), list(cmp.only_b)
    )
