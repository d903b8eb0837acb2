"""Demo: Meta originals -> Hugging Face (from-meta), recover straight from a Meta base, and back (to-meta).

The Meta checkpoint is written by ``llmkit.tiny`` from the HF reference with SPEC.md section 4's rules
(un-permuted wq/wk, 2 model-parallel shards); every result is compared with that reference in torch.
"""

from __future__ import annotations

import torch

from llmkit.demo import DemoContext, demo_step
from llmkit.errors import CheckFailed


@demo_step(65, "from-meta / recover from Meta / to-meta")
def _meta_path(ctx: DemoContext) -> str:
    from safetensors.torch import load_file, save_file

    from llmkit.convert import FromMetaOptions, ToMetaOptions, from_meta, to_meta
    from llmkit.recover import recover
    from llmkit.tiny import save_tiny_model

    work = ctx.workdir / "meta"
    state = save_tiny_model(work / "LLaMA" / "7B", "meta-2shards", seed=0)  # the HF state it was made from
    from_meta(FromMetaOptions(work / "LLaMA" / "7B", work / "hf", force=ctx.force))
    hf = load_file(work / "hf" / "model.safetensors")
    for name, ref in state.items():
        if name not in hf or not torch.equal(hf[name], ref):
            raise CheckFailed(f"from-meta: {name} differs from the original HF tensor")
    # A weight diff applied straight to the Meta base: out = diff + base, computed here in torch.
    g = torch.Generator().manual_seed(5)
    diff = {k: (torch.randn(v.shape, generator=g) * 0.01).contiguous() for k, v in state.items()}
    (work / "diff").mkdir(parents=True, exist_ok=True)
    save_file(diff, work / "diff" / "model.safetensors", metadata={"format": "pt"})
    (work / "diff" / "config.json").write_bytes((work / "hf" / "config.json").read_bytes())
    recover(work / "LLaMA" / "7B", work / "diff", work / "recovered", force=ctx.force)
    rec = load_file(work / "recovered" / "model.safetensors")
    for name, ref in state.items():
        if not torch.equal(rec[name], diff[name] + ref):
            raise CheckFailed(f"recover from a Meta base: {name} differs from diff + base")
    ctx.shared.update(meta_dir=work / "LLaMA" / "7B", meta_diff=work / "diff", meta_recovered=work / "recovered")
    to_meta(ToMetaOptions(work / "hf", work / "meta-again", shards=2, force=ctx.force))
    for i in range(2):
        a = torch.load(work / "LLaMA" / "7B" / f"consolidated.0{i}.pth", weights_only=True)
        b = torch.load(work / "meta-again" / f"consolidated.0{i}.pth", weights_only=True)
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            raise CheckFailed(f"to-meta: consolidated.0{i}.pth differs from the original shard")
    return (
        f"{len(state)} tensors from 2 Meta shards = the HF original; recover on the Meta base = diff + base; "
        "to-meta = the original consolidated.00/01.pth"
    )
