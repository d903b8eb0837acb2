"""Demo step: merge-lora, checked against peft's own ``merge_and_unload``."""

from __future__ import annotations

import torch

from llmkit.demo import DemoContext, demo_step
from llmkit.errors import CheckFailed


@demo_step(70, "merge-lora")
def _merge_lora(ctx: DemoContext) -> str:
    from llmkit.io import open_source
    from llmkit.lora import MergeOptions, run
    from llmkit.tiny_lora import peft_merged_state, save_chinese_alpaca_like, save_cutegpt_like

    folder = ctx.workdir / "lora"
    adapters = [save_cutegpt_like(folder / "cutegpt-like"), save_chinese_alpaca_like(folder / "chinese-alpaca-like")]
    out = ctx.workdir / "merged-lora"
    result = run(MergeOptions(ctx.base, tuple(adapters), out, force=ctx.force))
    reference = peft_merged_state(ctx.base, adapters)  # transformers + peft, resize then merge_and_unload
    with open_source(out) as src:
        if set(src.keys()) != set(reference):
            differ = sorted(set(src.keys()) ^ set(reference))[:3]
            raise CheckFailed(f"merge-lora: tensor names differ from peft's, e.g. {differ}")
        for name, tensor in src:
            ref = reference[name]
            if tensor.dtype != ref.dtype or tensor.shape != ref.shape or not torch.equal(tensor, ref):
                raise CheckFailed(f"merge-lora: {name} differs from peft's merge_and_unload")
    ctx.shared["merged_lora"] = out
    return (
        f"CuteGPT-like q/v LoRA + Chinese-Alpaca-like LoRA (vocab {result.vocab_before} -> {result.vocab_after}): "
        f"{result.tensors} tensors equal to peft merge_and_unload bit for bit"
    )
