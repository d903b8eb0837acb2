"""Remote inputs streaming from the project's hub server on 127.0.0.1, beside ``download`` of the same files
followed by the job on the local copy: ``recover --diff hf://...`` and ``decrypt hf://...``.

    .venv/bin/python benchmarks/remote.py --layers 8 --workdir /tmp/bench-remote             # recover
    .venv/bin/python benchmarks/remote.py --case decrypt --enc-size 3GB --workdir /tmp/bench-remote

``recover``: generates a LLaMA-7B-shaped base and diff of ``--layers`` layers (fp16, 2 GB shards) and serves
the diff. ``decrypt``: encrypts a generated PyTorch zip of ``--enc-size`` bytes (TechGPT format, with a key
shorter than the file, so the key wraps) and serves the ``.enc``. Both serve from ``tests/hub_server.py`` (in
memory, in this process), then time, each in a fresh ``llmkit`` process: 1. ``llmkit download`` (verified),
2. the job on the downloaded copy, 3. the job on ``hf://...`` (no local copy). Each case prints one JSON
object: the seconds of each, the ratio ``streamed / (download + local)``, the served bytes and the bytes the
server was asked for by the streamed run (from its request log), and whether both outputs are the same
bytes. Takes the benchmark lock (``/tmp/llmkit-bench.lock``) for the whole run.
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
ENC_REPO = "bench/techgpt-enc"


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


def hub_env(hub: FakeHub, work: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1")
    env.update(HF_HOME=str(work / "hf-home"), NO_PROXY="127.0.0.1")
    for out in ("dl", "out-local", "out-remote"):
        shutil.rmtree(work / out, ignore_errors=True)
    return env


def recover_case(work: Path, layers: int) -> dict:
    """``recover --diff hf://`` beside ``download`` + ``recover``."""
    base, diff = work / "base", work / "diff"
    full_depth.generate("base", base, layers, base)
    full_depth.generate("diff", diff, layers, base)
    files = {p.name: p.read_bytes() for p in sorted(diff.iterdir())}
    with FakeHub() as hub:
        hub.add_repo(REPO, files)
        env = hub_env(hub, work)
        t_download = llmkit("download", REPO, "-o", work / "dl", env=env)
        t_local = llmkit("recover", "--base", base, "--diff", work / "dl", "-o", work / "out-local", env=env)
        hub.clear_log()
        t_remote = llmkit("recover", "--base", base, "--diff", f"hf://{REPO}", "-o", work / "out-remote", env=env)
        fetched = sum(hub.bytes_asked().values())
    return {
        "case": "recover",
        "layers": layers,
        "diff_bytes": sum(len(d) for d in files.values()),
        "download_s": round(t_download, 1),
        "recover_local_s": round(t_local, 1),
        "recover_streamed_s": round(t_remote, 1),
        "streamed_over_download_plus_recover": round(t_remote / (t_download + t_local), 2),
        "fetched_bytes_streamed": fetched,
        "identical": digest(work / "out-local") == digest(work / "out-remote"),
    }


def decrypt_case(work: Path, size: int) -> dict:
    """``decrypt hf://`` beside ``download`` + ``decrypt`` of a TechGPT ``.enc`` of ``size`` bytes."""
    import decrypt as decrypt_bench

    plain, enc, key = work / "plain" / "weights.bin", work / "enc", work / "key" / "consolidated.00.pth"
    for d in (plain.parent, enc, key.parent):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    decrypt_bench.generate_zip(plain, size, 1)
    decrypt_bench.generate(key, max(1, size - 5 * 2**20 + 12_345), 2)  # shorter than the data: the key wraps
    no_key = ("--key", key, "--no-key-check")
    llmkit("encrypt", plain, *no_key, "-o", enc, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    plain.unlink()
    files = {p.name: p.read_bytes() for p in sorted(enc.iterdir())}
    shutil.rmtree(enc)
    with FakeHub() as hub:
        hub.add_repo(ENC_REPO, files)
        env = hub_env(hub, work)
        t_download = llmkit("download", ENC_REPO, "-o", work / "dl", env=env)
        t_local = llmkit("decrypt", work / "dl", *no_key, "-o", work / "out-local", env=env)
        hub.clear_log()
        t_remote = llmkit("decrypt", f"hf://{ENC_REPO}", *no_key, "-o", work / "out-remote", env=env)
        fetched = sum(hub.bytes_asked().values())
    return {
        "case": "decrypt",
        "enc_bytes": sum(len(d) for d in files.values()),
        "download_s": round(t_download, 1),
        "decrypt_local_s": round(t_local, 1),
        "decrypt_streamed_s": round(t_remote, 1),
        "streamed_over_download_plus_decrypt": round(t_remote / (t_download + t_local), 2),
        "fetched_bytes_streamed": fetched,
        "identical": digest(work / "out-local") == digest(work / "out-remote"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=("recover", "decrypt", "all"), default="recover")
    ap.add_argument("--layers", type=int, default=8, help="recover: the model's depth")
    ap.add_argument("--enc-size", default="3GB", help="decrypt: the .enc file's size (default 3GB)")
    ap.add_argument("--workdir", type=Path, required=True)
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    with open("/tmp/llmkit-bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if args.case in ("recover", "all"):
            print(json.dumps(recover_case(work, args.layers), indent=2))
        if args.case in ("decrypt", "all"):
            import decrypt as decrypt_bench

            print(json.dumps(decrypt_case(work, decrypt_bench.parse_size(args.enc_size)), indent=2))


if __name__ == "__main__":
    main()
