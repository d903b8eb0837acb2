"""``--ray ADDRESS`` for a one-file GGUF (``to-gguf``, ``--format gguf``): byte ranges on a real local cluster.

The cluster is tests/ray_cluster.py's (a 2-CPU head on 127.0.0.1 only, every node address checked). llmkit
runs as a subprocess (the driver), with and without --ray, and the two .gguf files are compared byte for byte:
the one-process file is the reference (its bytes are held to llama.cpp's converter in tests/test_gguf_peers.py).
On the 2-CPU head the tensors are cut into 2 ranges per CPU: 4 ranges. The model holds the rotary tables
(``rotary_emb.inv_freq``) older LLaMA checkpoints carry: GGUF drops them, but a tap still counts them.
"""

# ruff: noqa: F811  (the cluster fixture, imported from ray_cluster, is taken as a test argument)

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from common import (
    TINY_HEADS,
    TINY_HIDDEN,
    one_error_line,
    only_error_line,
    tiny_state,
    tuned_state,
    write_hf,
    write_lora,
)
from ray_cluster import cluster, llmkit_cli  # noqa: F401 (cluster: the fixture)

RANGES = 2 * 2  # two ranges per CPU of the 2-CPU cluster
HEAD_DIM = TINY_HIDDEN // TINY_HEADS


def with_rotary_tables(state: dict[str, torch.Tensor], value: float | None = None) -> dict[str, torch.Tensor]:
    """``state`` with each layer's ``rotary_emb.inv_freq`` (transformers' formula, or all ``value``)."""
    out = dict(state)
    for n in range(2):
        inv = 1.0 / (10000 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))
        out[f"model.layers.{n}.self_attn.rotary_emb.inv_freq"] = inv if value is None else torch.full_like(inv, value)
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_hf(tmp_path_factory.mktemp("raygguf") / "tiny-llama", with_rotary_tables(tiny_state(0)))


def _gguf_args(model: Path, out: Path, *extra: object) -> list[object]:
    return ["to-gguf", model, "-o", out, "-q", *extra]


def _ranges_of(model: Path, out: Path, address: str, *extra: object) -> list[tuple[int, int]]:
    """The (start, end) byte ranges ``--dry-run --ray`` lists for the file."""
    r = llmkit_cli(*_gguf_args(model, out, *extra), "--dry-run", "--json", "--ray", address)
    assert r.returncode == 0, r.stderr
    line = next(n["text"] for n in json.loads(r.stdout)["notices"] if n["text"].startswith("ray:"))
    spans = [part.split(" ")[0] for part in line.split("bytes ")[1:]]
    return [(int(a), int(b)) for a, b in (s.split("-") for s in spans)]


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_to_gguf_on_ray_is_the_one_process_file(cluster, model, tmp_path, outtype):
    one, on_ray = tmp_path / "one.gguf", tmp_path / "ray.gguf"
    assert llmkit_cli(*_gguf_args(model, one, "--outtype", outtype)).returncode == 0
    ranges = _ranges_of(model, on_ray, cluster, "--outtype", outtype)
    assert len(ranges) == RANGES
    data = one.read_bytes()
    assert ranges[0][0] > 0 and ranges[0][0] % 32 == 0  # the header is the driver's, before range 0
    assert [a for a, _ in ranges[1:]] == [b for _, b in ranges[:-1]] and ranges[-1][1] == len(data)
    r = llmkit_cli(*_gguf_args(model, on_ray, "--outtype", outtype), "--ray", cluster)
    assert r.returncode == 0, r.stderr
    assert on_ray.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.gguf", "ray.gguf"]  # no stage, no ledger left


@pytest.mark.slow
def test_merge_lora_format_gguf_on_ray_is_the_one_process_file(cluster, model, tmp_path):
    """Any job that writes ``--format gguf`` takes the same byte-range path."""
    lora = write_lora(tmp_path / "lora")
    args = ["merge-lora", "--base", model, "--lora", lora, "--format", "gguf", "--outtype", "bf16", "-q"]
    one, on_ray = tmp_path / "one" / "m.gguf", tmp_path / "ray" / "m.gguf"  # the name is in the header
    assert llmkit_cli(*args, "-o", one).returncode == 0
    r = llmkit_cli(*args, "-o", on_ray, "--ray", cluster)
    assert r.returncode == 0, r.stderr
    assert on_ray.read_bytes() == one.read_bytes()
    assert [p.name for p in on_ray.parent.iterdir()] == ["m.gguf"]  # no stage, no ledger left


@pytest.mark.slow
def test_a_worker_killed_mid_range_is_retried_to_the_same_gguf(cluster, model, tmp_path):
    from test_ray import killed_range_gives_the_same_file

    killed_range_gives_the_same_file(
        tmp_path, cluster, lambda out: _gguf_args(model, out, "--outtype", "q8_0"), ".gguf"
    )


@pytest.mark.slow
def test_recover_check_sum_of_a_gguf_on_ray_counts_every_tensor(cluster, model, tmp_path):
    """The sum tap's parts come back from the ranges, the rotary tables GGUF drops included: the sum is the
    one-process sum of every output tensor (the tuned model's, and the tables recover adds a zero diff to)."""
    base = tiny_state(0)
    tuned = tuned_state(base)
    diff = {
        k: torch.from_numpy((tuned[k].double().numpy() - base[k].double().numpy()).astype(np.float32)) for k in tuned
    }
    diff_dir = write_hf(tmp_path / "diff", with_rotary_tables(diff, 0.0))
    outputs = with_rotary_tables(tuned)
    expected = f"sum of all output values is {sum(float(t.double().sum()) for t in outputs.values()):.4f},"
    args = ["recover", "--base", model, "--diff", diff_dir, "--format", "gguf", "--check-sum", "1e9", "-q"]
    for extra in ([], ["--ray", cluster]):
        r = llmkit_cli(*args, "-o", tmp_path / "r.gguf", *extra)
        assert r.returncode == 1
        assert expected in only_error_line(r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diff"]  # a failed tap keeps nothing


def test_a_split_gguf_on_ray_is_refused_in_one_line(run_cli, model, tmp_path):
    r = run_cli(*_gguf_args(model, tmp_path / "x", "--split-max-size", "1M"), "--ray", "127.0.0.1:1")
    assert r.exit_code == 2
    assert "a split GGUF (--split-max-size) is not split yet" in one_error_line(r)
    assert list(tmp_path.iterdir()) == []
