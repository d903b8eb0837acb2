"""All-or-nothing outputs: kills at any moment, two runs on one output, what --force touches, ``-o -``.

The expected model is computed here from the tiny models' own state dicts (diff = target - base in fp32,
the published formula of make-diff), never from llmkit's output of the same run. A run is killed for
real (SIGKILL, SIGTERM, SIGINT) in a subprocess, at random moments and at each step of the commit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from common import one_error_line, tree
from safetensors.torch import load_file

from llmkit.io.core.claim import OutputClaim

SHARD = "20KB"  # several shards for the tiny model: a partial set would be visible


@pytest.fixture(scope="module")
def models(tiny_factory):
    base, a, b = (tiny_factory("safetensors", seed=s, layers=4) for s in (0, 1, 2))
    return base, a, b


def expected_diff(base, target) -> dict[str, torch.Tensor]:
    return {k: target.state[k].float() - base.state[k].float() for k in base.state}


def load_folder(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF safetensors output folder, through its index when it has one."""
    index = out / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(out / f))
    return state


def same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> bool:
    return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def is_whole(out: Path, want: dict[str, torch.Tensor]) -> bool:
    """``out`` holds exactly one complete diff: every shard its index names, each tensor as expected."""
    try:
        return same_state(load_folder(out), want)
    except Exception:
        return False


def hidden_leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def make_diff_args(base, target, out: Path, *more: str) -> list[str]:
    return [
        "make-diff",
        "--base",
        str(base.path),
        "--target",
        str(target.path),
        "-o",
        str(out),
        "--shard-size",
        SHARD,
        "-q",
        *more,
    ]


def cli(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llmkit", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw
    )


# ------------------------------------------------------------------ two runs on one output


def test_a_run_on_an_output_another_run_is_writing_fails_at_once_with_one_line(run_cli, models, tmp_path):
    base, a, _ = models
    out = tmp_path / "out"
    claim = OutputClaim(out)  # what a running llmkit holds while it writes ``out``
    claim.acquire()
    try:
        r = run_cli(*make_diff_args(base, a, out))
    finally:
        claim.release()
    line = one_error_line(r, out)
    assert "another llmkit run" in line and f"pid {os.getpid()}" in line and "llmkit-lock" not in line
    assert not out.exists() and hidden_leftovers(tmp_path, "out") == []


CLAIMED_WRITERS = {  # command -> (models, output path) -> argv; each output kind: folder, .ckpt file, decrypt set
    "to-ckpt": lambda m, o: ["to-ckpt", str(m[0].path), "-o", str(o)],
    "to-meta": lambda m, o: ["to-meta", str(m[0].path), "-o", str(o)],
    "encrypt": lambda m, o: [
        "encrypt",
        str(m[0].path / "config.json"),
        "--key",
        str(m[1].path / "model.safetensors"),
        "--no-key-check",
        "-o",
        str(o),
    ],
}


@pytest.mark.parametrize("command", sorted(CLAIMED_WRITERS))
def test_every_kind_of_output_is_claimed_for_the_whole_run(run_cli, models, tmp_path, command):
    out = tmp_path / "out"
    claim = OutputClaim(out)
    claim.acquire()
    try:
        r = run_cli(*CLAIMED_WRITERS[command](models, out))
    finally:
        claim.release()
    assert "another llmkit run" in one_error_line(r, out)
    assert sorted(os.listdir(tmp_path)) == []
    assert run_cli(*CLAIMED_WRITERS[command](models, out)).exit_code == 0  # released: the same run goes through


@pytest.mark.parametrize("force", [False, True])
def test_two_runs_at_once_never_both_succeed_with_a_mixed_output(models, tmp_path, force):
    base, a, b = models
    want = {"a": expected_diff(base, a), "b": expected_diff(base, b)}
    for attempt in range(2):
        out = tmp_path / f"out{attempt}"
        extra = ["--force"] if force else []
        runs = [cli(make_diff_args(base, a, out, *extra)), cli(make_diff_args(base, b, out, *extra))]
        codes = [p.wait(timeout=120) for p in runs]
        errors = [p.stderr.read().decode() for p in runs]
        assert 0 in codes, errors
        winners = [k for k in want if is_whole(out, want[k])]
        assert len(winners) == 1, (codes, errors)  # one complete diff, from one run, never a mix
        for code, err in zip(codes, errors, strict=True):
            if code != 0:  # the loser says so in one line and changes nothing
                assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
                assert "another llmkit run" in err or "already holds" in err or "appeared" in err, err
        if not force:
            assert codes.count(0) == 1, errors  # without --force the second never replaces the first
        assert hidden_leftovers(tmp_path, out.name) == []


# ------------------------------------------------------------------ kills


KILLER = textwrap.dedent("""
    import os, signal, sys
    import llmkit.io.core.staging as staging
    step, nth, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
    calls = {"n": 0}
    real = getattr(staging, step)
    def hooked(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth and sys.argv[4] == "before":
            os.kill(os.getpid(), sig)
        result = real(*args, **kwargs)
        if calls["n"] == nth and sys.argv[4] == "after":
            os.kill(os.getpid(), sig)
        return result
    setattr(staging, step, hooked)
    from llmkit.cli import main
    sys.argv = ["llmkit", *sys.argv[5:]]
    main()
""")

# (function of llmkit.io.core.staging, which call) around which the commit is killed
COMMIT_STEPS = [("fsync_dir", 1), ("rename_noreplace", 1), ("fsync_dir", 2), ("exchange", 1), ("_carry", 1)]


def run_killed_at(step: str, nth: int, when: str, sig: str, args: list[str]) -> int:
    p = subprocess.run(
        [sys.executable, "-c", KILLER, step, str(nth), sig, when, *args], capture_output=True, timeout=120
    )
    return p.returncode


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step,nth", COMMIT_STEPS)
def test_sigkill_during_the_commit_leaves_no_output_or_the_whole_new_one(models, tmp_path, step, nth, when):
    base, a, _ = models
    out = tmp_path / "new"
    run_killed_at(step, nth, when, "SIGKILL", make_diff_args(base, a, out))
    assert not out.exists() or is_whole(out, expected_diff(base, a))
    # the re-run cleans up what the killed run left beside the output and succeeds
    r = subprocess.run(
        [sys.executable, "-m", "llmkit", *make_diff_args(base, a, out, "--force")], capture_output=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert is_whole(out, expected_diff(base, a)) and hidden_leftovers(tmp_path, "new") == []


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step,nth", COMMIT_STEPS)
def test_sigkill_while_force_replaces_an_output_leaves_the_old_or_the_new_one_whole(models, tmp_path, step, nth, when):
    base, a, b = models
    out = tmp_path / "old"
    assert subprocess.run([sys.executable, "-m", "llmkit", *make_diff_args(base, a, out)]).returncode == 0
    (out / "NOTES.txt").write_text("mine\n")
    run_killed_at(step, nth, when, "SIGKILL", make_diff_args(base, b, out, "--force"))
    assert is_whole(out, expected_diff(base, a)) or is_whole(out, expected_diff(base, b))
    assert (out / "NOTES.txt").read_text() == "mine\n"  # the user's file survives every kill point


def wait_for_stage(parent: Path, name: str, p: subprocess.Popen, timeout: float = 60) -> bool:
    """Wait until the run has started writing (its stage exists); False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        if any(".llmkit-stage-" in n for n in hidden_leftovers(parent, name)):
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGKILL, -9), (signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_kill_at_any_moment_of_the_writing_leaves_no_output_or_a_whole_one(tiny_factory, tmp_path, sig, code):
    base, target = tiny_factory("safetensors", seed=0, layers=24), tiny_factory("safetensors", seed=3, layers=24)
    want = expected_diff(base, target)
    for i, delay in enumerate([0.0, 0.05, 0.15, 0.3, 0.6, 1.0]):  # seconds after the stage appeared
        out = tmp_path / f"o{i}"
        p = cli(make_diff_args(base, target, out, "--json"))
        started = wait_for_stage(tmp_path, out.name, p)
        time.sleep(delay)
        p.send_signal(sig)
        p.wait(timeout=120)
        assert not out.exists() or is_whole(out, want), (delay, sorted(os.listdir(out)))
        if p.returncode != 0:
            assert started and p.returncode == code, (delay, p.returncode, p.stderr.read())
            if sig != signal.SIGKILL:  # a handled signal removes its stage and says so, in JSON too
                assert hidden_leftovers(tmp_path, out.name) == [], delay
                error = json.loads(p.stdout.read())
                assert error["ok"] is False and error["exit_code"] == code and "no partial output" in error["error"]


# ------------------------------------------------------------------ what --force touches


def test_force_replaces_only_what_the_command_writes_and_keeps_the_users_files(run_cli, models, tmp_path):
    base, a, b = models
    out = tmp_path / "out"
    assert run_cli(*make_diff_args(base, a, out)).exit_code == 0
    (out / "consolidated.00.pth").write_bytes(b"the user's Meta shard")  # another layout: the user's
    (out / "notes.txt").write_text("keep me\n")
    (out / "added_tokens.json").write_text('{"<extra>": 100}\n')  # a stale side file of another model
    (out / "model-00099-of-00099.safetensors").write_bytes(b"stale")  # a stale shard of this layout
    before = {n: os.stat(out / n).st_ino for n in ("consolidated.00.pth", "notes.txt")}
    r = run_cli(*make_diff_args(base, b, out, "--force", "--json"))
    assert r.exit_code == 0, r.stderr
    assert is_whole(out, expected_diff(base, b))
    assert (out / "consolidated.00.pth").read_bytes() == b"the user's Meta shard"
    assert (out / "notes.txt").read_text() == "keep me\n"
    assert {n: os.stat(out / n).st_ino for n in before} == before  # the same files, not copies
    assert not (out / "added_tokens.json").exists() and not (out / "model-00099-of-00099.safetensors").exists()
    assert any("consolidated.00.pth" in n["text"] and "notes.txt" in n["text"] for n in r.json()["notices"])


def test_an_output_folder_holding_a_folder_is_refused_before_any_work(run_cli, models, tmp_path):
    base, a, _ = models
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "x").write_text("x")
    before = tree(out)
    r = run_cli(*make_diff_args(base, a, out, "--force"))
    assert "sub/" in one_error_line(r, out)
    assert tree(out) == before and hidden_leftovers(tmp_path, "out") == []


def test_an_existing_empty_folder_becomes_the_output_and_an_existing_one_without_force_is_refused(
    run_cli, models, tmp_path
):
    base, a, b = models
    out = tmp_path / "out"
    out.mkdir()
    assert run_cli(*make_diff_args(base, a, out)).exit_code == 0
    assert is_whole(out, expected_diff(base, a))
    r = run_cli(*make_diff_args(base, b, out))
    assert "--force" in one_error_line(r, out)
    assert is_whole(out, expected_diff(base, a))


def test_ckpt_force_never_replaces_a_non_regular_file(run_cli, tiny_factory, tmp_path):
    fifo = tmp_path / "pipe.ckpt"
    os.mkfifo(fifo)
    r = run_cli("to-ckpt", tiny_factory("safetensors").path, "-o", fifo, "--force")
    assert "not a regular file" in one_error_line(r, fifo)
    assert fifo.is_fifo()


# ------------------------------------------------------------------ -o -


# -o - is a safetensors stream on stdout (tests/test_pipes.py); a command writing another format refuses it
WRITER_ARGS = {
    "to-meta": lambda m: [m[0].path],
    "to-ckpt": lambda m: [m[0].path],
}


@pytest.mark.parametrize("command", sorted(WRITER_ARGS))
def test_dash_as_an_output_of_another_format_is_refused_and_makes_nothing(
    run_cli, models, tmp_path, monkeypatch, command
):
    monkeypatch.chdir(tmp_path)
    r = run_cli(command, *WRITER_ARGS[command](models), "-o", "-")
    assert r.stdout == ""
    assert "writes a safetensors stream" in one_error_line(r, "-o -", "--format")
    assert os.listdir(tmp_path) == []


def test_merge_force_over_an_alpaca_output_leaves_no_stale_added_tokens(run_cli, lora_work, tmp_path):
    """The side files of an output are exactly what this run writes: the tokenizer matches the model."""
    from transformers import AutoTokenizer

    out = tmp_path / "merged"
    assert run_cli("merge-lora", "--base", lora_work / "base", "--lora", lora_work / "alpaca", "-o", out).exit_code == 0
    assert (out / "added_tokens.json").exists()
    r = run_cli("merge-lora", "--base", lora_work / "base", "--lora", lora_work / "cute", "-o", out, "--force")
    assert r.exit_code == 0, r.stderr
    assert not (out / "added_tokens.json").exists()
    rows = load_folder(out)["model.embed_tokens.weight"].shape[0]
    assert len(AutoTokenizer.from_pretrained(out)) == rows  # 100 tokens for 100 rows, not 101


def test_force_never_replaces_a_device_node(run_cli, tiny_factory, tmp_path):
    """``-o <a character device> --force`` (as root ``-o /dev/null --force``) leaves the node alone."""
    import stat

    dev = tmp_path / "null.ckpt"
    os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the numbers of /dev/null
    r = run_cli("to-ckpt", tiny_factory("safetensors").path, "-o", dev, "--force")
    assert "not a regular file" in one_error_line(r, dev)
    assert stat.S_ISCHR(os.lstat(dev).st_mode) and os.lstat(dev).st_rdev == os.makedev(1, 3)
