"""One run per output: an exclusive ``flock`` on a lock file beside the output, held for the life of the run.

:func:`lock_file` is the one primitive (under the output claim here, and the download's staging lock in
``llmkit.hub_staging``): the kernel drops the lock when the process dies, so a killed run never blocks the
next one, and the holder writes its pid in the file so that a second run can say who is writing."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from llmkit.errors import InputError, writing

LOCK_SUFFIX = ".llmkit-lock"


class OutputBusyError(InputError):
    """Another llmkit run holds the claim on this output."""


def lock_holder(fd: int) -> str:
    """`` (pid N)`` for the run that holds the lock file open as ``fd`` (it writes its pid there), or ""."""
    owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f" (pid {owner})" if owner.isdigit() else ""


class LockBusy(Exception):
    """Another process holds the lock; ``holder`` is `` (pid N)`` when its file says who, else ``""``."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


class LockUnsupported(OSError):
    """The file system refuses ``flock`` (some NFS): the caller decides whether to go on unlocked."""


def lock_file(lock_path: Path, *, errors_name: Path) -> int | None:
    """One attempt to hold ``lock_path`` (created if absent) with an exclusive ``flock``.

    Returns the open fd, with this process's pid written in the file for a second run's message, or
    ``None`` when the file was removed or replaced after it was opened (the holder finished: try again).
    Raises :class:`LockBusy` when another process holds it, :class:`LockUnsupported` when the file system
    has no locks; a failed create is reported for ``errors_name`` (:func:`~llmkit.errors.writing`).
    """
    with writing(errors_name):
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        who = lock_holder(fd)
        os.close(fd)
        raise LockBusy(who) from None
    except OSError as e:
        os.close(fd)
        raise LockUnsupported(e.errno, e.strerror) from e
    try:
        same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    with contextlib.suppress(OSError):  # the pid is for messages only; a full disk fails the first real write
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class OutputClaim:
    """An exclusive claim on the output path ``target`` for the life of one run (a ``flock``)."""

    def __init__(self, target: Path):
        self.target = target
        self.lock_path = target.parent / f".{target.name}{LOCK_SUFFIX}"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the claim, or raise :class:`OutputBusyError` naming the output (not the lock file)."""
        while self._fd is None:
            try:
                self._fd = lock_file(self.lock_path, errors_name=self.target)
            except LockBusy as busy:
                raise OutputBusyError(
                    f"another llmkit run{busy.holder} is writing this output",
                    path=self.target,
                    hint="wait for it to finish, or choose another -o",
                ) from None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.lock_path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
