"""The I/O floor a streaming job is measured against: read every input once, then write as many bytes
as the job's output to one file and fsync it (no compute at all). Used by recover.py and merge_lora.py.

Each measurement runs in a fresh subprocess, after the inputs were evicted from the page cache
(``drop_cache``: fsync, then ``posix_fadvise(DONTNEED)``; no root needed), like the job it is compared to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# argv: OUT SIZE INPUT...; SIZE 0 only reads. Prints {"seconds", "peak_rss"}. With FLOOR_WRITEBACK=1 in the
# environment the output is written back window by window as llmkit's writer does (llmkit.io.core.writeback).
FLOOR = r"""
import json, os, sys, time
from pathlib import Path
out, size = sys.argv[1], int(sys.argv[2])
buf = bytearray(16 << 20)
behind = None
start = time.perf_counter()
for p in sys.argv[3:]:
    with open(p, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass
if size:
    with open(out, "wb", buffering=0) as f:
        if os.environ.get("FLOOR_WRITEBACK") == "1":
            from llmkit.io.core.writeback import WriteBehind
            behind = WriteBehind(f.fileno())
        left = size
        while left:
            n = min(left, len(buf))
            f.write(memoryview(buf)[:n])
            left -= n
            if behind is not None:
                behind.wrote(size - left)
        os.fsync(f.fileno())
seconds = time.perf_counter() - start
if size:
    os.unlink(out)
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_rss": peak}))
"""


def drop_cache(paths: list[Path]) -> None:
    """Evict files from the page cache (clean pages only, so fsync first)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure_floor(inputs: list[Path], out_bytes: int, scratch: Path, writeback: bool = False) -> dict:
    """Seconds to read ``inputs`` (evicted first) and write ``out_bytes`` to ``scratch`` with fsync;
    ``writeback``: the output written back window by window, as llmkit writes (a lower floor on a disk
    whose kernel write-back comes in bursts)."""
    drop_cache(inputs)
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root, FLOOR_WRITEBACK="1" if writeback else "0")
    r = subprocess.run(
        [sys.executable, "-c", FLOOR, str(scratch), str(out_bytes), *map(str, inputs)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])
