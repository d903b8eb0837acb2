"""A real local Ray cluster on 127.0.0.1 only, and llmkit run against it as a user runs it (tests/test_ray*.py).

:func:`cluster` (module fixture) is ``ray start --head --block`` on 127.0.0.1 with a free port, its own temp
folder, no dashboard and no usage stats, in single-node mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the
environment of the head, its workers and every driver: Ray then keeps 127.0.0.1 instead of looking up the
machine's interface address); every node address Ray reports is checked to be 127.0.0.1, and the cluster is
stopped by terminating the process the fixture started. :func:`llmkit_cli` runs llmkit as a subprocess (the
driver); :func:`same_folder` compares two outputs byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import llmkit

ROOT = Path(llmkit.__file__).resolve().parents[1]  # the checkout under test: workers import llmkit from it
PY = sys.executable


def ray_env(**extra: str) -> dict[str, str]:
    """This environment without RAY_* and LLMKIT_DEBUG, in Ray's single-node mode, importing llmkit from ROOT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "LLMKIT_DEBUG"}
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_query(address: str, code: str, timeout: float = 120) -> object:
    """What ``code`` (run in a driver connected to ``address``, as ``ray``) prints as JSON on its last line."""
    script = f"import json, ray; ray.init(address={address!r}, log_to_driver=False, logging_level='ERROR')\n{code}"
    out = subprocess.run([PY, "-c", script], env=ray_env(), capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def node_addresses(address: str) -> list[str]:
    """The address of every node Ray reports in the cluster at ``address``."""
    found = ray_query(address, "print(json.dumps([n['NodeManagerAddress'] for n in ray.nodes()]))")
    assert isinstance(found, list)
    return found


def short_temp() -> Path:
    return Path(tempfile.mkdtemp(prefix="llmkit-ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes


@pytest.fixture(scope="module")
def cluster():
    """ADDRESS of a 2-CPU Ray head on 127.0.0.1 that this module starts and stops."""
    with ray_head() as address:
        yield address


@contextlib.contextmanager
def ray_head(**env: str) -> Iterator[str]:
    """A 2-CPU Ray head on 127.0.0.1 whose processes (the workers too) have ``env`` added to their
    environment (a node's own credentials); its ADDRESS, stopped at the end of the block."""
    port = free_port()
    temp = short_temp()
    head = [PY, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", "127.0.0.1"]
    head += ["--port", str(port), "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"]
    head += ["--temp-dir", str(temp)]
    scratch = temp / "tmp"  # the workers' TMPDIR: what a SIGKILLed worker leaves goes with the cluster
    scratch.mkdir()
    env = {"TMPDIR": str(scratch), **env}
    proc = subprocess.Popen(head, env=ray_env(**env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
                time.sleep(0.5)
        nodes = node_addresses(address)
        assert nodes and all(a == "127.0.0.1" for a in nodes), nodes
        yield address
    finally:
        proc.terminate()  # ray start --block stops the processes it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(temp, ignore_errors=True)


def llmkit_cli(*args: object, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [PY, "-m", "llmkit", *[str(a) for a in args]]
    return subprocess.run(cmd, env=env or ray_env(), capture_output=True, text=True, timeout=timeout, check=False)


def same_folder(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def one_and_ray(args: list[object], out: Path, address: str) -> tuple[Path, Path]:
    """Run ``args`` (``-o`` given as ``{}``) without --ray into ``out``-one and with ``--ray address`` into
    ``out``-ray; both must succeed. Returns the two output paths."""
    one, on_ray = out.with_name(out.name + "-one"), out.with_name(out.name + "-ray")
    r = llmkit_cli(*[str(a).format(one) for a in args])
    assert r.returncode == 0, r.stderr
    r = llmkit_cli(*[str(a).format(on_ray) for a in args], "--ray", address)
    assert r.returncode == 0, r.stderr
    return one, on_ray
