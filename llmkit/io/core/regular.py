"""Inputs are regular files: a FIFO, socket or device where a model file belongs is refused, never read.

Opening a FIFO for reading blocks until a writer appears (forever, in practice), and a character device
such as ``/dev/zero`` never ends. :func:`open_regular` opens without blocking (``O_NONBLOCK``) and checks
the opened file itself (``fstat``), so nothing can swap the file between the check and the read;
:func:`check_regular` is the same check by path, for files another library opens (``torch.load``,
SentencePiece). :func:`is_special` tells a special file from a missing one, for code that skips absent
optional files: a special file is not absent, it is refused.
"""

from __future__ import annotations

import fcntl
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path

from llmkit.errors import InputError

_HINT = "pass the file itself: llmkit reads regular files, not pipes, sockets or devices"
READ_CHUNK = 1 << 30  # bytes per preadv call (Linux returns at most ~2 GB per call)


def pread_into(fd: int, view: memoryview, offset: int, path: str | os.PathLike, what: str = "") -> None:
    """Fill ``view`` with the file's bytes from ``offset`` on (positional reads: the file position is not
    used). A file that ends first is an :class:`InputError` naming it (``what``: e.g. `` tensor 'x'``)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done : done + READ_CHUNK]], offset + done)
        if not got:
            raise InputError(
                f"file shrank while reading{what} (at byte {offset + done})",
                path=path,
                hint="do not change the file while llmkit reads it",
            )
        done += got


def file_kind(mode: int) -> str:
    """How a file type is named in messages: ``a named pipe (FIFO)``, ``a socket``, ..."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def special_file_error(path: str | os.PathLike, mode: int, what: str | None = None) -> InputError:
    """The one-line refusal of a non-regular file where ``what`` (default: a file) is expected."""
    kind = file_kind(mode)
    expected = what or "a regular file"
    if stat.S_ISDIR(mode):
        return InputError(f"expected {expected}, found a folder", path=path, hint="pass the file, not a folder")
    return InputError(f"{kind} where {expected} is expected; it is not read", path=path, hint=_HINT)


def is_special(path: str | os.PathLike) -> bool:
    """True when ``path`` exists (through symlinks) and is neither a regular file nor a folder."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_regular(path: str | os.PathLike, what: str | None = None) -> None:
    """Refuse ``path`` unless it is a regular file (a missing file is left to the caller's own message)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if not stat.S_ISREG(mode):
        raise special_file_error(path, mode, what)


def require_file(
    given: str | os.PathLike,
    *,
    absent: Callable[[], InputError],
    special: str,
    not_file: Callable[[Path], InputError],
) -> Path:
    """``given`` as a path, refused unless it is a regular file (checked by path, nothing opened): raises
    ``absent()`` when no entry is there at all (its message must not repeat ``given``: a key may have been
    typed where its path belongs), a FIFO or device as :func:`check_regular` names it (``special``: what is
    expected), anything else (a folder, a broken link) ``not_file(path)``."""
    path = Path(given)
    if not os.path.lexists(given):
        raise absent()
    try:
        is_file = path.is_file()
    except (OSError, ValueError):
        is_file = False
    if not is_file:
        if is_special(path):  # a FIFO or device: named, never read
            check_regular(path, special)
        raise not_file(path)
    return path


def open_regular(path: str | os.PathLike, what: str | None = None) -> io.BufferedReader:
    """Open ``path`` for reading, refusing anything but a regular file without blocking on it.

    OSErrors of the open itself (missing, permission) propagate for the caller to describe."""
    check_regular(path, what)  # a device is refused before it is even opened
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # swapped in after the check
            raise special_file_error(path, mode, what)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, what: str | None = None) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`)."""
    with open_regular(path, what) as f:
        return f.read()
