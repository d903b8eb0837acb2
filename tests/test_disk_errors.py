"""Honest disk errors: a file-size limit or a full disk names the file being written and what ran out,
a read-only output file system is called read-only (not "not enough space"), the free-space margin is
proportional to the output and stated, and nothing is left behind."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from common import EMPTY, stderr_is_one_error_line

import llmkit.io.core.writer as sinks
from llmkit import units
from llmkit.crypto import plan as crypto_plan
from llmkit.errors import DiskSpaceError, OutputNotWritableError, WriteError
from llmkit.io import ShardedWriter, TensorSpec

LLMKIT = [sys.executable, "-m", "llmkit"]
MiB = 2**20


def all_files(folder: Path) -> list[str]:
    """Every file or link under ``folder``, hidden and temporary ones included (no folders)."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def run_limited(limit: int, *args) -> subprocess.CompletedProcess:
    """``llmkit ARGS`` with RLIMIT_FSIZE = ``limit`` bytes; SIGXFSZ ignored, so a write fails with EFBIG."""

    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([*LLMKIT, *map(str, args)], capture_output=True, text=True, timeout=300, preexec_fn=preexec)


# ------------------------------------------------------------------ (a) file-size limit, disk full


@pytest.mark.parametrize("command", ["recover", "merge-lora"])
def test_file_size_limit_names_the_file_and_keeps_nothing(lora_work, tiny_factory, tmp_path, command):
    out = tmp_path / "out"
    if command == "recover":
        args = ["recover", "--base", lora_work / "base", "--diff", tiny_factory("safetensors", seed=1).path]
    else:
        args = ["merge-lora", "--base", lora_work / "base", "--lora", lora_work / "cute"]
    assert (lora_work / "base" / "model.safetensors").stat().st_size > 400_000  # the output shard is as big
    r = run_limited(200_000, *args, "-o", out, "--quiet")
    assert r.returncode == 2, r.stderr
    line = stderr_is_one_error_line(r.stderr)
    assert f"{out / 'model.safetensors'}: " in line, line  # the final name, not the temporary one
    assert "file-size limit" in line and "ulimit -f" in line and "--shard-size" in line, line
    assert all_files(out) == []


def test_file_size_limit_on_a_copied_tokenizer_file_names_it(lora_work, tiny_factory, tmp_path):
    # 100 KB shards fit under the limit; tokenizer.model (about 240 KB) does not, and cannot be split.
    tokenizer = lora_work / "base" / "tokenizer.model"
    assert tokenizer.stat().st_size > 200_000
    out = tmp_path / "out"
    r = run_limited(
        200_000,
        "recover",
        "--base",
        lora_work / "base",
        "--diff",
        tiny_factory("safetensors", seed=1).path,
        "-o",
        out,
        "--shard-size",
        "100KB",
        "-q",
    )
    assert r.returncode == 2, r.stderr
    line = stderr_is_one_error_line(r.stderr)
    assert f"{out / 'tokenizer.model'}: " in line and "file-size limit" in line, line
    assert "--shard-size" not in line  # a smaller shard would not help
    assert all_files(out) == []


def test_a_full_disk_while_writing_names_the_shard(tmp_path):
    """ENOSPC in the middle of a shard: the error names the shard's final name; temporary files go."""

    class FullDisk:  # the open shard's file object, once the disk has filled up
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    specs = [TensorSpec("a", torch.float32, (10,)), TensorSpec("b", torch.float32, (10,))]
    with pytest.raises(WriteError) as err, ShardedWriter(tmp_path / "o", specs) as w:
        w.write("a", torch.zeros(10))
        w.shards[0].handle = FullDisk(w.shards[0].handle)
        w.write("b", torch.ones(10))
    assert err.value.path == str(tmp_path / "o" / "model.safetensors")
    assert "the disk is full" in err.value.message and "nothing was kept" in err.value.message
    assert all_files(tmp_path / "o") == []


# ------------------------------------------------------------------ (b) read-only file systems


def _fake_read_only(monkeypatch, under: Path) -> None:
    """os.statvfs reports ST_RDONLY for every path under ``under`` (the rest is the real answer)."""
    real = os.statvfs

    def statvfs(path):
        st = real(path)
        if str(Path(path).resolve()).startswith(str(under.resolve())):
            fields = list(st)
            fields[8] = st.f_flag | os.ST_RDONLY
            return os.statvfs_result(fields)
        return st

    monkeypatch.setattr(os, "statvfs", statvfs)


@pytest.mark.parametrize("command", ["recover", "merge-lora", "decrypt"])
def test_read_only_output_is_called_read_only(run_cli, lora_work, tiny_factory, tmp_path, monkeypatch, command):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(1000))
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / f"w.dat.{EMPTY}.enc").write_bytes(os.urandom(500))
    mount = tmp_path / "mnt"
    mount.mkdir()
    out = mount / "out"
    argv = {
        "recover": ["recover", "--base", lora_work / "base", "--diff", tiny_factory("safetensors", seed=1).path],
        "merge-lora": ["merge-lora", "--base", lora_work / "base", "--lora", lora_work / "cute"],
        "decrypt": ["decrypt", enc, "--key", key, "--no-key-check", "--no-content-check"],
    }[command]
    _fake_read_only(monkeypatch, mount)
    r = run_cli(*argv, "-o", out)
    assert r.exit_code == 2, r.stderr
    line = stderr_is_one_error_line(r.stderr)
    assert f"{out}: " in line and "read-only file system" in line and str(mount) in line, line
    assert "free space" not in line and "available" not in line
    assert not out.exists()


def test_read_only_detection_uses_the_nearest_existing_folder(tmp_path, monkeypatch):
    _fake_read_only(monkeypatch, tmp_path / "ro")
    (tmp_path / "ro").mkdir()
    assert units.read_only_mount(tmp_path / "ro" / "a" / "b") == tmp_path / "ro"
    assert units.read_only_mount(tmp_path / "rw" / "a") is None
    with pytest.raises(OutputNotWritableError, match="read-only"):
        ShardedWriter(tmp_path / "ro" / "a", [TensorSpec("x", torch.float32, (4,))])


def test_erofs_when_creating_the_output_folder_is_reported_as_read_only(tmp_path, monkeypatch):
    """If statvfs does not tell (a race, an odd file system), mkdir's EROFS still gives the right words."""
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.parent == tmp_path and (self.name == "o" or self.name.startswith(".o.")):  # the folder or its stage
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(WriteError) as err, ShardedWriter(tmp_path / "o", [TensorSpec("x", torch.float32, (4,))]) as w:
        w.write("x", torch.zeros(4))
    assert err.value.path == str(tmp_path / "o") and "read-only" in err.value.message


@pytest.fixture
def read_only_bind_mount(tmp_path):
    """A real read-only bind mount (root only); skipped where it cannot be made."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8)")
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    made = subprocess.run(["mount", "-o", "bind,ro", str(src), str(mnt)], capture_output=True)
    if made.returncode != 0 or not os.statvfs(mnt).f_flag & os.ST_RDONLY:
        if made.returncode == 0:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        pytest.skip(f"cannot make a read-only bind mount here: {made.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.parametrize("command", ["recover", "decrypt"])
def test_a_real_read_only_mount_is_called_read_only(
    run_cli, read_only_bind_mount, lora_work, tiny_factory, tmp_path, command
):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(1000))
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / f"w.dat.{EMPTY}.enc").write_bytes(os.urandom(500))
    argv = {
        "recover": ["recover", "--base", lora_work / "base", "--diff", tiny_factory("safetensors", seed=1).path],
        "decrypt": ["decrypt", enc, "--key", key, "--no-key-check", "--no-content-check"],
    }[command]
    r = run_cli(*argv, "-o", read_only_bind_mount / "out")
    assert r.exit_code == 2, r.stderr
    line = stderr_is_one_error_line(r.stderr)
    assert "read-only file system" in line and "free space" not in line, line


# ------------------------------------------------------------------ (c) a proportional, stated margin


def expected_margin(nbytes: int) -> int:
    """The documented rule: 1% of the output, at least 1 MiB, at most 64 MiB."""
    return min(64 * MiB, max(MiB, -(-nbytes // 100)))


@pytest.mark.parametrize("nbytes", [0, 470_000, 104_857_600, 10**9, 13 * 10**9, 10**12])
def test_space_margin_is_one_percent_between_1_and_64_mib(nbytes):
    assert units.space_margin(nbytes) == expected_margin(nbytes)


def test_space_margin_bounds():
    assert units.space_margin(470_000) == MiB  # was a hidden 64 MiB: 140 times the output
    assert units.space_margin(10**9) == 10**7
    assert units.space_margin(26 * 10**9) == 64 * MiB


def test_small_output_passes_with_free_space_just_above_need_and_margin(tmp_path, monkeypatch):
    specs = [TensorSpec("w", torch.float32, (300, 400))]  # 480 KB
    need = 480_000
    monkeypatch.setattr(sinks, "free_bytes", lambda folder: need + MiB)  # 1.53 MB: far below the old 64 MiB
    w = ShardedWriter(tmp_path / "ok", specs)
    assert (w.space_margin, w.needed_disk_bytes, w.free_disk_bytes) == (MiB, need + MiB, need + MiB)
    monkeypatch.setattr(sinks, "free_bytes", lambda folder: need + MiB - 1)
    with pytest.raises(DiskSpaceError) as err:
        ShardedWriter(tmp_path / "refused", specs)
    assert err.value.message == (
        "needs 1.53 MB of free space (480.00 KB of output + a 1.05 MB margin), 1.53 MB available"
    )
    assert not (tmp_path / "refused").exists()


def test_recover_succeeds_on_a_disk_with_20_mb_free(run_cli, lora_work, tiny_factory, tmp_path, monkeypatch):
    monkeypatch.setattr(sinks, "free_bytes", lambda folder: 20 * 10**6)
    r = run_cli(
        "recover",
        "--base",
        lora_work / "base",
        "--diff",
        tiny_factory("safetensors", seed=1).path,
        "-o",
        tmp_path / "out",
        "--quiet",
    )
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_recover_dry_run_states_the_needed_space_and_margin(run_cli, lora_work, tiny_factory, tmp_path):
    diff = tiny_factory("safetensors", seed=1)
    r = run_cli(
        "recover", "--base", lora_work / "base", "--diff", diff.path, "-o", tmp_path / "out", "--dry-run", "--json"
    )
    assert r.exit_code == 0, r.stderr
    plan = r.json()["plan"]
    tensors = sum(t.numel() * 4 for t in diff.state.values())
    aux = sum((diff.path / n).stat().st_size for n in plan["aux_files"])
    assert plan["output_bytes"] == tensors
    assert plan["disk_margin_bytes"] == expected_margin(tensors + aux) == MiB
    assert plan["needed_disk_bytes"] == tensors + aux + MiB
    text = run_cli("recover", "--base", lora_work / "base", "--diff", diff.path, "-o", tmp_path / "out", "--dry-run")
    row = next(line for line in text.stdout.splitlines() if line.startswith("disk"))
    assert "margin" in row and "needs" in row and "free:" in row, row
    assert not (tmp_path / "out").exists()


def test_decrypt_margin_is_proportional_and_stated(run_cli, tmp_path, monkeypatch):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(1000))
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / f"w.dat.{EMPTY}.enc").write_bytes(os.urandom(470_000))
    argv = ["decrypt", enc, "--key", key, "--no-key-check", "--no-content-check", "--quiet"]
    monkeypatch.setattr(crypto_plan, "free_bytes", lambda folder: 470_000 + MiB)
    assert run_cli(*argv, "-o", tmp_path / "ok").exit_code == 0
    assert (tmp_path / "ok" / "w.dat").stat().st_size == 470_000
    monkeypatch.setattr(crypto_plan, "free_bytes", lambda folder: 470_000 + MiB - 1)
    r = run_cli(*argv, "-o", tmp_path / "refused")
    assert r.exit_code == 2
    line = stderr_is_one_error_line(r.stderr)
    assert "470.00 KB of output + a 1.05 MB margin" in line and "1.52 MB available" in line, line
    assert not (tmp_path / "refused").exists()


# ------------------------------------------------------------------ (d) a dangling symlink as -o


@pytest.mark.parametrize("command", ["recover", "make-diff", "merge-lora", "decrypt", "encrypt"])
def test_dangling_symlink_output_says_what_it_is(run_cli, lora_work, tiny_factory, tmp_path, command):
    key = tmp_path / "key"
    key.write_bytes(os.urandom(1000))
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / f"w.dat.{EMPTY}.enc").write_bytes(os.urandom(500))
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "elsewhere" / "target")
    tuned = tiny_factory("safetensors", seed=1).path
    argv = {
        "recover": ["recover", "--base", lora_work / "base", "--diff", tuned],
        "make-diff": ["make-diff", "--base", lora_work / "base", "--target", tuned],
        "merge-lora": ["merge-lora", "--base", lora_work / "base", "--lora", lora_work / "cute"],
        "decrypt": ["decrypt", enc, "--key", key, "--no-key-check", "--no-content-check"],
        "encrypt": ["encrypt", key, "--key", key, "--no-key-check"],
    }[command]
    r = run_cli(*argv, "-o", link)
    assert r.exit_code == 2, r.stderr
    line = stderr_is_one_error_line(r.stderr)
    assert f"{link}: " in line and f"is a dangling symlink to {tmp_path / 'elsewhere' / 'target'}" in line, line
    assert "File exists" not in line
    assert not (tmp_path / "elsewhere").exists() and link.is_symlink()
