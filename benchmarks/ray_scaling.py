"""Benchmark ``llmkit recover --ray``: 1, 2 and 4 local Ray workers beside the one-process run (docs/scaling.md).

    flock /tmp/llmkit-bench.lock .venv/bin/python benchmarks/ray_scaling.py            # 6 LLaMA-7B-shaped layers
    .venv/bin/python benchmarks/ray_scaling.py --tiny --workers 1,2                      # a smoke run (seconds)

The models are ``recover.py``'s (fp16 ``.bin`` base, fp32 ``.bin`` diff, LLaMA-7B shapes; ``--tiny``: hidden
64). For each worker count a Ray head is started on 127.0.0.1 only (``--num-cpus N``, no dashboard, no usage
stats, its own temp folder, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), the job runs as a subprocess with ``--ray
127.0.0.1:PORT`` and ``--shard-size`` of about one layer (one task per layer), and the head is stopped.
Inputs are dropped from the page cache before every run. Each output is compared byte for byte with the
one-process output. Printed: seconds, output MB/s, speed-up over one process and over one worker, and the
per-piece cost (seconds x workers / pieces), the number docs/scaling.md's model starts from.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import recover as rb
from io_floor import drop_cache

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    e.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_head(cpus: int, temp: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [PYTHON, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", "127.0.0.1"]
    cmd += ["--port", str(port), "--num-cpus", str(cpus), "--include-dashboard=false", "--disable-usage-stats"]
    proc = subprocess.Popen(
        [*cmd, "--temp-dir", str(temp)], env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the Ray head did not start") from None
            time.sleep(0.5)


def stop_head(proc: subprocess.Popen) -> None:
    proc.terminate()  # ray start --block stops what it started
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def timed_recover(base: Path, diff: Path, out: Path, shard: int, ray: str | None) -> float:
    drop_cache(rb.weight_files(base) + rb.weight_files(diff))
    cmd = [PYTHON, "-m", "llmkit", "recover", "--base", str(base), "--diff", str(diff), "-o", str(out)]
    cmd += ["--shard-size", str(shard), "--force", "-q", "--json"] + (["--ray", ray] if ray else [])
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"recover failed: {r.stderr.strip()}")
    json.loads(r.stdout)
    return seconds


def same_bytes(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--tiny", action="store_true", help="hidden 64 (a smoke run)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder, removed)")
    args = ap.parse_args()
    if args.tiny:
        rb.HIDDEN, rb.INTERMEDIATE, rb.VOCAB, rb.HEADS = 64, 172, 320, 4
    work = args.work or Path(tempfile.mkdtemp(prefix="llmkit-ray-bench-"))
    try:
        pool = rb.generate(work, args.layers)
        base, diff = rb.model_folders(work, pool, args.layers, args.layers)
        shard = sum(4 * math.prod(shape) for _, shape in rb._shapes(1)[1]) + 1  # one fp32 layer per file
        one = timed_recover(base, diff, work / "out-one", shard, None)
        out_bytes = sum(p.stat().st_size for p in rb.weight_files(work / "out-one"))
        pieces = len(rb.weight_files(work / "out-one"))
        rows = [("one process", one, True)]
        for n in [int(x) for x in args.workers.split(",")]:
            temp = Path(tempfile.mkdtemp(prefix="llmkit-ray-", dir="/tmp"))
            proc, address = start_head(n, temp)
            try:
                s = timed_recover(base, diff, work / f"out-{n}", shard, address)
            finally:
                stop_head(proc)
                shutil.rmtree(temp, ignore_errors=True)
            rows.append((f"{n} worker(s)", s, same_bytes(work / "out-one", work / f"out-{n}")))
        print(f"recover, {args.layers} layers, {pieces} pieces, {out_bytes / 1e9:.2f} GB out")
        print(f"{'run':<14}{'seconds':>9}{'MB/s':>9}{'vs one':>8}{'vs 1 w':>8}{'s/piece':>9}  same bytes")
        w1 = next((s for name, s, _ in rows if name.startswith("1 ")), None)
        for name, s, same in rows:
            n = int(name.split()[0]) if name[0].isdigit() else 1
            vs1 = f"{w1 / s:.2f}x" if w1 else "-"
            print(
                f"{name:<14}{s:>9.2f}{out_bytes / s / 1e6:>9.1f}{one / s:>7.2f}x{vs1:>8}{s * n / pieces:>9.2f}  {same}"
            )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
