"""Benchmark ``llmkit recover`` against the upstream weight_diff.py approach (SPEC.md section 2).

    flock /tmp/llmkit-bench.lock .venv/bin/python benchmarks/recover.py

A generated model with LLaMA-7B tensor shapes (hidden 4096, intermediate 11008, vocab 32000, 32 heads)
and a few layers, laid out like the ZhiXi case: the base in fp16 ``.bin`` shards (LLaMA converted to
Hugging Face), the diff in fp32 ``.bin`` shards. One layer is ~0.81 GB of fp32 diff + 0.40 GB of fp16
base; embeddings and lm_head add 1.05 GB + 0.52 GB. Every contender runs in a fresh subprocess that
reports its wall time (after imports) and its peak RSS (VmHWM):

- ``read inputs``: every input file read once, sequentially;
- ``I/O floor``: every input file read once, then as many bytes as llmkit's output written to one file
  and fsynced: the least any recovery must do (read the inputs, write the output with fsync);
  read, floor and llmkit alternate ``--repeat`` times (default 3) and the median time is reported;
- ``llmkit``: ``llmkit.recover.recover`` (fp32, safetensors output, fsynced) at two or three layer
  counts, to show that the peak RSS does not grow with the model;
- ``--compare-root DIR``: the same llmkit run from another checkout (e.g. before a refactor:
  ``git worktree add /tmp/before <rev>``), alternating with this one, for before/after numbers;
- ``upstream``: KnowLM ``tools/weight_diff.py recover`` as published: both models loaded with
  ``AutoModelForCausalLM.from_pretrained(dtype=float32)``, state dicts added in place, the naive sum,
  ``save_pretrained`` (transformers 5, not fsynced; that favours upstream).

Before each run the inputs are dropped from the page cache (``posix_fadvise(DONTNEED)`` after an
fsync; no root needed), so every contender reads from disk. The script checks that llmkit's output
equals upstream's, tensor by tensor. Keep the upstream layer count small: it holds two fp32 models
(~2.7 GB per model at 2 layers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from io_floor import drop_cache, measure_floor

HIDDEN, INTERMEDIATE, VOCAB, HEADS = 4096, 11008, 32000, 32
ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

PRELUDE = r"""
import json, sys, time
from pathlib import Path

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

def report(start):
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": peak()}))
"""

LLMKIT = (
    PRELUDE
    + r"""
from llmkit.recover import recover
base, diff, out = sys.argv[1:4]
start = time.perf_counter()
recover(base, diff, out)
report(start)
"""
)

# KnowLM tools/weight_diff.py recover(), is_fp16=False, with transformers 5's spelling of torch_dtype.
UPSTREAM = (
    PRELUDE
    + r"""
import torch, transformers
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
base, diff, out = sys.argv[1:4]
start = time.perf_counter()
with torch.inference_mode():
    tokenizer = transformers.LlamaTokenizer.from_pretrained(diff)
    model_raw = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, low_cpu_mem_usage=True)
    model_recovered = transformers.AutoModelForCausalLM.from_pretrained(diff, dtype=torch.float32,
                                                                        low_cpu_mem_usage=True)
    sd_recovered = model_recovered.state_dict()
    sd_raw = model_raw.state_dict()
    for key in sd_recovered:
        sd_recovered[key].add_(sd_raw[key])
    allsum = sum(sd_recovered[key].sum() for key in sd_recovered)
    model_recovered.save_pretrained(out)
    tokenizer.save_pretrained(out)
report(start)
"""
)


def _shapes(layers: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Tensor names and shapes grouped by shard: embeddings, one shard per layer, norm + lm_head."""
    groups = [[("model.embed_tokens.weight", (VOCAB, HIDDEN))]]
    for i in range(layers):
        p = f"model.layers.{i}."
        g = [(p + f"self_attn.{n}_proj.weight", (HIDDEN, HIDDEN)) for n in ("q", "k", "v", "o")]
        g += [
            (p + "mlp.gate_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "mlp.down_proj.weight", (HIDDEN, INTERMEDIATE)),
            (p + "mlp.up_proj.weight", (INTERMEDIATE, HIDDEN)),
            (p + "input_layernorm.weight", (HIDDEN,)),
            (p + "post_attention_layernorm.weight", (HIDDEN,)),
        ]
        groups.append(g)
    groups.append([("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))])
    return groups


def generate(work: Path, max_layers: int) -> Path:
    """Write shard files once (per-shard generation: peak ~1 GB), then per-size folders of hard links."""
    import torch

    pool = work / "pool"
    if (pool / "done").exists():
        return pool
    pool.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i, group in enumerate(_shapes(max_layers)):
        base = {n: (torch.randn(s, generator=g) * 0.02).half() for n, s in group}
        torch.save(base, pool / f"base-{i}.bin")
        del base
        diff = {n: torch.randn(s, generator=g) * 0.001 for n, s in group}
        torch.save(diff, pool / f"diff-{i}.bin")
        del diff
        print(f"  generated shard {i + 1}/{max_layers + 2}", file=sys.stderr, flush=True)
    (pool / "done").write_text("")
    return pool


def model_folders(work: Path, pool: Path, layers: int, max_layers: int) -> tuple[Path, Path]:
    """base/diff folders for ``layers`` layers: hard links to the pool's shards, an index and a config."""
    from llmkit.tiny import tiny_config, write_tokenizer

    groups = _shapes(max_layers)
    picked = [0, *range(1, layers + 1), len(groups) - 1]
    folders = []
    for kind, dtype in (("base", "float16"), ("diff", "float32")):
        folder = work / f"{kind}-{layers}l"
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        weight_map = {}
        for j, i in enumerate(picked, 1):
            name = f"pytorch_model-{j:05d}-of-{len(picked):05d}.bin"
            os.link(pool / f"{kind}-{i}.bin", folder / name)
            weight_map.update({n: name for n, _ in groups[i]})
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        cfg = tiny_config(VOCAB, layers=layers, hidden=HIDDEN, heads=HEADS, intermediate=INTERMEDIATE)
        cfg.save_pretrained(folder)
        data = json.loads((folder / "config.json").read_text())
        data["dtype"] = dtype
        (folder / "config.json").write_text(json.dumps(data, indent=2))
        write_tokenizer(folder)
        folders.append(folder)
    return folders[0], folders[1]


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".bin", ".safetensors"))


def run(script: str, *args: str | Path, root: Path = ROOT) -> dict:
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    r = subprocess.run([PYTHON, "-c", script, *map(str, args)], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def same_tensors(a: Path, b: Path) -> tuple[bool, str]:
    from llmkit.verify import compare_sources

    cmp = compare_sources(a, b)
    return (
        cmp.identical,
        f"{cmp.compared} compared, {len(cmp.differing)} differing "
        f"({', '.join(f'{k}: {v}' for k, v in list(cmp.reasons.items())[:2])})",
    )


def median_run(runs: list[dict]) -> dict:
    """Median wall time and the largest peak RSS of repeated runs."""
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_rss": max(r["peak_rss"] for r in runs),
        "all_seconds": [round(r["seconds"], 2) for r in runs],
    }


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=None, help="where to generate (default: a temp folder)")
    ap.add_argument("--llmkit-layers", default="1,3", help="layer counts for llmkit (comma-separated)")
    ap.add_argument(
        "--upstream-layers", type=int, default=2, help="layer count for both contenders head to head (0 skips upstream)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="runs of read and llmkit per size (median reported)")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument(
        "--compare-root",
        type=Path,
        default=None,
        help="another llmkit checkout to time the same way (before/after a change)",
    )
    args = ap.parse_args()
    llmkit_layers = sorted(
        {int(x) for x in args.llmkit_layers.split(",")} | ({args.upstream_layers} if args.upstream_layers else set())
    )
    max_layers = max(llmkit_layers)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="llmkit-bench-recover-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"generating LLaMA-7B-shaped shards for up to {max_layers} layers in {work}", file=sys.stderr)
        pool = generate(work, max_layers)
        rows = []
        for layers in llmkit_layers:
            base, diff = model_folders(work, pool, layers, max_layers)
            inputs = weight_files(base) + weight_files(diff)
            in_bytes = sum(p.stat().st_size for p in inputs)
            out = work / f"llmkit-{layers}l"
            reads, floors, mines, others = [], [], [], []
            out_bytes = 0
            for _ in range(args.repeat):  # alternate, so all see the same background load
                reads.append(measure_floor(inputs, 0, work / "floor.out"))
                if args.compare_root is not None:
                    shutil.rmtree(out, ignore_errors=True)
                    drop_cache(inputs)
                    others.append(run(LLMKIT, base, diff, out, root=args.compare_root))
                shutil.rmtree(out, ignore_errors=True)
                drop_cache(inputs)
                mines.append(run(LLMKIT, base, diff, out))
                out_bytes = sum(p.stat().st_size for p in weight_files(out))
                floors.append(measure_floor(inputs, out_bytes, work / "floor.out"))
            read, mine = median_run(reads), median_run(mines)
            row = {
                "layers": layers,
                "input_bytes": in_bytes,
                "output_bytes": out_bytes,
                "read": read,
                "llmkit": mine,
                "floor": median_run(floors),
            }
            if others:
                row["compare"] = median_run(others)
            if layers == args.upstream_layers:
                up_out = work / f"upstream-{layers}l"
                drop_cache(inputs)
                row["upstream"] = run(UPSTREAM, base, diff, up_out)
                row["identical"], row["comparison"] = same_tensors(out, up_out)
                shutil.rmtree(up_out)
            shutil.rmtree(out)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nLLaMA-7B layer shapes (hidden {HIDDEN}, intermediate {INTERMEDIATE}, vocab {VOCAB}); fp16 base + "
        "fp32 diff (.bin shards) -> fp32 safetensors; inputs evicted from the page cache before each run\n"
    )
    print(
        f"{'layers':>6} {'inputs':>9} {'read s':>7} {'llmkit s':>9} {'ratio':>6} {'llmkit RSS':>11} "
        f"{'upstream s':>11} {'upstream RSS':>13}  same output"
    )
    for r in rows:
        up = r.get("upstream")
        ratio = r["llmkit"]["seconds"] / r["read"]["seconds"]
        print(
            f"{r['layers']:>6} {gb(r['input_bytes']):>9} {r['read']['seconds']:>7.2f} {r['llmkit']['seconds']:>9.2f} "
            f"{ratio:>6.2f} {gb(r['llmkit']['peak_rss']):>11} "
            + (
                f"{up['seconds']:>11.2f} {gb(up['peak_rss']):>13}  {r['identical']} ({r['comparison']})"
                if up
                else f"{'-':>11} {'-':>13}  -"
            )
        )
    for r in rows:
        print(
            f"  {r['layers']} layer(s): read runs {r['read']['all_seconds']} s, "
            f"llmkit runs {r['llmkit']['all_seconds']} s"
        )
    print("\nagainst the I/O floor (read the inputs, write the output bytes, fsync), medians:")
    for r in rows:
        line = (
            f"  {r['layers']} layer(s): floor {r['floor']['seconds']:.2f} s, llmkit {r['llmkit']['seconds']:.2f} s "
            f"= {r['llmkit']['seconds'] / r['floor']['seconds']:.2f}x floor, RSS {gb(r['llmkit']['peak_rss'])}"
        )
        if "compare" in r:
            c = r["compare"]
            line += (
                f"; --compare-root {c['seconds']:.2f} s = {c['seconds'] / r['floor']['seconds']:.2f}x floor, "
                f"RSS {gb(c['peak_rss'])}"
            )
        print(line)
    if len(rows) > 1:
        lo, hi = rows[0], rows[-1]
        print(
            f"\nllmkit peak RSS {gb(lo['llmkit']['peak_rss'])} at {lo['layers']} layer(s), "
            f"{gb(hi['llmkit']['peak_rss'])} at {hi['layers']} (inputs {gb(lo['input_bytes'])} -> "
            f"{gb(hi['input_bytes'])}); largest tensor (fp32 embedding) {gb(VOCAB * HIDDEN * 4)}"
        )


if __name__ == "__main__":
    main()
