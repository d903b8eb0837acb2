"""Benchmark ``llmkit to-ckpt`` against the I/O floor and MindFormers' convert_weight.py approach.

    flock /tmp/llmkit-bench.lock .venv/bin/python benchmarks/to_ckpt.py --layers 2,6

Generates, for each layer count, an fp16 Hugging Face LLaMA folder with LLaMA-7B layer shapes (hidden
4096, intermediate 11008, vocab 32000, 32 heads): safetensors shards of at most 1 GiB with an index, in
``LlamaForCausalLM.state_dict()`` order, written one tensor at a time by llmkit's own writer, plus
config.json. Then alternates, ``--repeat`` times, with the inputs evicted from the page cache before
each run (every contender in a fresh process, wall time after imports, peak RSS from VmHWM):

- ``floor`` (``io_floor.py``): read every shard, write as many bytes as the output, fsync;
- ``llmkit``: ``to_ckpt`` (fp16 kept, MindFormers names, one fsynced ``.ckpt``), streaming;
- ``upstream``: as MindFormers' llama ``convert_weight.py``: ``LlamaForCausalLM.from_pretrained`` in
  fp32, the whole state dict renamed (names from ``llmkit.io.mindformers``), a list of fp16
  ``mindspore.Tensor`` built and ``mindspore.save_checkpoint`` called (not fsynced; that favours
  upstream; its file is fsynced and evicted after the clock stops). Skipped with a note when
  mindspore cannot be imported. Once per layer count its file is compared byte for byte with llmkit's.

Prints medians, llmkit/floor and the peak RSS per layer count: llmkit's is flat in depth, upstream's
grows with it. ``--json`` prints the rows as JSON instead of the table.
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
SHARD_SIZE = 1 << 30
ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20

GENERATE = r'''
import sys
from pathlib import Path
import torch
from llmkit.io.sinks import TensorSpec, open_sink
from llmkit.tiny import tiny_config
folder, layers, hidden, inter, vocab, heads, shard = Path(sys.argv[1]), *map(int, sys.argv[2:8])
specs = [("model.embed_tokens.weight", (vocab, hidden))]
for i in range(layers):  # LlamaForCausalLM.state_dict() order
    p = f"model.layers.{i}."
    specs += [(p + f"self_attn.{n}_proj.weight", (hidden, hidden)) for n in "qkvo"]
    specs += [(p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden)),
              (p + "mlp.down_proj.weight", (hidden, inter)), (p + "input_layernorm.weight", (hidden,)),
              (p + "post_attention_layernorm.weight", (hidden,))]
specs += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
g = torch.Generator().manual_seed(layers)
with open_sink("safetensors", folder, [TensorSpec(n, torch.float16, s) for n, s in specs], shard_size=shard) as w:
    for n, s in specs:
        w.write(n, (torch.randn(s, generator=g) * 0.02).half())
tiny_config(vocab, layers=layers, hidden=hidden, heads=heads, intermediate=inter,
            dtype=torch.float16).save_pretrained(folder)
print("{}")
'''

PRELUDE = r'''
import json, sys, time
from pathlib import Path

def report(start):
    peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": peak}))
'''

LLMKIT = PRELUDE + r'''
from llmkit.convert.ckpt import ToCkptOptions, to_ckpt
start = time.perf_counter()
to_ckpt(ToCkptOptions(Path(sys.argv[1]), Path(sys.argv[2])))
report(start)
'''

UPSTREAM = PRELUDE + r'''
try:
    import mindspore
except Exception as e:  # no wheel for this platform, or a broken install
    print(json.dumps({"skip": f"mindspore not importable: {e!r}"}))
    sys.exit(0)
import numpy, torch, transformers
from llmkit.io.mindformers import hf_to_mindformers
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
start = time.perf_counter()
with torch.inference_mode():
    model = transformers.LlamaForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
    ckpt = [{"name": hf_to_mindformers(n) or n, "data": mindspore.Tensor(t.numpy().astype(numpy.float16))}
            for n, t in model.state_dict().items()]
    mindspore.save_checkpoint(ckpt, sys.argv[2])
report(start)
'''


def run(script: str, *args: str | Path) -> dict:
    """Run ``script`` in a fresh interpreter; its last stdout line is a JSON report."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    r = subprocess.run([sys.executable, "-c", script, *map(str, args)], check=False, capture_output=True, text=True,
                       env=env)
    if r.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def generate(folder: Path, layers: int) -> list[Path]:
    """The HF folder for ``layers`` layers (reused when already there); returns its weight files."""
    if not (folder / "config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        run(GENERATE, folder, layers, HIDDEN, INTERMEDIATE, VOCAB, HEADS, SHARD_SIZE)
    return sorted(folder.glob("*.safetensors"))


def same_bytes(a: Path, b: Path) -> tuple[bool, str]:
    """(identical, what ``cmp`` says) for two files."""
    r = subprocess.run(["cmp", str(a), str(b)], check=False, capture_output=True, text=True)
    return r.returncode == 0, (r.stdout + r.stderr).strip() or f"{a.stat().st_size} bytes each"


def summary(runs: list[dict]) -> dict:
    """Median wall time and the largest peak RSS of repeated runs."""
    return {"seconds": statistics.median(r["seconds"] for r in runs), "peak_rss": max(r["peak_rss"] for r in runs),
            "all_seconds": [round(r["seconds"], 2) for r in runs]}


def bench(work: Path, models: Path, layers: int, repeat: int, upstream: bool) -> dict:
    """Alternate floor, llmkit and upstream ``repeat`` times on one generated model."""
    src = models / f"hf-{layers}l"
    inputs = generate(src, layers)
    out, up_out = work / "llmkit.ckpt", work / "upstream.ckpt"
    floors: list[dict] = []
    mines: list[dict] = []
    ups: list[dict] = []
    row: dict = {"layers": layers, "input_bytes": sum(p.stat().st_size for p in inputs)}
    for i in range(repeat):
        out.unlink(missing_ok=True)
        drop_cache(inputs)
        mines.append(run(LLMKIT, src, out))
        drop_cache([out])
        row["output_bytes"] = out.stat().st_size
        floors.append(measure_floor(inputs, row["output_bytes"], work / "floor.out"))
        if upstream:
            up_out.unlink(missing_ok=True)
            drop_cache(inputs)
            r = run(UPSTREAM, src, up_out)
            if "skip" in r:
                print(f"  upstream skipped: {r['skip']}", file=sys.stderr, flush=True)
                row["upstream_skipped"] = r["skip"]
                upstream = False
                continue
            ups.append(r)
            drop_cache([up_out])  # flush its dirty pages now, not during the next run
            if i == 0:
                row["identical"], row["cmp"] = same_bytes(out, up_out)
    out.unlink(missing_ok=True)
    up_out.unlink(missing_ok=True)
    row["floor"], row["llmkit"] = summary(floors), summary(mines)
    if ups:
        row["upstream"] = summary(ups)
    return row


def table(rows: list[dict]) -> None:
    """The human-readable report."""
    print(f"\nHF LLaMA-7B layer shapes (hidden {HIDDEN}, intermediate {INTERMEDIATE}, vocab {VOCAB}), fp16 "
          f"safetensors -> fp16 .ckpt with MindFormers names; inputs evicted before each run; medians\n")
    print(f"{'layers':>6} {'inputs GB':>9} {'floor s':>8} {'llmkit s':>9} {'/floor':>7} {'upstream s':>11} "
          f"{'llmkit RSS MiB':>15} {'upstream RSS MiB':>17}  identical bytes")
    for r in rows:
        up = r.get("upstream")
        ident = ("yes" if r["identical"] else "no") if "identical" in r else "-"
        print(f"{r['layers']:>6} {r['input_bytes'] / 1e9:>9.2f} {r['floor']['seconds']:>8.2f} "
              f"{r['llmkit']['seconds']:>9.2f} {r['llmkit']['seconds'] / r['floor']['seconds']:>6.2f}x "
              f"{up['seconds'] if up else float('nan'):>11.2f} {r['llmkit']['peak_rss'] / MIB:>15.0f} "
              f"{up['peak_rss'] / MIB if up else float('nan'):>17.0f}  {ident}")
    for r in rows:
        print(f"  {r['layers']} layer(s): floor runs {r['floor']['all_seconds']} s, llmkit runs "
              f"{r['llmkit']['all_seconds']} s" + (f", upstream runs {r['upstream']['all_seconds']} s"
                                                   if "upstream" in r else ""))
        if "identical" in r:
            print(f"    identical bytes: {'yes' if r['identical'] else 'no'} ({r['cmp']})")
        if "upstream_skipped" in r:
            print(f"    upstream skipped: {r['upstream_skipped']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="2,6", help="layer counts (comma-separated)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per contender and size (median reported)")
    ap.add_argument("--no-upstream", action="store_true", help="time llmkit and the floor only")
    ap.add_argument("--keep", type=Path, default=None, help="generate the models in DIR and keep them (reused)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the temp folder goes (default: $TMPDIR)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-ckpt-", dir=args.workdir))
    models = args.keep or work
    models.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    upstream = not args.no_upstream
    try:
        for layers in sorted({int(x) for x in args.layers.split(",")}):
            rows.append(bench(work, models, layers, args.repeat, upstream))
            upstream = upstream and "upstream_skipped" not in rows[-1]
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        table(rows)


if __name__ == "__main__":
    main()
