"""Weight-diff recovery and creation (SPEC.md section 2): ``tuned = diff + base``, ``diff = tuned - base``.

ZhiXi-13B (KnowLM, from stanford_alpaca's ``weight_diff.py``) is published as ``diff = tuned - base`` for
**every** tensor of the state dict, LLaMA-13B (converted to Hugging Face) being the base. Each output
tensor needs only ``base[k]`` and ``diff[k]``, so the job is a loop over names: read the pair, add,
hand the result to the sink, drop everything. Peak memory is about three times
the largest tensor plus a constant (Python and torch), whatever the number of layers; upstream loads both
full models at once (about 100 GB of RAM for 13B in fp32).

Arithmetic, exactly:

- ``fp32`` (the default for an fp32 diff): ``diff.float() + base.float()``; fp16/bf16 inputs widen to
  fp32 exactly, so this is one rounding of the exact sum, as upstream with ``torch_dtype=float32``.
- ``fp16`` (the default for an fp16 diff): ``diff.half() + base.half()``, the fp16 sum with one rounding,
  as upstream ``--is_fp16`` (which loads both models with ``torch_dtype=float16``). An fp32 diff is
  therefore rounded to fp16 before the sum, exactly as upstream does.
- ``bf16`` (no upstream equivalent): ``(diff.float() + base.float()).bfloat16()``, the fp32 sum rounded
  once to bf16 (more accurate than rounding both inputs to bf16 first).
- ``make-diff``: ``tuned.float() - base.float()`` in fp32 for every tensor (upstream ``make_diff``),
  stored in fp32, or rounded once to fp16 when asked.

Old checkpoints hold ``rotary_emb.inv_freq`` buffers; upstream adds them like any tensor. A base converted
with a current transformers has none: upstream's model object then supplies its freshly computed buffer,
so llmkit computes that buffer from ``config.json`` the same way (the old ``LlamaRotaryEmbedding`` formula).

The upstream "naive integrity" check sums every tensor of the recovered model (94052.2891 for ZhiXi-13B
in fp32, atol 1e-2). llmkit computes it in fp64 while streaming (and the upstream fp32 accumulation
beside it); the published value counts 40 layers of ``inv_freq`` buffers (about 7.46 each).

Modules: ``arithmetic`` (the per-tensor math), ``prechecks`` (the two models fit), ``integrity`` (the
integrity sum tap, published tables, reference comparison), ``options`` (the options, the report, the
result), ``plan`` (both models checked, the pipeline plan), ``job`` (the run and the checks after it).
"""

from llmkit.recover.arithmetic import base_inv_freq, diff_tensor, fp64_sum, legacy_inv_freq, recover_tensor
from llmkit.recover.integrity import (
    CHECK_SUM_ATOL,
    ZHIXI_13B_FP32_SUM,
    PublishedCheck,
    ReferenceCheck,
    SumCheck,
    compare_by_tensors,
)
from llmkit.recover.job import make_diff, recover, run
from llmkit.recover.options import (
    MakeDiffOptions,
    RecoverOptions,
    WeightDiffReport,
    WeightDiffResult,
    describe_plan,
)
from llmkit.recover.plan import plan_weight_diff

__all__ = [
    "CHECK_SUM_ATOL",
    "ZHIXI_13B_FP32_SUM",
    "MakeDiffOptions",
    "PublishedCheck",
    "RecoverOptions",
    "ReferenceCheck",
    "SumCheck",
    "WeightDiffReport",
    "WeightDiffResult",
    "base_inv_freq",
    "compare_by_tensors",
    "describe_plan",
    "diff_tensor",
    "fp64_sum",
    "legacy_inv_freq",
    "make_diff",
    "plan_weight_diff",
    "recover",
    "recover_tensor",
    "run",
]
