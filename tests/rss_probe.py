"""Peak-RSS measurement of a job in a fresh process, shared by the streaming-memory tests.

The generating script and the measuring script run in separate subprocesses, so building the
inputs never counts. The measuring script gets ``reset_peak()`` (clears the kernel's VmHWM via
/proc/self/clear_refs) and ``status(key)`` (bytes from /proc/self/status) prepended.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PRELUDE = textwrap.dedent("""
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
""")

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the RSS peak"
)


def peak_growth(generate: str, measure: str, folder: Path, *args: str) -> int:
    """Run ``generate folder *args``, then ``measure folder``; the latter prints ``{"growth": bytes}``."""
    subprocess.run([sys.executable, "-c", generate, str(folder), *args], check=True)
    r = subprocess.run(
        [sys.executable, "-c", PRELUDE + measure, str(folder)], capture_output=True, text=True, check=True
    )
    return json.loads(r.stdout.strip().splitlines()[-1])["growth"]
