"""``--ray`` on a cluster of several Ray nodes on this machine, on 127.0.0.1 only.

The cluster (module fixture) is Ray's ``cluster_utils.Cluster``: a head and 2 more nodes of 1 CPU each,
started by tests/ray_nodes_cluster.py in its own process (in Ray's single-node mode, so every node keeps
127.0.0.1; its temp folder and address file under a folder of its own) and shut down when the fixture closes
its stdin. Every node address Ray reports is checked to be 127.0.0.1. recover runs as a subprocess (the
driver) with and without --ray; the outputs are compared byte for byte, and Ray's own record of the tasks
(the task events the cluster's GCS keeps) must show the pieces ran on more than one node.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from common import tiny_state, tuned_state, write_hf
from ray_cluster import PY, node_addresses, one_and_ray, ray_env, ray_query, same_folder, short_temp

NODES = 3
NODES_SCRIPT = Path(__file__).with_name("ray_nodes_cluster.py")
START_SECONDS = 180

# Run in a driver connected to the cluster: for every task that ran write_piece_task, the node it ran on (from
# the task events Ray's GCS records; they arrive about once a second, so wait for all of them).
PIECE_NODES = """
import time
from ray._private.state import state

deadline = time.monotonic() + 60
while True:
    ran = {}
    for e in state._get_all_task_events():
        if "write_piece_task" in e.task_info.name + e.task_info.func_or_class_name and e.state_updates.node_id:
            ran[e.task_id.hex()] = e.state_updates.node_id.hex()
    if len(ran) >= PIECES or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps({"ran": ran, "nodes": {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}}))
"""


def _address_line(proc: subprocess.Popen, log: Path) -> str:
    """The cluster's address, from the JSON line the script prints once every node is registered."""
    assert proc.stdout is not None
    while True:
        ready, _, _ = select.select([proc.stdout], [], [], START_SECONDS)
        line = proc.stdout.readline() if ready else ""
        assert line, f"the Ray cluster did not start: {log.read_text()[-2000:]}"
        if line.startswith('{"address"'):
            return str(json.loads(line)["address"])


@pytest.fixture(scope="module")
def nodes_cluster():
    """ADDRESS of a Ray cluster of NODES nodes (1 CPU each) on 127.0.0.1 that this module starts and stops."""
    temp = short_temp()
    log = temp / "cluster.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [PY, str(NODES_SCRIPT), str(temp), str(NODES)],
            env=ray_env(RAY_TMPDIR=str(temp)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        address = _address_line(proc, log)
        nodes = node_addresses(address)
        assert len(nodes) == NODES and all(a == "127.0.0.1" for a in nodes), nodes
        yield address
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the script shuts the cluster down
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """base and diff (tuned - base in fp32: recover gives the tuned model back)."""
    root = tmp_path_factory.mktemp("raynodes")
    base = tiny_state(0)
    tuned = tuned_state(base)
    diff = {
        k: torch.from_numpy((tuned[k].double().numpy() - base[k].double().numpy()).astype(np.float32)) for k in tuned
    }
    return write_hf(root / "base", base), write_hf(root / "diff", diff)


@pytest.mark.slow
def test_recover_on_three_nodes_is_byte_identical_and_its_pieces_ran_on_several_nodes(nodes_cluster, models, tmp_path):
    base, diff = models
    args = ["recover", "--base", base, "--diff", diff, "-o", "{}", "--shard-size", "60KB", "-q"]
    one, on_ray = one_and_ray(args, tmp_path / "recover", nodes_cluster)
    same_folder(one, on_ray)
    pieces = len(list(on_ray.glob("model-*.safetensors")))
    assert pieces == 11  # the tiny model's 21 tensors in 60 KB files
    found = ray_query(nodes_cluster, PIECE_NODES.replace("PIECES", str(pieces)))
    assert isinstance(found, dict)
    ran, nodes = found["ran"], found["nodes"]
    assert len(nodes) == NODES and set(nodes.values()) == {"127.0.0.1"}, nodes
    assert len(ran) == pieces, ran  # one task per piece, each with the node it ran on
    assert set(ran.values()) <= set(nodes)
    assert len(set(ran.values())) > 1, ran
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no stage, no lock left behind
