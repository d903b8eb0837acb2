"""Demo: make-diff of a fine-tuned tiny model against the base, recover it, check both against torch."""

from __future__ import annotations

import torch

from llmkit.demo import DemoContext, demo_step
from llmkit.errors import CheckFailed


def _load(folder) -> dict[str, torch.Tensor]:
    """Read an output folder with safetensors itself (not llmkit's reader)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for p in sorted(folder.glob("*.safetensors")):
        state.update(load_file(p))
    return state


def _compare(what: str, got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    if set(got) != set(expected):
        raise CheckFailed(f"{what}: tensor names differ, e.g. {sorted(set(got) ^ set(expected))[:3]}")
    for name, ref in expected.items():
        t = got[name]
        if t.dtype != ref.dtype or t.shape != ref.shape or not torch.equal(t, ref):
            raise CheckFailed(f"{what}: tensor {name} differs from the torch reference")


@demo_step(60, "make-diff -> recover")
def _make_diff_and_recover(ctx: DemoContext) -> str:
    from llmkit.recover import make_diff, recover
    from llmkit.tiny import save_tiny_model

    work = ctx.workdir / "weight-diff"
    base = ctx.reference or _load(ctx.base)
    tuned = save_tiny_model(work / "tuned", "bin-sharded", seed=7)  # "fine-tuned": another seed, .bin shards

    # The references, computed here with torch in float64 (exact for these sums) and rounded once to fp32.
    diff_ref = {k: (tuned[k].double() - base[k].double()).float() for k in tuned}
    recovered_ref = {k: (diff_ref[k].double() + base[k].double()).float() for k in tuned}
    expected_sum = sum(float(t.double().sum()) for t in recovered_ref.values())

    make_diff(ctx.base, work / "tuned", work / "diff", shard_size=150_000, force=ctx.force)
    _compare("make-diff", _load(work / "diff"), diff_ref)
    result = recover(ctx.base, work / "diff", work / "recovered", check_sum=expected_sum, force=ctx.force)
    _compare("recover", _load(work / "recovered"), recovered_ref)
    if (work / "recovered" / "tokenizer.model").read_bytes() != (work / "tuned" / "tokenizer.model").read_bytes():
        raise CheckFailed("recover: the tokenizer was not taken from the diff folder")
    if result.check_sum is None:
        raise CheckFailed("recover --check-sum reported no sum check")
    off = max(float((recovered_ref[k] - tuned[k]).abs().max()) for k in tuned)
    ctx.shared["recovered"] = work / "recovered"
    return (
        f"{result.plan.tensors} tensors: diff and recovered model bit-exact vs torch; check-sum "
        f"{result.check_sum.sum_fp64:.4f} ok; max |recovered - tuned| = {off:.1e} (fp32 rounding)"
    )
