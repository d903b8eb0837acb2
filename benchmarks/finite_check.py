"""Benchmark: the cost of merge-lora's "no new NaN/Inf" check against the merge of one tensor.

For a LLaMA-7B MLP weight (11008 x 4096) in fp16, bf16 and fp32 and an r=8 LoRA layer, times (best of N)
the merge of that tensor as merge-lora computes it (``lora_delta`` + ``add_in_fp32``), the check it now
runs on every merged tensor (``llmkit.lora.finite.all_finite``: one ``aminmax`` pass) and, for
comparison, ``torch.isfinite(t).all()`` (what peft's ``safe_merge`` runs).

    flock /tmp/llmkit-bench.lock .venv/bin/python benchmarks/finite_check.py
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import torch

from llmkit.lora.arithmetic import add_in_fp32, lora_delta
from llmkit.lora.finite import all_finite


def best_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--rows", type=int, default=11008)
    ap.add_argument("--cols", type=int, default=4096)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "A": torch.randn(8, args.cols, generator=gen) * 0.01,
        "B": torch.randn(args.rows, 8, generator=gen) * 0.01,
    }
    source = SimpleNamespace(get=tensors.__getitem__)
    mod = SimpleNamespace(a_key="A", b_key="B", transpose=False, scaling=2.0)
    print(f"tensor {args.rows}x{args.cols}, r=8, torch threads {torch.get_num_threads()}")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        weight = (torch.randn(args.rows, args.cols, generator=gen) * 0.02).to(dtype)
        merged = add_in_fp32(weight, lora_delta(source, mod), dtype)
        merge = best_ms(lambda w=weight, d=dtype: add_in_fp32(w, lora_delta(source, mod), d), args.repeat)
        check = best_ms(lambda m=merged: all_finite(m), args.repeat)
        isfinite = best_ms(lambda m=merged: bool(torch.isfinite(m).all()), args.repeat)
        print(
            f"{dtype!s:15} merge {merge:7.1f} ms   all_finite {check:6.1f} ms ({100 * check / merge:4.1f}%)   "
            f"isfinite().all() {isfinite:6.1f} ms ({100 * isfinite / merge:4.1f}%)"
        )


if __name__ == "__main__":
    main()
