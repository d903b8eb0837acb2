"""Benchmark ``llmkit decrypt`` against ``cp`` and the upstream TechGPT/BELLE chunk loop.

    flock /tmp/llmkit-bench.lock .venv/bin/python benchmarks/decrypt.py --size 1GB

On a generated file (random bytes, TechGPT format) with a generated key slightly shorter than the
file (so the short last key read and the wrap to key offset 0 are on the timed path):

- ``cp``: the same file copied on the same disk, and ``cp`` + ``sync FILE``: llmkit fsyncs its output
  before the rename, so ``cp + sync`` is the like-for-like number (plain ``cp`` returns while up to
  ``vm.dirty_ratio`` of RAM is still waiting to reach the disk);
- ``llmkit``: the real CLI in a subprocess (wall time, including interpreter start-up), and the
  library call in-process (the decrypt itself); peak RSS of the CLI process;
- ``upstream``: a faithful re-implementation of TechGPT-1.0's ``utils/decrypt.py`` loop (whole file
  read into RAM, ``input_data = input_data[chunk_size:]`` re-slice per 10 MiB chunk, pure-Python
  ``xor_bytes``, sha256 of the output), in a subprocess. ``--upstream-max`` times it on a prefix
  and extrapolates (the re-slice is quadratic, so the extrapolation is a lower bound).

``--published`` benchmarks the path users take on TechGPT-1.0's files: the plaintext is a real zip
archive (stored, zip64, as torch writes) named ``pytorch_model.bin``, encrypted by ``llmkit encrypt``,
and a checksum table (``LLMKIT_CHECKSUMS``) publishes the md5 of both the ``.enc`` and the
plaintext, so every timed run hashes the output, checks the whole zip, and must report the output
md5 as verified against the table. ``--mismatch`` (with ``--published``) times the other path: the
table publishes other md5s for both files (a damaged download), the runs pass ``--no-table-check`` and
must report the ``.enc`` file's md5 as a mismatch (the md5 of the input is part of the timed work).
The ratio ``llmkit CLI / md5 alone`` is the CLI's wall time against the MD5 of the file on one core.

Outputs are compared: llmkit's output must equal the upstream loop's output (md5 by hashlib).
Files are read from the page cache after the first run (no root to drop caches): all three
contenders see the same warm cache. Prints a table and the ratios.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# The CLI as users run it: the project's own entry script, or (a checkout without its .venv) the interpreter's.
_SCRIPT = ROOT / ".venv" / "bin" / "llmkit"
LLMKIT = [str(_SCRIPT)] if _SCRIPT.exists() else [PYTHON, "-m", "llmkit"]
EMPTY = hashlib.sha256(b"").hexdigest()

# TechGPT-1.0 utils/decrypt.py, decrypt(): the same operations in the same order (SPEC.md 1).
UPSTREAM = r"""
import hashlib, os, sys

def xor_bytes(data, key):
    return bytes(a ^ b for a, b in zip(data, (key * (len(data) // len(key) + 1))[:len(data)]))

def write_result_chunk(fp, w_chunk_idx, pending, hasher):
    if not pending:
        return w_chunk_idx, pending
    pending.sort()
    for pending_idx, (chunk_idx, chunk) in enumerate(pending):
        if chunk_idx != w_chunk_idx:
            return w_chunk_idx, pending[pending_idx:]
        fp.write(chunk)
        hasher.update(chunk)
        w_chunk_idx += 1
    return w_chunk_idx, []

def decrypt(input_file, key_file, output_dir, limit):
    chunk_size = 10 * 1024 * 1024
    key_chunk_size = 10 * 1024 * 1024
    hasher = hashlib.sha256()
    input_file_basename = os.path.basename(input_file)
    checksum_hex = input_file_basename.split('.')[-2]
    with open(input_file, "rb") as in_file, open(key_file, "rb") as key_file:
        input_data = in_file.read(limit) if limit else in_file.read()
        output_file = os.path.join(output_dir, input_file_basename.split('.' + checksum_hex)[0])
        with open(output_file, "wb") as out_file:
            r_chunk_idx = 0
            w_chunk_idx = 0
            write_pending = []
            while True:
                chunk = input_data[:chunk_size]
                input_data = input_data[chunk_size:]
                if not chunk:
                    break
                key_chunk = key_file.read(key_chunk_size)
                if not key_chunk:
                    key_file.seek(0)
                    key_chunk = key_file.read(key_chunk_size)
                write_pending.append((r_chunk_idx, xor_bytes(chunk, key_chunk)))
                w_chunk_idx, write_pending = write_result_chunk(out_file, w_chunk_idx, write_pending, hasher)
                r_chunk_idx += 1
            write_result_chunk(out_file, w_chunk_idx, write_pending, hasher)

decrypt(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
"""


def parse_size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    for u in sorted(units, key=len, reverse=True):
        if t.endswith(u):
            return int(float(t[: -len(u)]) * units[u])
    return int(t)


def generate(path: Path, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 64 * 2**20)
            f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
            left -= n


def generate_zip(path: Path, size: int, seed: int) -> None:
    """A stored zip64 archive of about ``size`` bytes of random data (what torch.save writes, minus the pickle)."""
    import zipfile

    rng = np.random.default_rng(seed)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z,
        z.open("archive/data/0", "w", force_zip64=True) as f,
    ):
        left = max(0, size - 4096)
        while left:
            n = min(left, 64 * 2**20)
            f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
            left -= n


def timed(cmd: list[str], **kw) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one subprocess."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, **kw)
    _, status, usage = os.wait4(p.pid, 0)
    elapsed = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}")
    return elapsed, usage.ru_maxrss * 1024


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(8 * 2**20):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1GB", help="size of the encrypted file (default 1GB)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of cp and llmkit; the median is reported")
    ap.add_argument("--workdir", type=Path, default=None, help="folder on the disk to test (default: a temp folder)")
    ap.add_argument(
        "--upstream-max",
        default="0",
        help="time the upstream loop on at most this many bytes and extrapolate (0 = the whole file)",
    )
    ap.add_argument("--skip-upstream", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument(
        "--published",
        action="store_true",
        help="a zip named pytorch_model.bin whose md5s a checksum table publishes (verified each run)",
    )
    ap.add_argument(
        "--mismatch",
        action="store_true",
        help="with --published: the table publishes other md5s (runs pass --no-table-check)",
    )
    args = ap.parse_args()
    if args.mismatch and not args.published:
        ap.error("--mismatch needs --published")

    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-decrypt-", dir=args.workdir))
    try:
        plain_name = "pytorch_model.bin" if args.published else "weights.dat"
        # Inputs and the key each in a folder of their own: an output may not be or hold the key's folder.
        enc = work / "enc" / f"{plain_name}.{EMPTY}.enc"
        key = work / "key" / "consolidated.00.pth"
        enc.parent.mkdir()
        key.parent.mkdir()
        key_size = max(1, size - 5 * 2**20 + 12_345)  # shorter than the data: the wrap is on the timed path
        print(f"generating {size:,} bytes of data and a {key_size:,}-byte key in {work} ...", file=sys.stderr)
        generate(key, key_size, 2)
        env = dict(os.environ)
        if args.published:
            plain = work / "plain" / plain_name
            plain.parent.mkdir()
            generate_zip(plain, size, 1)
            subprocess.run(
                [
                    *LLMKIT,
                    "encrypt",
                    str(plain),
                    "--key",
                    str(key),
                    "-o",
                    str(enc.parent),
                    "--no-key-check",
                    "--force",
                    "-q",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            tables = work / "tables"
            tables.mkdir()
            plain_md5, enc_md5 = ("0" * 32, "1" * 32) if args.mismatch else (md5(plain), md5(enc))
            (tables / "bench.md5").write_text(f"{plain_md5}  ./{plain_name}\n")
            (tables / "bench.enc.md5").write_text(f"{enc_md5}  ./{enc.name}\n")
            env["LLMKIT_CHECKSUMS"] = str(tables)
            os.environ["LLMKIT_CHECKSUMS"] = str(tables)
            plain.unlink()
        else:
            generate(enc, size, 1)
        os.sync()  # start every contender with a clean page cache (no pending writeback of the inputs)
        out = {name: work / name for name in ("cp", "llmkit", "lib", "upstream")}
        for d in out.values():
            d.mkdir()

        cp_times, sync_times, cli_times, lib_times, rss = [], [], [], [], []
        startup = statistics.median(timed([*LLMKIT, "--version"], stdout=subprocess.DEVNULL)[0] for _ in range(3))
        sys.path.insert(0, str(ROOT))
        import llmkit.crypto as crypto

        for _ in range(args.repeat):
            # Every run starts from the same state: outputs removed, no writeback pending (os.sync).
            target = out["cp"] / plain_name
            os.sync()
            cp_times.append(timed(["cp", str(enc), str(target)])[0])
            target.unlink()
            os.sync()
            t0 = time.perf_counter()
            subprocess.run(["cp", str(enc), str(target)], check=True)
            subprocess.run(["sync", str(target)], check=True)
            sync_times.append(time.perf_counter() - t0)
            target.unlink()
            for d in (out["llmkit"], out["lib"]):
                (d / plain_name).unlink(missing_ok=True)
            os.sync()
            report = work / "report.json"
            with open(report, "w") as rep:
                secs, peak = timed(
                    [
                        *LLMKIT,
                        "decrypt",
                        str(enc),
                        "--key",
                        str(key),
                        "-o",
                        str(out["llmkit"]),
                        "--no-key-check",
                        "--force",
                        "--json",
                        *(["--no-table-check"] if args.mismatch else []),
                    ],
                    stdout=rep,
                    env=env,
                )
            checks = {c["name"]: c["status"] for c in json.loads(report.read_text())["files"][0]["checks"]}
            expected = {"input md5": "mismatch", "output md5": "mismatch"} if args.mismatch else {"output md5": "ok"}
            if args.published and any(checks.get(k) != v for k, v in expected.items()):
                raise SystemExit(f"the table checks are not the expected {expected}: {checks}")
            cli_times.append(secs)
            rss.append(peak)
            os.sync()
            t0 = time.perf_counter()
            crypto.decrypt([enc], key, out["lib"], key_check=False, force=True, table_check=not args.mismatch)
            lib_times.append(time.perf_counter() - t0)
        print(f"checks of the last CLI run: {checks}")

        md5_times = []  # the floor of a verified decrypt: MD5 is one sequential stream on one core
        for _ in range(2):
            t0 = time.perf_counter()
            md5(enc)
            md5_times.append(time.perf_counter() - t0)

        up_secs = None
        limit = parse_size(args.upstream_max)
        if not args.skip_upstream:
            print("running the upstream loop (pure Python; minutes per GB) ...", file=sys.stderr)
            up_secs, _up_rss = timed([PYTHON, "-c", UPSTREAM, str(enc), str(key), str(out["upstream"]), str(limit)])
            measured = min(limit, size) if limit else size
            if measured < size:
                up_secs *= size / measured
            else:
                same = md5(out["upstream"] / plain_name) == md5(out["llmkit"] / plain_name)
                print(f"llmkit output == upstream output: {same}")
                if not same:
                    raise SystemExit("llmkit and the upstream loop disagree")

        gb = size / 1e9
        print(f"\nfile {size:,} bytes, key {key_size:,} bytes, {args.repeat} runs, {os.cpu_count()} cores")
        print(f"{'contender':<38}{'median s':>9}{'best s':>8}{'GB/s':>7}   runs")
        rows = [
            ("cp", cp_times),
            ("cp + sync", sync_times),
            ("llmkit decrypt (CLI, wall)", cli_times),
            ("llmkit.crypto.decrypt (library)", lib_times),
            ("llmkit start-up (--version)", [startup]),
            ("md5 of the file (hashlib, warm cache)", md5_times),
        ]
        if up_secs is not None:
            rows.append(("upstream loop" + (" (extrapolated)" if limit and limit < size else ""), [up_secs]))
        for name, runs in rows:
            med, best = statistics.median(runs), min(runs)
            print(f"{name:<38}{med:>9.2f}{best:>8.2f}{gb / best:>7.2f}   {' '.join(f'{r:.2f}' for r in runs)}")
        print(f"\nllmkit CLI peak RSS: {max(rss) / 2**20:.0f} MiB")
        print("ratios (median / best of runs):")
        for label, a, b in [
            ("llmkit CLI / cp", cli_times, cp_times),
            ("llmkit CLI / (cp + sync)", cli_times, sync_times),
            ("llmkit library / cp", lib_times, cp_times),
            ("llmkit library / (cp + sync)", lib_times, sync_times),
            ("llmkit library / md5 alone", lib_times, md5_times),
            ("llmkit CLI / md5 alone", cli_times, md5_times),
        ]:
            print(f"  {label:<30}{statistics.median(a) / statistics.median(b):6.2f} / {min(a) / min(b):.2f}")
        if up_secs is not None:
            print(
                f"  {'upstream / llmkit CLI':<30}{up_secs / statistics.median(cli_times):6.1f} / "
                f"{up_secs / min(cli_times):.1f}"
            )
    finally:
        if args.keep:
            print(f"files kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
