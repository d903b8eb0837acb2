"""``--ray ADDRESS``: a plan's output files written as Ray tasks on a real local cluster, on 127.0.0.1 only.

The cluster (module fixture, tests/ray_cluster.py) is ``ray start --head --block`` on 127.0.0.1 with a free
port, its own temp folder, no dashboard and no usage stats, in single-node mode
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 in the environment of the head, its workers and every driver); every node
address Ray reports is checked to be 127.0.0.1, and the cluster is stopped by terminating the process the
fixture started. llmkit runs as a subprocess (the driver), as a user runs it; the outputs are compared byte
for byte with the same command run without --ray. to-ckpt's one .ckpt is written by byte range (4 ranges on
the 2-CPU head), compared the same way, its --crc trailer against zlib's CRC-32 of the bytes before it.
"""

# ruff: noqa: F811  (the cluster fixture, imported from ray_cluster, is taken as a test argument)

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from common import one_error_line, only_error_line, tiny_state, tuned_state, write_hf, write_lora
from ray_cluster import PY, cluster, free_port, llmkit_cli, ray_env, same_folder  # noqa: F401 (cluster: the fixture)

from llmkit.cluster.crc import crc32_combine

SHARD = "60KB"  # the tiny model's 21 tensors in 11 files: 11 tasks
CKPT_RANGES = 2 * 2  # a .ckpt by byte range: two ranges per CPU of the 2-CPU cluster (21 tensors)
MERGE_TAIL = ("--shard-size", SHARD, "-q")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """base, diff (tuned - base in fp32: recover gives the tuned model back) and a LoRA adapter."""
    root = tmp_path_factory.mktemp("raymodels")
    base = tiny_state(0)
    tuned = tuned_state(base)
    diff = {
        k: torch.from_numpy((tuned[k].double().numpy() - base[k].double().numpy()).astype(np.float32)) for k in tuned
    }
    return {
        "base": write_hf(root / "base", base),
        "diff": write_hf(root / "diff", diff),
        "lora": write_lora(root / "lora"),
    }


def _recover_args(models, out: Path) -> list[object]:
    return ["recover", "--base", models["base"], "--diff", models["diff"], "-o", out, "--shard-size", SHARD, "-q"]


@pytest.mark.slow
def test_recover_and_merge_lora_on_ray_are_byte_identical(cluster, models, tmp_path):
    for name, args in {
        "recover": _recover_args(models, tmp_path / "{}"),
        "merge": ["merge-lora", "--base", models["base"], "--lora", models["lora"], "-o", tmp_path / "{}", *MERGE_TAIL],
    }.items():
        one = [str(a).format(f"{name}-one") for a in args]
        on_ray = [str(a).format(f"{name}-ray") for a in args]
        assert llmkit_cli(*one).returncode == 0
        r = llmkit_cli(*on_ray, "--ray", cluster)
        assert r.returncode == 0, r.stderr
        assert len(list((tmp_path / f"{name}-ray").glob("model-*.safetensors"))) == 11
        same_folder(tmp_path / f"{name}-one", tmp_path / f"{name}-ray")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no stage, no lock left behind


@pytest.mark.slow
def test_recover_check_sum_on_ray_is_the_one_process_sum(cluster, models, tmp_path):
    """The integrity sum taken from the pieces' per-tensor parts: the tuned model's fp64 sum, as in one process."""
    tuned = tuned_state(tiny_state(0))
    expected = f"sum of all output values is {sum(float(t.double().sum()) for t in tuned.values()):.4f},"
    for i, extra in enumerate(([], ["--ray", cluster])):
        r = llmkit_cli(*_recover_args(models, tmp_path / f"o{i}"), "--check-sum", "1e9", *extra)
        assert r.returncode == 1
        assert expected in only_error_line(r.stderr)
    assert not list(tmp_path.iterdir())  # a failed tap keeps nothing


@pytest.mark.slow
def test_dry_run_on_ray_lists_pieces_and_parallelism(cluster, models, tmp_path):
    r = llmkit_cli(*_recover_args(models, tmp_path / "o"), "--dry-run", "--json", "--ray", cluster)
    assert r.returncode == 0, r.stderr
    notes = [n["text"] for n in json.loads(r.stdout)["notices"] if n["text"].startswith("ray:")]
    assert notes[0].startswith("ray: 11 piece(s), one task per file: model-00001-of-00011.safetensors (")
    assert notes[1] == "ray: 2 task(s) at once (2 CPUs on 1 node(s))"
    assert not (tmp_path / "o").exists()


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> int:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the held piece never started"
        time.sleep(0.05)
    return int(path.read_text())


def _held_run(tmp_path: Path, args: list) -> tuple[subprocess.Popen, int]:
    """``llmkit ARGS`` started with the test hook that holds piece (or range) 0's first attempt; the driver
    process and the PID of the worker holding it, once it holds."""
    hold = tmp_path / "hold"
    hold.mkdir()
    cmd = [PY, "-m", "llmkit", *map(str, args)]
    proc = subprocess.Popen(
        cmd, env=ray_env(LLMKIT_TEST_HOLD_PIECE=str(hold)), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    return proc, _wait_for(hold / "piece-0.pid", proc)


@pytest.mark.slow
def test_a_worker_killed_mid_piece_is_retried_to_the_same_bytes(cluster, models, tmp_path):
    assert llmkit_cli(*_recover_args(models, tmp_path / "one")).returncode == 0
    proc, worker = _held_run(tmp_path, [*_recover_args(models, tmp_path / "ray"), "--ray", cluster])
    assert worker != proc.pid
    stage = next(tmp_path.glob(".ray.llmkit-stage-*"))
    assert list((stage / ".llmkit-pieces").glob("model-00001-of-00011.safetensors.*"))  # its piece half written
    os.kill(worker, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    same_folder(tmp_path / "one", tmp_path / "ray")


@pytest.mark.slow
def test_the_driver_killed_leaves_nothing_final_and_a_rerun_succeeds(cluster, models, tmp_path):
    assert llmkit_cli(*_recover_args(models, tmp_path / "one")).returncode == 0
    proc, _worker = _held_run(tmp_path, [*_recover_args(models, tmp_path / "ray"), "--ray", cluster])
    proc.kill()
    proc.communicate(timeout=60)
    assert not (tmp_path / "ray").exists()  # only the hidden stage of the dead run
    r = llmkit_cli(*_recover_args(models, tmp_path / "ray"), "--ray", cluster)
    assert r.returncode == 0, r.stderr
    same_folder(tmp_path / "one", tmp_path / "ray")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ray.")]  # the dead run's stage removed


@pytest.mark.slow
def test_a_rerun_after_a_killed_driver_keeps_the_pieces_it_finished(cluster, models, tmp_path):
    """The driver SIGKILLed once 3 pieces are recorded: the re-run keeps those (read again against their
    recorded sha256), writes the rest, and the output is the one-process output."""
    assert llmkit_cli(*_recover_args(models, tmp_path / "one")).returncode == 0
    proc, _worker = _held_run(tmp_path, [*_recover_args(models, tmp_path / "ray"), "--ray", cluster])
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob(".ray.llmkit-stage-*/.llmkit-pieces/[0-9]*.json"))) < 3:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.kill()
    proc.communicate(timeout=60)
    r = llmkit_cli(*_recover_args(models, tmp_path / "ray"), "--ray", cluster, "--json")
    assert r.returncode == 0, r.stderr
    resumed = [c for c in json.loads(r.stdout)["checks"] if c["name"] == "ray resume"]
    assert resumed and resumed[0]["status"] == "info", json.loads(r.stdout)["checks"]
    kept = int(resumed[0]["detail"].split(" of ")[0])
    assert 3 <= kept < 11, resumed  # piece 0 was held: never finished
    same_folder(tmp_path / "one", tmp_path / "ray")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ray.")]  # no stage, no salvage left


# ------------------------------------------------------------------ one file (.ckpt) by byte range


def _ckpt_args(models, out: Path, *extra: object) -> list[object]:
    return ["to-ckpt", models["base"], "-o", out, "-q", *extra]


@pytest.mark.slow
def test_to_ckpt_on_ray_is_byte_identical_with_and_without_the_crc_trailer(cluster, models, tmp_path):
    for extra in ([], ["--crc"]):
        tag = "crc" if extra else "plain"
        assert llmkit_cli(*_ckpt_args(models, tmp_path / f"{tag}-one.ckpt", *extra)).returncode == 0
        r = llmkit_cli(*_ckpt_args(models, tmp_path / f"{tag}-ray.ckpt", *extra), "--ray", cluster)
        assert r.returncode == 0, r.stderr
        data = (tmp_path / f"{tag}-ray.ckpt").read_bytes()
        assert data == (tmp_path / f"{tag}-one.ckpt").read_bytes()
        if extra:  # MindSpore's trailer: b"crc_num" + CRC-32 of every byte before it, 10 bytes big-endian
            assert data[-17:] == b"crc_num" + zlib.crc32(data[:-17]).to_bytes(10, "big")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{t}-{w}.ckpt" for t in ("crc", "plain") for w in ("one", "ray")
    ]


def test_crc32_combine_is_the_crc_of_the_concatenation():
    rng = np.random.default_rng(0)
    for la, lb in [(0, 5), (5, 0), (1, 1), (1000, 37), (12345, 100000)]:
        a, b = rng.bytes(la), rng.bytes(lb)
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), lb) == zlib.crc32(a + b)


@pytest.mark.slow
def test_dry_run_on_ray_lists_the_byte_ranges_of_a_ckpt(cluster, models, tmp_path):
    r = llmkit_cli(*_ckpt_args(models, tmp_path / "m.ckpt"), "--dry-run", "--json", "--ray", cluster)
    assert r.returncode == 0, r.stderr
    notes = [n["text"] for n in json.loads(r.stdout)["notices"] if n["text"].startswith("ray:")]
    assert notes[0].startswith(f"ray: {CKPT_RANGES} piece(s), byte ranges of m.ckpt (")
    assert ": bytes 0-" in notes[0] and notes[0].count("tensors)") == CKPT_RANGES
    assert notes[1] == "ray: 2 task(s) at once (2 CPUs on 1 node(s))"
    assert list(tmp_path.iterdir()) == []


def killed_range_gives_the_same_file(tmp_path: Path, cluster: str, args_to: Callable[[Path], list], suffix: str):
    """``llmkit ARGS`` into ``one<suffix>``, then with ``--ray`` into ``ray<suffix>`` while range 0's worker is
    SIGKILLed once its first tensor is written: Ray's retry gives the same bytes, nothing else is left."""
    assert llmkit_cli(*args_to(tmp_path / f"one{suffix}")).returncode == 0
    proc, worker = _held_run(tmp_path, [*args_to(tmp_path / f"ray{suffix}"), "--ray", cluster])
    assert worker != proc.pid
    assert len(list(tmp_path.glob(f".ray{suffix}.llmkit-stage-*"))) == 2  # the staged file and its ledger
    os.kill(worker, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert (tmp_path / f"ray{suffix}").read_bytes() == (tmp_path / f"one{suffix}").read_bytes()
    assert not list(tmp_path.glob(f".ray{suffix}*"))


@pytest.mark.slow
def test_a_worker_killed_mid_range_is_retried_to_the_same_ckpt(cluster, models, tmp_path):
    killed_range_gives_the_same_file(tmp_path, cluster, lambda out: _ckpt_args(models, out, "--crc"), ".ckpt")


def test_an_encrypted_ckpt_on_ray_is_refused_in_one_line(run_cli, models, tmp_path):
    (tmp_path / "k").write_bytes(bytes(range(16)))
    r = run_cli(*_ckpt_args(models, tmp_path / "m.ckpt", "--enc-key", tmp_path / "k"), "--ray", "127.0.0.1:1")
    assert r.exit_code == 2
    assert "an encrypted .ckpt is one chain of AES blocks" in one_error_line(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["-o", "-"], "--ray writes files on a shared filesystem, not a stream on stdout (-o -)"),
        (
            ["-o", "{tmp}/x", "--format", "gguf", "--split-max-size", "1M"],
            "a split GGUF (--split-max-size) is not split yet",
        ),
    ],
)
def test_what_cannot_be_split_is_refused_in_one_line_before_any_work(run_cli, models, tmp_path, extra, expected):
    args = ["recover", "--base", models["base"], "--diff", models["diff"], "--ray", "127.0.0.1:1"]
    r = run_cli(*args, *[a.format(tmp=tmp_path) for a in extra])
    assert r.exit_code == 2
    assert expected in one_error_line(r)
    assert list(tmp_path.iterdir()) == []


def test_no_cluster_at_the_address_is_one_line(run_cli, models, tmp_path):
    port = free_port()  # nothing listens there
    r = run_cli(*_recover_args(models, tmp_path / "o"), "--ray", f"127.0.0.1:{port}")
    assert r.exit_code == 2
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in one_error_line(r)
    assert list(tmp_path.iterdir()) == []


def test_a_piece_written_again_with_other_bytes_fails_the_job(tmp_path):
    """A retried task whose bytes differ from the first attempt's record: the job is not deterministic."""
    from llmkit.cluster.worker import record
    from llmkit.errors import CheckFailed

    ledger = tmp_path / "0.json"
    entry = {"file": "model-00001-of-00002.safetensors", "size": 10, "sha256": "aa" * 32}
    record(ledger, entry, entry["file"])
    record(ledger, dict(entry), entry["file"])  # the same bytes again (Ray retried a killed task): fine
    with pytest.raises(CheckFailed, match="written twice with different bytes"):
        record(ledger, {**entry, "sha256": "bb" * 32}, entry["file"])
    assert json.loads(ledger.read_text()) == entry  # the first record stands
