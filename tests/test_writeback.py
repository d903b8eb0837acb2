"""Early write-back of outputs (``llmkit.io.core.writeback``): which ranges are synced and dropped, and that
the bytes on disk are exactly what was written whatever the kernel says."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from llmkit.io.core import writeback
from llmkit.io.core.writeback import WAIT_AFTER, WAIT_BEFORE, WRITE, WriteBehind


class _Recorder:
    def __init__(self, fail: int = 0):
        self.calls: list[tuple[int, int, int]] = []
        self.fail = fail

    def __call__(self, fd: int, offset: int, length: int, flags: int) -> int:
        self.calls.append((offset, length, flags))
        if self.fail:
            ctypes.set_errno(self.fail)
            return -1
        return 0


def _write(path: Path, sizes: list[int], window: int) -> tuple[WriteBehind, bytes]:
    data = b""
    with open(path, "wb") as f:
        behind = WriteBehind(f.fileno(), window=window)
        for i, n in enumerate(sizes):
            chunk = bytes([i % 251]) * n
            f.write(chunk)
            data += chunk
            f.flush()
            behind.wrote(f.tell())
        os.fsync(f.fileno())
    return behind, data


def test_windows_start_then_settle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _Recorder()
    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", rec)
    behind, data = _write(tmp_path / "out", [100, 100, 100, 100, 100], window=150)
    assert (tmp_path / "out").read_bytes() == data
    # at 200: start [0,200), settle what lies a window behind it ([0,50)); at 400: start [200,400), settle [50,250)
    settle = WAIT_BEFORE | WRITE | WAIT_AFTER
    assert rec.calls == [(0, 200, WRITE), (0, 50, settle), (200, 200, WRITE), (50, 200, settle)]
    assert (behind.started, behind.dropped) == (400, 250)


def test_a_file_that_cannot_turns_it_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _Recorder(fail=errno.ESPIPE)
    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", rec)
    behind, data = _write(tmp_path / "out", [64] * 10, window=64)
    assert len(rec.calls) == 1 and not behind.enabled
    assert (tmp_path / "out").read_bytes() == data


def test_a_disk_error_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writeback, "_SYNC_FILE_RANGE", _Recorder(fail=errno.EIO))
    with pytest.raises(OSError) as err:
        _write(tmp_path / "out", [64, 64], window=64)
    assert err.value.errno == errno.EIO


def test_the_real_call_keeps_the_bytes(tmp_path: Path) -> None:
    assert writeback._SYNC_FILE_RANGE is not None  # Linux, where llmkit's tests run
    behind, data = _write(tmp_path / "out", [1 << 20] * 9, window=2 << 20)
    assert (tmp_path / "out").read_bytes() == data
    assert behind.enabled and behind.dropped >= 4 << 20
