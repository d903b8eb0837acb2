"""Demo step: recover from a Meta base and merge a LoRA in one pass (``llmkit.chain``), checked against peft's
``merge_and_unload`` of the recovered model the meta step wrote (and checked against diff + base)."""

from __future__ import annotations

import torch

from llmkit.demo import DemoContext, demo_step
from llmkit.errors import CheckFailed


@demo_step(72, "recover -> merge-lora in one pass")
def _one_pass(ctx: DemoContext) -> str:
    from llmkit.chain import run_chain
    from llmkit.io import open_source
    from llmkit.lora import MergeOptions
    from llmkit.lora import run as merge
    from llmkit.recover import RecoverOptions
    from llmkit.recover import run as recover
    from llmkit.tiny_lora import peft_merged_state

    adapter = ctx.workdir / "lora" / "cutegpt-like"  # made by the merge-lora step
    work = ctx.workdir / "one-pass"
    inner, out = work / "recovered", work / "merged"
    run_chain(
        [
            lambda: recover(RecoverOptions(ctx.shared["meta_dir"], ctx.shared["meta_diff"], inner, dry_run=True)),
            lambda: merge(MergeOptions(inner, (adapter,), out, force=ctx.force)),
        ]
    )
    if inner.exists():
        raise CheckFailed(f"one pass: the inner output {inner} was written")
    reference = peft_merged_state(ctx.shared["meta_recovered"], [adapter])  # peft on the step-by-step model
    with open_source(out) as src:
        if set(src.keys()) != set(reference):
            raise CheckFailed("one pass: tensor names differ from peft's merge of the recovered model")
        for name, tensor in src:
            if not torch.equal(tensor, reference[name]):
                raise CheckFailed(f"one pass: {name} differs from peft's merge of the recovered model")
    return f"Meta base + diff + LoRA -> {len(reference)} tensors equal to peft's merge; nothing else written"
