"""File hashing with large reused buffers. Imports nothing heavy (the decrypt key check uses it)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from llmkit.errors import InputError

BUFFER_BYTES = 8 * 1024 * 1024
ALGORITHMS = ("md5", "sha256")


def new_hash(algorithm: str):
    if algorithm not in ALGORITHMS:
        raise InputError(f"unknown checksum algorithm {algorithm!r}", hint=f"use one of {', '.join(ALGORITHMS)}")
    return hashlib.new(algorithm)


def hash_file(path: Path, algorithm: str = "md5", *, progress: Callable[[int], None] | None = None) -> str:
    """Hex digest of the file's bytes. Reads 8 MiB at a time into one reused buffer; calls
    ``progress(nbytes)`` after each read. Memory: one buffer."""
    h = new_hash(algorithm)
    buf = bytearray(BUFFER_BYTES)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        if hasattr(os, "posix_fadvise"):  # ask for aggressive read-ahead, as md5sum does
            with contextlib.suppress(OSError):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            if progress is not None:
                progress(n)
    return h.hexdigest()
