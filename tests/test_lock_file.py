"""The one flock primitive under the output claim and the download's staging lock (llmkit.io.core.claim)."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest

import llmkit.io.core.claim as claim
from llmkit.hub_staging import Staging
from llmkit.io.core.claim import LockBusy, LockUnsupported, OutputBusyError, OutputClaim, lock_file


def test_a_held_lock_file_holds_this_pid_and_refuses_a_second_holder(tmp_path):
    lock = tmp_path / "x.lock"
    fd = lock_file(lock, errors_name=tmp_path / "x")
    assert fd is not None
    try:
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(LockBusy) as busy:  # a second open file description: flock refuses it
            lock_file(lock, errors_name=tmp_path / "x")
        assert busy.value.holder == f" (pid {os.getpid()})"
    finally:
        os.close(fd)


def test_a_file_system_without_locks_is_named_as_such(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(claim.fcntl, "flock", no_locks)
    with pytest.raises(LockUnsupported) as e:
        lock_file(tmp_path / "x.lock", errors_name=tmp_path / "x")
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOLCK


def test_the_download_runs_unlocked_where_the_file_system_has_no_locks(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(claim.fcntl, "flock", no_locks)
    folder = tmp_path / ".out.llmkit-download"
    with Staging(folder, tmp_path / "out") as s:
        assert s._owned and s._fd is None
        assert folder.is_dir()
    assert not folder.exists()  # the run owned it, so it removed it


def test_an_output_claim_is_refused_while_another_process_holds_it(tmp_path):
    target = tmp_path / "out"
    holder = os.open(tmp_path / ".out.llmkit-lock", os.O_RDWR | os.O_CREAT)
    try:
        os.pwrite(holder, b"4242\n", 0)
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(OutputBusyError, match=r"another llmkit run \(pid 4242\) is writing this output"):
            OutputClaim(target).acquire()
    finally:
        os.close(holder)
