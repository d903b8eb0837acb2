"""from-meta streams: peak RSS ~ a few copies of the largest tensor + a constant, the same for 2 and 10
layers, on 2 model-parallel shards (each tensor joined from its two slices). Measured in fresh processes."""

from __future__ import annotations

import textwrap

from rss_probe import needs_proc, peak_growth

HIDDEN, INTERMEDIATE, VOCAB, HEADS = 512, 1408, 2048, 8
LARGEST = VOCAB * HIDDEN * 2  # fp16 embedding = 2 MiB
PER_LAYER = (4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTERMEDIATE) * 2

GENERATE = f"""
import sys
from pathlib import Path
from llmkit.tiny import write_random_meta
write_random_meta(Path(sys.argv[1]), layers=int(sys.argv[2]), hidden={HIDDEN}, intermediate={INTERMEDIATE}, vocab={VOCAB}, heads={HEADS},
                  seed=int(sys.argv[2]))
"""

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
