"""Benchmark llmkit jobs under ``--ray``: 1, 2 and 4 local Ray workers beside the one-process run (docs/scaling.md).

    flock /tmp/llmkit-bench.lock .venv/bin/python benchmarks/ray_scaling.py            # recover, 6 layers
    flock /tmp/llmkit-bench.lock .venv/bin/python benchmarks/ray_scaling.py --job to-ckpt --layers 4
    flock /tmp/llmkit-bench.lock .venv/bin/python benchmarks/ray_scaling.py --job to-gguf --layers 4
    .venv/bin/python benchmarks/ray_scaling.py --tiny --workers 1,2 [--job to-ckpt]      # a smoke run (seconds)

``--job recover`` (the default): ``recover.py``'s models (fp16 ``.bin`` base, fp32 ``.bin`` diff, LLaMA-7B
shapes), the output in ``--shard-size`` of about one layer (one task per output file). ``--job to-ckpt`` and
``--job to-gguf`` (``--outtype f16``): an fp16 Hugging Face safetensors folder of the same shapes (``recover.py``'s
tensor list, its seed and scale, llmkit's writer, 1 GiB shards, a config and a tokenizer) to ONE ``.ckpt`` /
``.gguf`` file, which ``--ray`` writes by byte ranges (two per cluster CPU, as llmkit splits it; the count is
read from ``--dry-run --ray``). ``--tiny``: hidden 64. For each worker count a Ray head is started on
127.0.0.1 only (``ray_head.py``: ``--num-cpus N``, no dashboard, no usage stats, its own temp folder,
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), the job runs as a subprocess with ``--ray 127.0.0.1:PORT``, and the head
is stopped. Inputs are dropped from the page cache before every run. Each output is compared byte for byte
with the one-process output. Printed: seconds, output MB/s, speed-up over one process and over one worker,
and the per-piece cost (seconds x workers / pieces), the number docs/scaling.md's model starts from. Every
scratch folder is removed at the end (``--work DIR``: kept).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import math
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import recover as rb
from io_floor import drop_cache
from ray_head import PYTHON, env, ray_head

ONE_FILE = {"to-ckpt": (".ckpt", []), "to-gguf": (".gguf", ["--outtype", "f16"])}  # suffix, extra options
SHARD_SIZE = 1 << 30  # the safetensors input's shards (bytes)


@dataclass
class Row:
    """One run: ``pieces`` is the Ray tasks' count (None: not split, the one-process run of a one-file job)."""

    name: str
    seconds: float
    same: str  # recover: True/False (as it always printed); one file: OK/DIFF
    pieces: int | None
    workers: int = 1


def llmkit(args: list[str], inputs: list[Path]) -> float:
    """Wall seconds of ``llmkit ARGS --force -q --json`` in a fresh process, ``inputs`` evicted first."""
    drop_cache(inputs)
    cmd = [PYTHON, "-m", "llmkit", *args, "--force", "-q", "--json"]
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{args[0]} failed: {r.stderr.strip()}")
    json.loads(r.stdout)
    return seconds


def ray_pieces(args: list[str], address: str) -> int:
    """The pieces ``--ray ADDRESS`` splits the job into, from ``--dry-run`` (its "ray: N piece(s)" notice)."""
    cmd = [PYTHON, "-m", "llmkit", *args, "--ray", address, "--dry-run", "--force", "-q", "--json"]
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{args[0]} --dry-run failed: {r.stderr.strip()}")
    for notice in json.loads(r.stdout)["notices"]:
        if m := re.match(r"ray: (\d+) piece\(s\)", notice["text"]):
            return int(m.group(1))
    raise SystemExit(f"{args[0]} --dry-run --ray named no pieces")


def same_bytes(a: Path, b: Path) -> bool:
    if a.is_file():
        return filecmp.cmp(a, b, shallow=False)
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


def hf_folder(work: Path, layers: int) -> Path:
    """An fp16 HF safetensors folder of ``recover.py``'s tensors (peak ~ one fp32 tensor); kept if complete."""
    import torch

    from llmkit.io.core.sink import open_sink
    from llmkit.io.core.spec import TensorSpec
    from llmkit.tiny import tiny_config, write_tokenizer

    folder, done = work / f"hf-{layers}l-h{rb.HIDDEN}", work / f"hf-{layers}l-h{rb.HIDDEN}.done"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    specs = [t for group in rb._shapes(layers) for t in group]
    g = torch.Generator().manual_seed(0)
    tensors = [TensorSpec(n, torch.float16, s) for n, s in specs]
    with open_sink("safetensors", folder, tensors, shard_size=SHARD_SIZE) as w:
        for n, s in specs:
            w.write(n, (torch.randn(s, generator=g) * 0.02).half())
    shapes = {"hidden": rb.HIDDEN, "heads": rb.HEADS, "intermediate": rb.INTERMEDIATE}
    tiny_config(rb.VOCAB, layers=layers, dtype=torch.float16, **shapes).save_pretrained(folder)
    write_tokenizer(folder)
    done.write_text("")
    return folder


def bench_recover(work: Path, layers: int, workers: list[int]) -> tuple[str, list[Row], int]:
    """recover: one task per output file (``--shard-size`` about one fp32 layer)."""
    pool = rb.generate(work, layers)
    base, diff = rb.model_folders(work, pool, layers, layers)
    inputs = rb.weight_files(base) + rb.weight_files(diff)
    shard = sum(4 * math.prod(shape) for _, shape in rb._shapes(1)[1]) + 1  # one fp32 layer per file

    def args(out: Path) -> list[str]:
        return ["recover", "--base", str(base), "--diff", str(diff), "-o", str(out), "--shard-size", str(shard)]

    one = llmkit(args(work / "out-one"), inputs)
    out_bytes = sum(p.stat().st_size for p in rb.weight_files(work / "out-one"))
    pieces = len(rb.weight_files(work / "out-one"))
    rows = [Row("one process", one, "True", pieces)]
    for n in workers:
        with ray_head(n) as address:
            s = llmkit([*args(work / f"out-{n}"), "--ray", address], inputs)
        rows.append(Row(f"{n} worker(s)", s, str(same_bytes(work / "out-one", work / f"out-{n}")), pieces, n))
    return f"recover, {layers} layers, {pieces} pieces, {out_bytes / 1e9:.2f} GB out", rows, out_bytes


def bench_one_file(job: str, work: Path, layers: int, workers: list[int]) -> tuple[str, list[Row], int]:
    """to-ckpt / to-gguf: one output file, written by byte ranges under ``--ray`` (each compared, then removed)."""
    source = hf_folder(work, layers)
    inputs = rb.weight_files(source)
    suffix, extra = ONE_FILE[job]

    def args(out: Path) -> list[str]:
        return [job, str(source), "-o", str(out), *extra]

    first = work / f"out-one{suffix}"
    rows = [Row("one process", llmkit(args(first), inputs), "OK", None)]
    for n in workers:
        out = work / f"out-{n}{suffix}"
        with ray_head(n) as address:
            pieces = ray_pieces(args(out), address)
            s = llmkit([*args(out), "--ray", address], inputs)
        rows.append(Row(f"{n} worker(s)", s, "OK" if same_bytes(first, out) else "DIFF", pieces, n))
        out.unlink()
    out_bytes = first.stat().st_size
    title = f"{job}, {layers} layers, one {suffix} of {out_bytes / 1e9:.2f} GB, byte ranges: 2 per worker CPU"
    return title, rows, out_bytes


def print_table(title: str, rows: list[Row], out_bytes: int) -> None:
    print(title)
    print(f"{'run':<14}{'seconds':>9}{'MB/s':>9}{'vs one':>8}{'vs 1 w':>8}{'s/piece':>9}  same bytes")
    one = rows[0].seconds
    w1 = next((r.seconds for r in rows if r.name.startswith("1 ")), None)
    for r in rows:
        vs1 = f"{w1 / r.seconds:.2f}x" if w1 else "-"
        per = f"{r.seconds * r.workers / r.pieces:>9.2f}" if r.pieces else f"{'-':>9}"
        speed = f"{out_bytes / r.seconds / 1e6:>9.1f}{one / r.seconds:>7.2f}x{vs1:>8}"
        print(f"{r.name:<14}{r.seconds:>9.2f}{speed}{per}  {r.same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", choices=["recover", *ONE_FILE], default="recover")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--tiny", action="store_true", help="hidden 64 (a smoke run)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder, removed)")
    args = ap.parse_args()
    if args.tiny:
        rb.HIDDEN, rb.INTERMEDIATE, rb.VOCAB, rb.HEADS = 64, 172, 320, 4
    workers = [int(x) for x in args.workers.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="llmkit-ray-bench-"))
    try:
        if args.job == "recover":
            print_table(*bench_recover(work, args.layers, workers))
        else:
            print_table(*bench_one_file(args.job, work, args.layers, workers))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
