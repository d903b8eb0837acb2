"""A Ray cluster of several nodes on this machine (``ray.cluster_utils.Cluster``), on 127.0.0.1 only.

``python ray_nodes_cluster.py TEMP_DIR NODES`` starts a head and NODES - 1 more nodes, each with 1 CPU and
an 80 MiB object store, node address 127.0.0.1, no dashboard, Ray's files under TEMP_DIR; prints
``{"address": "127.0.0.1:PORT"}`` once every node is registered, and shuts the cluster down when its stdin
closes (or on SIGTERM). Run it with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in its environment (Ray reads it
when imported): Ray then keeps 127.0.0.1 instead of looking up the machine's interface address, and every
process the nodes start (raylets, workers) inherits it; with RAY_TMPDIR=TEMP_DIR the address file Ray writes
for ``ray.init("auto")`` stays under TEMP_DIR too. Used by tests/test_ray_nodes.py.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from ray.cluster_utils import Cluster

NODE_ARGS = {
    "node_ip_address": "127.0.0.1",
    "num_cpus": 1,
    "object_store_memory": 80 * 2**20,  # Ray's minimum is 75 MiB
    "include_dashboard": False,
    "dashboard_host": "127.0.0.1",
}


def main(temp_dir: str, nodes: int) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the finally below shuts the cluster down
    (Path(temp_dir) / "ray").mkdir(exist_ok=True)  # where Ray writes its address file (RAY_TMPDIR/ray)
    cluster = Cluster(initialize_head=True, head_node_args={**NODE_ARGS, "temp_dir": temp_dir})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**NODE_ARGS, temp_dir=temp_dir)
        cluster.wait_for_nodes()
        print(json.dumps({"address": cluster.address}), flush=True)
        sys.stdin.read()  # until the test closes our stdin
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
