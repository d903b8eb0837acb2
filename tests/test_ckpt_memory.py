"""to-ckpt and from-ckpt stream: peak RSS ~ a few copies of the largest tensor + a constant, the same for
2 and 10 layers. Measured in fresh processes (tests/rss_probe.py)."""

from __future__ import annotations

import textwrap

from rss_probe import needs_proc, peak_growth

HIDDEN, INTERMEDIATE, VOCAB, HEADS = 512, 1408, 2048, 4
LARGEST = VOCAB * HIDDEN * 2  # fp16 embedding = 2 MiB
PER_LAYER = (4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTERMEDIATE) * 2

GENERATE = f"""
import sys
from pathlib import Path
import torch
from llmkit.tiny import tiny_model
model = tiny_model(int(sys.argv[2]), layers=int(sys.argv[2]), hidden={HIDDEN}, intermediate={INTERMEDIATE}, heads={HEADS},
                   vocab_size={VOCAB}, dtype=torch.float16)
model.save_pretrained(Path(sys.argv[1]) / "hf")
"""

MEASURE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from llmkit.convert.ckpt import FromCkptOptions, ToCkptOptions, from_ckpt, to_ckpt

    root = Path(sys.argv[1])
    to_ckpt(ToCkptOptions(root / "hf", root / "warm.ckpt", dry_run=True))  # imports, pools
    reset_peak()
    before = status("VmRSS")
    to_ckpt(ToCkptOptions(root / "hf", root / "m.ckpt", rotary="meta", crc=True))
    to_growth = status("VmHWM") - before
    from_ckpt(FromCkptOptions(root / "m.ckpt", root / "warm", dry_run=True, config=root / "hf"))
    reset_peak()
    before = status("VmRSS")
    from_ckpt(FromCkptOptions(root / "m.ckpt", root / "back", rotary="meta", config=root / "hf"))
    print(json.dumps({"growth": max(to_growth, status("VmHWM") - before)}))
""")


@needs_proc
def test_ckpt_conversions_peak_rss_is_a_few_largest_tensors_and_flat_in_layers(tmp_path):
    small = peak_growth(GENERATE, MEASURE, tmp_path / "l2", "2")
    large = peak_growth(GENERATE, MEASURE, tmp_path / "l10", "10")
    # Holding 8 extra layers would add ~8 x 9 MB; streaming adds only allocator noise.
    assert large - small < 4 * PER_LAYER, (small, large)
    # The read tensor, its (un)permuted copy and one finished tensor waiting for the writer, plus a constant.
    assert large < 4 * LARGEST + 24 * 2**20, (small, large)


MEASURE_ENCRYPTED = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import llmkit.io.mindspore.crypto as crypto
    from llmkit.convert.ckpt import FromCkptOptions, ToCkptOptions, from_ckpt, to_ckpt

    crypto.BLOCK_PLAIN = 4 << 20  # 64 MiB in MindSpore; small here so that both depths span many blocks
    os.environ["LLMKIT_MEM_KEY"] = "00" * 32
    root = Path(sys.argv[1])
    key = dict(enc_key="env:LLMKIT_MEM_KEY", enc_mode="AES-GCM")
    to_ckpt(ToCkptOptions(root / "hf", root / "warm.ckpt", dry_run=True, **key))
    reset_peak()
    before = status("VmRSS")
    to_ckpt(ToCkptOptions(root / "hf", root / "m.ckpt", **key))
    to_growth = status("VmHWM") - before
    from_ckpt(FromCkptOptions(root / "m.ckpt", root / "warm", dry_run=True, config=root / "hf",
                              dec_key="env:LLMKIT_MEM_KEY"))
    reset_peak()
    before = status("VmRSS")
    from_ckpt(FromCkptOptions(root / "m.ckpt", root / "back", config=root / "hf", dec_key="env:LLMKIT_MEM_KEY"))
    print(json.dumps({"growth": max(to_growth, status("VmHWM") - before)}))
""")


@needs_proc
def test_encrypted_conversions_hold_about_one_block_and_one_tensor_whatever_the_depth(tmp_path):
    small = peak_growth(GENERATE, MEASURE_ENCRYPTED, tmp_path / "l2", "2")
    large = peak_growth(GENERATE, MEASURE_ENCRYPTED, tmp_path / "l10", "10")
    assert large - small < 4 * PER_LAYER, (small, large)
    # A decrypted block and the ciphertext being read, plus the unencrypted run's tensors and constant.
    assert large < 2 * (4 << 20) + 4 * LARGEST + 24 * 2**20, (small, large)
