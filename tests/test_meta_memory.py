"""from-meta streams: peak RSS ~ a few copies of the largest tensor + a constant, the same for 2 and 10
layers, on 2 model-parallel shards (each tensor joined from its two slices). Measured in fresh processes."""

from __future__ import annotations

import textwrap

from rss_probe import needs_proc, peak_growth

HIDDEN, INTERMEDIATE, VOCAB, HEADS = 512, 1408, 2048, 8
LARGEST = VOCAB * HIDDEN * 2  # fp16 embedding = 2 MiB
PER_LAYER = (4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTERMEDIATE) * 2

GENERATE = textwrap.dedent("""
    import json, sys, torch
    from pathlib import Path
    root, layers = Path(sys.argv[1]), int(sys.argv[2])
    H, I, V, N = %d, %d, %d, %d
    g = torch.Generator().manual_seed(layers)
    shards = [{}, {}]
    def put(name, shape, dim):
        t = torch.randn(shape, generator=g).half()
        for i, piece in enumerate(torch.chunk(t, 2, dim=dim) if dim is not None else (t, t)):
            shards[i][name] = piece.clone()
    put("tok_embeddings.weight", (V, H), 1)
    for i in range(layers):
        p = f"layers.{i}."
        for n in ("wq", "wk", "wv"):
            put(p + f"attention.{n}.weight", (H, H), 0)
        put(p + "attention.wo.weight", (H, H), 1)
        put(p + "feed_forward.w1.weight", (I, H), 0)
        put(p + "feed_forward.w2.weight", (H, I), 1)
        put(p + "feed_forward.w3.weight", (I, H), 0)
        put(p + "attention_norm.weight", (H,), None)
        put(p + "ffn_norm.weight", (H,), None)
    put("norm.weight", (H,), None)
    put("output.weight", (V, H), 0)
    root.mkdir(parents=True)
    for i, s in enumerate(shards):
        torch.save(s, root / f"consolidated.{i:02d}.pth")
    (root / "params.json").write_text(json.dumps({"dim": H, "multiple_of": 256, "n_heads": N, "n_layers": layers,
                                                  "norm_eps": 1e-6, "vocab_size": -1}))
""") % (HIDDEN, INTERMEDIATE, VOCAB, HEADS)

MEASURE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from llmkit.convert import FromMetaOptions, from_meta

    root = Path(sys.argv[1])
    from_meta(FromMetaOptions(root, root.parent / (root.name + "-warm"), dry_run=True))  # imports, pools
    reset_peak()
    before = status("VmRSS")
    from_meta(FromMetaOptions(root, root.parent / (root.name + "-out")))
    print(json.dumps({"growth": status("VmHWM") - before}))
""")


@needs_proc
def test_from_meta_peak_rss_is_a_few_largest_tensors_and_flat_in_layers(tmp_path):
    small = peak_growth(GENERATE, MEASURE, tmp_path / "l2", "2")
    large = peak_growth(GENERATE, MEASURE, tmp_path / "l10", "10")
    # Holding the inputs of 8 extra layers would add ~8 x 11 MB; streaming adds only allocator noise.
    assert large - small < 4 * PER_LAYER, (small, large)
    # Two slices + the joined tensor + one finished tensor waiting for the writer, plus a constant.
    assert large < 4 * LARGEST + 24 * 2**20, (small, large)
