"""Benchmark ``llmkit from-meta`` against the I/O floor, on LLaMA-7B-shaped layers in 2 Meta shards.

    flock /tmp/llmkit-bench.lock .venv/bin/python benchmarks/meta_convert.py --layers 2,6

Generates fp16 ``consolidated.00.pth`` / ``.01.pth`` (hidden 4096, intermediate 11008, vocab 32000,
32 heads; every parallel weight split over the 2 shards as Meta's 13B is) for each layer count, then
alternates, ``--repeat`` times, with the inputs evicted from the page cache before each run:

- ``floor`` (``io_floor.py``): read both shards, write as many bytes as the output, fsync;
- ``llmkit``: ``from_meta`` in a fresh process (joins, permutes wq/wk, writes fsynced safetensors).

Prints the medians, the ratio to the floor and the peak RSS (VmHWM) per layer count: flat in depth.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from io_floor import drop_cache, measure_floor

HIDDEN, INTERMEDIATE, VOCAB, HEADS = 4096, 11008, 32000, 32
ROOT = Path(__file__).resolve().parent.parent

GENERATE = f"""
import sys
from pathlib import Path
from llmkit.tiny import write_random_meta
write_random_meta(Path(sys.argv[1]), layers=int(sys.argv[2]), hidden={HIDDEN}, intermediate={INTERMEDIATE}, vocab={VOCAB}, heads={HEADS},
                  seed=int(sys.argv[2]))
"""

RUN = r"""
import json, sys, time
from pathlib import Path
from llmkit.convert import FromMetaOptions, from_meta
start = time.perf_counter()
from_meta(FromMetaOptions(Path(sys.argv[1]), Path(sys.argv[2])))
seconds = time.perf_counter() - start
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_rss": peak}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="2,6", help="layer counts (comma-separated)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-meta-", dir=args.workdir))
    try:
        for layers in sorted(int(x) for x in args.layers.split(",")):
            meta = work / f"meta-{layers}l"
            subprocess.run([sys.executable, "-c", GENERATE, str(meta), str(layers)], check=True)
            inputs = sorted(meta.glob("consolidated.*.pth"))
            floors, runs = [], []
            for _ in range(args.repeat):
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                drop_cache(inputs)
                r = subprocess.run(
                    [sys.executable, "-c", RUN, str(meta), str(out)],
                    capture_output=True,
                    text=True,
                    check=True,
                    env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                )
                runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
                out_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
                floors.append(measure_floor(inputs, out_bytes, work / "floor.out"))
            floor = statistics.median(f["seconds"] for f in floors)
            mine = statistics.median(r["seconds"] for r in runs)
            size = sum(p.stat().st_size for p in inputs) / 1e9
            print(
                f"{layers} layer(s): inputs {size:.2f} GB; floor {floor:.2f} s; "
                f"from-meta {mine:.2f} s = {mine / floor:.2f}x floor; peak RSS "
                f"{max(r['peak_rss'] for r in runs) / 1e9:.2f} GB; runs {[round(r['seconds'], 2) for r in runs]}",
                flush=True,
            )
            shutil.rmtree(meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
