"""Exceptions that carry the offending path and the fix.

Library code raises these; ``llmkit.cli`` turns them into one line on stderr and an exit code.
Exit codes: 0 success, 1 a check failed (checksum mismatch, integrity sum), 2 bad usage or
bad input, 3 an unexpected internal error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM),
141 stdout closed by its reader (`| head`: quietly, see ``llmkit.cli.output``).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llmkit.io.remote.schemes import unfolded

EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as shells report it


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C, so every staged output is removed on the way out."""


class LlmkitError(Exception):
    """An error a user can act on: ``path: message (hint)``."""

    exit_code: int = EXIT_BAD_INPUT

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = (unfolded(str(path)) or str(path)) if path is not None else None  # a URL as typed
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class InputError(LlmkitError):
    """The input is missing, malformed, of the wrong kind or inconsistent."""


class UnsafeFileError(InputError):
    """A pickled file tried to run code or load a non-tensor object; it was not executed."""


class OutputExistsError(InputError):
    """The output would overwrite something and ``--force`` was not given."""


class DiskSpaceError(InputError):
    """Not enough free space for the planned output."""


class OutputNotWritableError(InputError):
    """The output folder cannot be written (a read-only file system)."""


class CheckFailed(LlmkitError):
    """A verification ran and did not pass (mismatched checksum, integrity sum, ...)."""

    exit_code = EXIT_CHECK_FAILED


class WriteError(LlmkitError):
    """Writing an output failed (disk full, file-size limit, read-only filesystem): names the file."""


WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EDQUOT})


@contextmanager
def writing(path: str | Path, *, smaller: str | None = None) -> Iterator[None]:
    """Turn an out-of-space / size-limit / read-only error inside the block into :func:`write_error` for ``path``.

    ``path`` is the file's final name (not its temporary one). ``smaller``: how to make the file smaller,
    for the size-limit hint (e.g. ``"use a smaller --shard-size"``).
    """
    try:
        yield
    except OSError as e:
        if e.errno in WRITE_ERRNOS:
            raise write_error(e, path, smaller=smaller) from e
        raise


def _size_limit() -> str:
    """`` of 200,000 bytes``: this process's file-size limit (``ulimit -f``), if one is set."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except (ImportError, OSError, ValueError):
        return ""
    return "" if soft == resource.RLIM_INFINITY or soft < 0 else f" of {soft:,} bytes"


def write_error(e: OSError, path: str | Path, *, smaller: str | None = None) -> LlmkitError:
    """An OS error raised while writing ``path`` as a one-line error that says what ran out."""
    if e.errno == errno.ENOSPC:
        what, hint = "the disk is full", "free some space or choose another -o"
    elif e.errno == errno.EFBIG:
        what = f"the file-size limit{_size_limit()} was reached"
        hint = "raise the limit (ulimit -f)" + (f" or {smaller}" if smaller else "")
    elif e.errno == errno.EROFS:
        what, hint = "the filesystem is read-only", "choose an -o on a writable filesystem"
    elif e.errno == errno.EDQUOT:
        what, hint = "the disk quota is exhausted", "free some space or choose another -o"
    else:
        what, hint = e.strerror or str(e), "check the output folder and try again"
    return WriteError(f"writing failed: {what}; nothing was kept", path=path, hint=hint)
