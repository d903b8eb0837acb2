"""A local Ray head on 127.0.0.1 only, for ray_scaling.py: ``with ray_head(cpus) as address: ...``.

The head runs in Ray's single-node mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) with ``--num-cpus N``, no
dashboard, no usage stats and a temp folder of its own, which is removed with the head.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def env() -> dict[str, str]:
    """This process's environment without RAY_* settings, in single-node mode, with this checkout first."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    e.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_head(cpus: int, temp: Path) -> tuple[subprocess.Popen, str]:
    """A ``ray start --head --block`` process and its address, once its port answers (at most 120 s)."""
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
                stop_head(proc)
                raise SystemExit("the Ray head did not start") from None
            time.sleep(0.5)


def stop_head(proc: subprocess.Popen) -> None:
    proc.terminate()  # ray start --block stops what it started
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def ray_head(cpus: int) -> Iterator[str]:
    """The address of a head with ``cpus`` worker CPUs; stopped and its temp folder removed on exit."""
    temp = Path(tempfile.mkdtemp(prefix="llmkit-ray-", dir="/tmp"))
    try:
        proc, address = start_head(cpus, temp)
        try:
            yield address
        finally:
            stop_head(proc)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
