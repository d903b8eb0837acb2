"""recover streams: peak RSS ~ 3 x the largest tensor + a constant, the same for 2 and 10 layers.

Measured in fresh subprocesses (the kernel's VmHWM, reset right before the job via /proc/self/clear_refs),
on a model large enough that holding the inputs would show: ~20 MB per layer, largest tensor 4 MB.
The diff is one fp32 ``pytorch_model.bin`` (memory-mapped by torch, as the ZhiXi diff shards are) and the
base fp16 safetensors, as for ZhiXi-13B.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from rss_probe import needs_proc, peak_growth

HIDDEN, INTERMEDIATE, VOCAB = 512, 1408, 2048
LARGEST = VOCAB * HIDDEN * 4  # fp32 embedding = 4 MiB
PER_LAYER_INPUT = (4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTERMEDIATE) * (4 + 2)

GENERATE = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from safetensors.torch import save_file
    root, layers = Path(sys.argv[1]), int(sys.argv[2])
    H, I, V = %d, %d, %d
    g = torch.Generator().manual_seed(layers)
    shapes = {"model.embed_tokens.weight": (V, H)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q", "k", "v", "o"):
            shapes[p + f"self_attn.{n}_proj.weight"] = (H, H)
        shapes[p + "mlp.gate_proj.weight"] = (I, H)
        shapes[p + "mlp.up_proj.weight"] = (I, H)
        shapes[p + "mlp.down_proj.weight"] = (H, I)
        shapes[p + "input_layernorm.weight"] = (H,)
        shapes[p + "post_attention_layernorm.weight"] = (H,)
    shapes["model.norm.weight"] = (H,)
    shapes["lm_head.weight"] = (V, H)
    base = {k: torch.randn(s, generator=g).half() for k, s in shapes.items()}
    (root / "base").mkdir(parents=True)
    save_file(base, root / "base" / "model.safetensors")
    del base
    diff = {k: torch.randn(s, generator=g) * 0.01 for k, s in shapes.items()}
    (root / "diff").mkdir()
    torch.save(diff, root / "diff" / "pytorch_model.bin")
""") % (HIDDEN, INTERMEDIATE, VOCAB)

MEASURE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from llmkit.errors import CheckFailed
    from llmkit.recover import recover


    root = Path(sys.argv[1])
    # warm-up on the same files (imports, thread pools, allocator), then measure a fresh run
    recover(root / "base", root / "diff", root / "warm", dry_run=True)
    reset_peak()
    before = status("VmRSS")
    try:  # with the fp64 integrity sum on the way; 0.0 fails only at the end, after the whole stream
        recover(root / "base", root / "diff", root / "out", check_sum=0.0)
    except CheckFailed:
        pass
    print(json.dumps({"growth": status("VmHWM") - before}))
""")


def _peak_growth(root: Path, layers: int) -> int:
    return peak_growth(GENERATE, MEASURE, root / f"l{layers}", str(layers))


@needs_proc
def test_recover_peak_rss_is_about_three_largest_tensors_and_flat_in_layers(tmp_path):
    small, large = _peak_growth(tmp_path, 2), _peak_growth(tmp_path, 10)
    # Holding the inputs of 8 extra layers would add ~8 x 20 MB; streaming adds nothing measurable.
    assert large - small < PER_LAYER_INPUT, (small, large)
    # One tensor pair in flight: diff (1x) + fp16 base (0.5x) + sum (1x), plus a small constant.
    assert large < 3 * LARGEST + 24 * 2**20, (small, large)
