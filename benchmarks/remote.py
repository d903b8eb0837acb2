"""Remote inputs: ``recover --diff hf://...`` streaming from the project's hub server on 127.0.0.1, beside
``download`` of the same diff followed by ``recover`` of the local copy.

    .venv/bin/python benchmarks/remote.py --layers 8 --workdir /tmp/bench-remote

Generates a LLaMA-7B-shaped base and diff of ``--layers`` layers (fp16, 2 GB shards), serves the diff from
``tests/hub_server.py`` (in memory, in this process), then times, each in a fresh ``llmkit`` process:

1. ``llmkit download`` of the diff (verified), 2. ``llmkit recover`` of the downloaded copy, 3. ``llmkit
recover --diff hf://...`` (no local copy). It prints one JSON object: the seconds of each, the ratio
``streamed / (download + recover)``, the diff's bytes and the bytes the server was asked for by the
streamed run (from its request log), and whether both outputs are the same bytes. Takes the benchmark lock
(``/tmp/llmkit-bench.lock``) for the whole run.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "tests")]

import full_depth  # noqa: E402  (benchmarks/ on the path first)
from hub_server import FakeHub  # noqa: E402  (tests/ on the path first)

REPO = "bench/llama-7b-diff"


def llmkit(*args: str | Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "llmkit", *map(str, args), "--quiet"], env=env, capture_output=True, text=True
    )
    if r.returncode != 0:
        raise SystemExit(f"llmkit {args[0]} failed: {r.stderr.strip()[-1500:]}")
    return time.perf_counter() - start


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    with open("/tmp/llmkit-bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        base, diff = work / "base", work / "diff"
        full_depth.generate("base", base, args.layers, base)
        full_depth.generate("diff", diff, args.layers, base)
        files = {p.name: p.read_bytes() for p in sorted(diff.iterdir())}
        with FakeHub() as hub:
            hub.add_repo(REPO, files)
            env = dict(os.environ, PYTHONPATH=str(ROOT), HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1")
            env.update(HF_HOME=str(work / "hf-home"), NO_PROXY="127.0.0.1")
            for out in ("dl", "out-local", "out-remote"):
                shutil.rmtree(work / out, ignore_errors=True)
            t_download = llmkit("download", REPO, "-o", work / "dl", env=env)
            t_local = llmkit("recover", "--base", base, "--diff", work / "dl", "-o", work / "out-local", env=env)
            hub.clear_log()
            t_remote = llmkit("recover", "--base", base, "--diff", f"hf://{REPO}", "-o", work / "out-remote", env=env)
            fetched = sum(hub.bytes_asked().values())
        row = {
            "layers": args.layers,
            "diff_bytes": sum(len(d) for d in files.values()),
            "download_s": round(t_download, 1),
            "recover_local_s": round(t_local, 1),
            "recover_streamed_s": round(t_remote, 1),
            "streamed_over_download_plus_recover": round(t_remote / (t_download + t_local), 2),
            "fetched_bytes_streamed": fetched,
            "identical": digest(work / "out-local") == digest(work / "out-remote"),
        }
        print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
