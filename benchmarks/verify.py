"""Benchmark: ``llmkit verify`` (--jobs 1 and 2) against ``md5sum -c`` on the same generated files.

    flock /tmp/llmkit-bench.lock .venv/bin/python benchmarks/verify.py --files 4 --size 1GB

Random files are written once, their table is written by GNU ``md5sum`` itself (so llmkit checks
md5sum's table), the page cache is warmed by one untimed pass, then each tool runs ``--repeat`` times
and the best wall time is kept. ``llmkit`` is timed end to end as a subprocess (including its ~1 s
start-up: Python + torch import) and, separately, in-process (the hashing alone).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LLMKIT = REPO / ".venv" / "bin" / "llmkit"
sys.path.insert(0, str(REPO))


def parse_size(text: str) -> int:
    from llmkit.units import parse_size as ps

    return ps(text)


def make_files(folder: Path, n: int, size: int) -> list[Path]:
    import numpy as np

    rng = np.random.default_rng(0)
    chunk = 64 * 1024 * 1024
    files = []
    for i in range(n):
        p = folder / f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
        with open(p, "wb") as f:
            left = size
            while left:
                k = min(chunk, left)
                f.write(rng.bytes(k))
                left -= k
        files.append(p)
    return files


def best_of(cmd: list[str], cwd: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if run.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({run.returncode}): {run.stdout[-500:]} {run.stderr[-500:]}")
    return min(times)


def best_in_process(folder: Path, table: Path, jobs: int, repeat: int) -> float:
    from llmkit.verify import VerifyOptions, verify_files

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        report = verify_files(VerifyOptions((folder,), table=table, jobs=jobs))
        times.append(time.perf_counter() - t0)
        assert report.ok
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--size", default="1GB", help="bytes per file (e.g. 512MB, 1GB)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary folder)")
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    ap.add_argument("--buffers", default="", help="also time hash_file with these buffer sizes, e.g. 1MB,8MB")
    args = ap.parse_args()
    if shutil.which("md5sum") is None:
        raise SystemExit("GNU md5sum is required for the comparison")
    size = parse_size(args.size)
    work = args.dir or Path(tempfile.mkdtemp(prefix="llmkit-bench-verify-"))
    work.mkdir(parents=True, exist_ok=True)
    total = size * args.files
    if shutil.disk_usage(work).free < total * 1.2:
        raise SystemExit(f"not enough free space in {work} for {total:,} bytes")
    try:
        folder = work / "model"
        folder.mkdir(exist_ok=True)
        files = make_files(folder, args.files, size)
        table = work / "table.md5"
        table.write_text(
            subprocess.run(
                ["md5sum", *[f.name for f in files]], cwd=folder, capture_output=True, text=True, check=True
            ).stdout
        )
        subprocess.run(["md5sum", "-c", "--quiet", str(table)], cwd=folder, check=True)  # warm the page cache
        results = {
            "md5sum -c": best_of(["md5sum", "-c", "--quiet", str(table)], folder, args.repeat),
            "llmkit verify --jobs 1": best_of(
                [str(LLMKIT), "verify", ".", "--table", str(table), "--jobs", "1", "-q"], folder, args.repeat
            ),
            "llmkit verify --jobs 2": best_of(
                [str(LLMKIT), "verify", ".", "--table", str(table), "--jobs", "2", "-q"], folder, args.repeat
            ),
            "in-process run_verify jobs=1": best_in_process(folder, table, 1, args.repeat),
            "in-process run_verify jobs=2": best_in_process(folder, table, 2, args.repeat),
        }
        if args.buffers:
            import llmkit.hashing as h  # hash_file reads its buffer size from there

            default = h.BUFFER_BYTES
            for b in args.buffers.split(","):
                h.BUFFER_BYTES = parse_size(b)
                results[f"in-process jobs=1, buffer {b}"] = best_in_process(folder, table, 1, args.repeat)
            h.BUFFER_BYTES = default
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import llmkit.cli"], check=True)
        results["llmkit start-up (import llmkit.cli)"] = time.perf_counter() - t0
        if args.json:
            print(json.dumps({"files": args.files, "bytes_per_file": size, "seconds": results}, indent=2))
        else:
            print(f"{args.files} files x {size:,} bytes = {total / 1e9:.2f} GB, page cache warm, best of {args.repeat}")
            for name, sec in results.items():
                rate = f"{total / sec / 1e6:8.0f} MB/s" if "start-up" not in name else ""
                print(f"  {name:<38} {sec:7.2f} s  {rate}")
            print(f"  cpus: {os.cpu_count()}")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
