"""``llmkit recipe run --ray``: what a recipe checks and says before its first step when it runs on Ray.

The steps themselves run under :func:`llmkit.cluster.on_ray` with ``local_fallback`` (the CLI sets it): a
tensor step (or fused chain) Ray splits runs as Ray tasks, any other step in this process.
"""

from __future__ import annotations

from llmkit.cluster import current_address
from llmkit.errors import InputError
from llmkit.pipeline import Notice


def checked_for_ray(inputs: dict[str, str], *, dry_run: bool) -> bool:
    """Whether the recipe runs on Ray; if so, before anything is listed or downloaded: the cluster is
    reached (a run: none answering is one error line now) and ``--input NAME=URL`` (a stream) is refused."""
    address = current_address()
    if address is None:
        return False
    if not dry_run:
        from llmkit.cluster.driver import connect

        connect(address)
    if inputs:
        raise InputError(
            f"--input {next(iter(inputs))}=URL streams that input, and --ray tasks read theirs from a "
            "filesystem every node shares",
            hint="drop --input (the recipe downloads it into the work folder) or --ray",
        )
    return True


def ray_notices() -> list[Notice]:
    """What runs where, and the cluster's CPUs (a dry run without a cluster: why they are unknown)."""
    from llmkit.cluster import driver

    address = current_address()
    assert address is not None
    cpus, nodes, why = driver.cluster_cpus(address)
    at = f"{int(cpus)} CPUs on {nodes} node(s)" if cpus is not None else f"unknown ({why})"
    return [
        Notice.info(
            f"ray: tensor steps run as Ray tasks on {address} ({at}); downloads, checks and the steps Ray "
            "does not split run in this process"
        )
    ]
