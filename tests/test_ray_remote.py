"""``--ray`` with remote inputs: every task reads the tensors it writes from the hub by ranged requests, and
each remote weight file is read whole once more, by a check task, against the sha256 the hub published.

The hub is the project's fake hub on 127.0.0.1 (tests/hub_server.py) served from this test process; the Ray
cluster is the loopback head of tests/ray_cluster.py. The driver gets ``--endpoint`` and hands it to the
tasks (their processes do not see the driver's environment). Outputs are compared byte for byte with the
same command run without --ray (which streams the same URL front to back).
"""

# ruff: noqa: F811  (the fixtures imported from hub_server / ray_cluster are taken as test arguments)

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from common import only_error_line
from hub_server import FakeHub, hub  # noqa: F401 (hub: the fixture)
from ray_cluster import cluster, llmkit_cli, ray_env, ray_head, same_folder  # noqa: F401 (cluster: the fixture)
from s3_server import BUCKET, s3  # noqa: F401 (s3: the fixture)

from llmkit.errors import InputError
from llmkit.io.remote.ranged import check_listed, listed_as
from llmkit.io.remote.store import RemoteEntry
from llmkit.tiny import save_tiny_model

BASE, TUNED = "acme/tiny-base", "acme/tiny-tuned"
SHARD = "60KB"


@pytest.fixture
def published(hub: FakeHub, tmp_path: Path):
    """A tiny fp16 base (sharded safetensors) and a tuned model on the hub; the diff between them on disk."""
    from llmkit import recover as R
    from llmkit.recover import MakeDiffOptions

    base, tuned = tmp_path / "base", tmp_path / "tuned"
    save_tiny_model(base, "safetensors-sharded", dtype=torch.float16)
    save_tiny_model(tuned, "bin", seed=1, dtype=torch.float16)
    R.run(MakeDiffOptions(base, tuned, tmp_path / "diff", dtype="fp16"))
    for repo, folder in ((BASE, base), (TUNED, tuned)):
        hub.add_repo(repo, {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()})
    return hub, tmp_path


def _env(tmp_path: Path) -> dict[str, str]:
    return ray_env(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1")


def _both(args: list[object], out: Path, cluster: str, env: dict[str, str], *, file: bool = False) -> None:
    """``llmkit ARGS -o OUT-one`` and ``... -o OUT-ray --ray``: both succeed with the same bytes."""
    one, ray = Path(f"{out}-one{out.suffix}"), Path(f"{out}-ray{out.suffix}")
    r = llmkit_cli(*args, "-o", one, env=env)
    assert r.returncode == 0, r.stderr
    r = llmkit_cli(*args, "-o", ray, "--ray", cluster, env=env)
    assert r.returncode == 0, r.stderr
    if file:
        assert ray.read_bytes() == one.read_bytes()
    else:
        same_folder(one, ray)


@pytest.mark.slow
def test_recover_and_to_ckpt_from_the_hub_on_ray_are_byte_identical_and_every_file_is_checked(
    cluster, published, tmp_path
):
    hub, root = published
    env = _env(tmp_path)
    hub.clear_log()
    recover = ["recover", "--base", f"hf://{BASE}", "--diff", root / "diff", "--shard-size", SHARD, "-q"]
    _both([*recover, "--endpoint", hub.url], tmp_path / "recovered", cluster, env)
    # the one-process run streamed each base file once; the Ray run read ranges, then each file whole once
    asked = hub.bytes_asked()
    for name, f in hub.repos[BASE].files.items():
        if name.endswith(".safetensors"):
            assert asked[name] >= 3 * f.size - 2 * 64 * 1024, (name, asked[name], f.size)
    _both(["to-ckpt", f"hf://{TUNED}", "--endpoint", hub.url, "-q"], tmp_path / "m.ckpt", cluster, env, file=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no stage left behind


@pytest.mark.slow
def test_a_hub_file_corrupted_in_transit_fails_the_ray_run_and_keeps_nothing(cluster, published, tmp_path):
    hub, root = published
    shard = sorted(n for n in hub.repos[BASE].files if n.endswith(".safetensors"))[1]
    data = bytearray(hub.repos[BASE].files[shard].data)
    data[-5] ^= 0xFF  # a byte of tensor data, same length
    hub.corrupt_in_transit[shard] = bytes(data)
    args = ["recover", "--base", f"hf://{BASE}", "--diff", root / "diff", "-o", tmp_path / "out"]
    r = llmkit_cli(*args, "--endpoint", hub.url, "--ray", cluster, "-q", env=_env(tmp_path))
    assert r.returncode == 1, r.stderr
    line = only_error_line(r.stderr)
    assert shard in line and "sha256" in line and "nothing was kept" in line, line
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_a_task_that_lists_a_remote_file_otherwise_than_the_driver_fails():
    entry = RemoteEntry("model.safetensors", "k", 10, ("sha256", "a" * 64))
    url = "hf://acme/x"
    with listed_as({url: {"model.safetensors": (10, ("sha256", "a" * 64))}}):
        check_listed(url, {"model.safetensors": entry}, ["model.safetensors"])  # the same: nothing raised
    changed = RemoteEntry("model.safetensors", "k", 10, ("sha256", "b" * 64))
    with (
        listed_as({url: {"model.safetensors": (10, ("sha256", "a" * 64))}}),
        pytest.raises(InputError, match=r"hf://acme/x/model.safetensors changed while the job ran"),
    ):
        check_listed(url, {"model.safetensors": changed}, ["model.safetensors"])
    check_listed(url, {"model.safetensors": changed}, ["model.safetensors"])  # outside a task: no listing


@pytest.mark.slow
def test_recover_from_s3_on_ray_reads_with_each_nodes_own_credentials(s3, tmp_path):
    """The base in a bucket (moto's S3 server on 127.0.0.1): the head and its workers have the bucket's
    endpoint and key in their own environment, as cluster nodes are configured; byte-identical output."""
    from llmkit import recover as R
    from llmkit.recover import MakeDiffOptions

    base, tuned = tmp_path / "base", tmp_path / "tuned"
    save_tiny_model(base, "safetensors-sharded", dtype=torch.float16)
    save_tiny_model(tuned, "safetensors", seed=1, dtype=torch.float16)
    R.run(MakeDiffOptions(base, tuned, tmp_path / "diff", dtype="fp16"))
    s3.put_folder(base, "models/base")
    env = {k: v for k, v in s3.env.items() if not k.endswith("_PROXY")}
    with ray_head(**env) as address:
        args = ["recover", "--base", f"s3://{BUCKET}/models/base", "--diff", tmp_path / "diff", "-q"]
        _both([*args, "--shard-size", SHARD], tmp_path / "out", address, ray_env(**env))
