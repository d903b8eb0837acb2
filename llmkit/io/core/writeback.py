"""Early write-back of an output file: the disk writes while the job runs, and the closing fsync is short.

:class:`WriteBehind` is told how far a file has been written (:meth:`WriteBehind.wrote`). Every
:data:`WINDOW` bytes it starts the disk write of the new window without waiting (``sync_file_range``
``SYNC_FILE_RANGE_WRITE``), then waits for the window before that one to reach the disk and drops its
pages from the page cache (``POSIX_FADV_DONTNEED``: a streaming job never reads its output back). So
the dirty and cached part of an output stays about two windows, instead of gigabytes that the kernel
writes in bursts at its dirty thresholds, throttling the writer and evicting the inputs' read-ahead.
It is an optimisation only: the writer still fsyncs each file before it is made final. On systems
without ``sync_file_range`` (not Linux) or files that do not support it, it does nothing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

WINDOW = 64 * 2**20  # bytes per write-back window
WAIT_BEFORE, WRITE, WAIT_AFTER = 1, 2, 4  # SYNC_FILE_RANGE_* flags
_UNSUPPORTED = {errno.EINVAL, errno.ESPIPE, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF}


def _load_sync_file_range():  # -> a ctypes function, or None
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _load_sync_file_range()


class WriteBehind:
    """Write-back of one file opened for writing, window by window (see the module docstring).

    ``wrote(end)``: bytes ``[0, end)`` have been handed to the kernel (positions only grow; a later
    patch of earlier bytes is fine, the final fsync covers it). A failure the disk reports (EIO,
    ENOSPC) is raised as :class:`OSError`; a file that cannot do this turns it off silently.
    """

    def __init__(self, fd: int, window: int = WINDOW):
        self.fd = fd
        self.window = window
        self.started = 0  # write-back started for [0, started)
        self.dropped = 0  # on disk and out of the page cache: [0, dropped)
        self.enabled = _SYNC_FILE_RANGE is not None

    def wrote(self, end: int) -> None:
        if not self.enabled or end - self.started < self.window:
            return
        try:
            self._sync(self.started, end - self.started, WRITE)
            self.started = end
            settled = end - self.window  # the window before the newest one
            if settled > self.dropped:
                self._sync(self.dropped, settled - self.dropped, WAIT_BEFORE | WRITE | WAIT_AFTER)
                os.posix_fadvise(self.fd, self.dropped, settled - self.dropped, os.POSIX_FADV_DONTNEED)
                self.dropped = settled
        except OSError as e:
            if e.errno not in _UNSUPPORTED:
                raise
            self.enabled = False

    def _sync(self, offset: int, length: int, flags: int) -> None:
        assert _SYNC_FILE_RANGE is not None
        if _SYNC_FILE_RANGE(self.fd, offset, length, flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
