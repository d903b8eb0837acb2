"""The files PATH arguments name, how they are shown and hashed, and the row that reports one.

Shared by ``llmkit verify`` (tables), ``llmkit checksum`` and ``verify --tensors`` (the other files of
two model folders). Sizes in bytes.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import InputError
from llmkit.hashing import hash_file
from llmkit.io.core.destination import broken_link
from llmkit.io.core.regular import check_regular, is_special
from llmkit.pipeline import Check

WEIGHT_SUFFIXES = (".bin", ".pth", ".pt", ".safetensors", ".ckpt", ".gguf")
STATUSES = ("ok", "mismatch", "missing", "extra")


def default_jobs() -> int:
    """Threads for hashing when ``--jobs`` is not given: up to 4, never more than the CPUs."""
    return max(1, min(4, os.cpu_count() or 1))


def resolve_jobs(jobs: int) -> int:
    """An options ``jobs`` value: 0 means :func:`default_jobs`."""
    return jobs or default_jobs()


@dataclass
class FileCheck:
    """One row of a verification: a file and what the table expects of it."""

    path: str  # as the user would type it: the PATH argument joined with the file's relative path
    expected: str | None
    actual: str | None
    algorithm: str
    status: str  # ok | mismatch | missing | extra
    table: str | None = None
    note: str | None = None  # why a mismatch is (or is not) corruption

    def check(self) -> Check:
        """This row as a :class:`llmkit.pipeline.Check` (same status; the note, else what was compared)."""
        if self.note:
            detail = self.note
        elif self.status == "ok":
            detail = f"{self.algorithm} {self.actual}" + (f" (table {self.table})" if self.table else "")
        elif self.status == "mismatch":
            detail = f"expected {self.expected}, actual {self.actual}"
        elif self.status == "missing":
            detail = f"listed in table {self.table}, not found"
        else:
            detail = "not in the table"
        return Check(self.path, self.status, detail)


def list_files(folder: Path) -> dict[str, Path]:
    """Regular files under ``folder`` by relative POSIX path, sorted; hidden files and folders (a name
    starting with ``.``, e.g. ``.cache/huggingface`` left by downloads) are skipped. A FIFO, socket or
    device is refused (an InputError naming it): it cannot be hashed, and leaving it out would be a silent gap."""
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            if is_special(p):
                check_regular(p, "a file to hash")
            if p.is_file():
                out[p.relative_to(folder).as_posix()] = p
    return dict(sorted(out.items()))


def display_path(arg: str, rel: str) -> str:
    """``arg`` as typed joined with ``rel`` (``.`` + ``a.bin`` -> ``./a.bin``, like ``md5sum ./*``)."""
    return rel if arg == "" else (arg + rel if arg.endswith("/") else f"{arg}/{rel}")


def not_found(p: Path) -> InputError:
    """The error for a PATH argument that is neither a regular file nor a folder."""
    problem = broken_link(p)
    if problem is not None:
        return InputError(f"the path {problem}", path=p, hint="fix the link or pass the file itself")
    if p.exists():
        return InputError("not a regular file or folder", path=p, hint="pass files or folders")
    return InputError("no such file or folder", path=p, hint="check the path")


def hash_files(
    files: list[Path], algorithm: str = "md5", *, jobs: int = 1, progress: Callable[[int], None] | None = None
) -> dict[Path, str]:
    """Hash files on ``jobs`` threads (largest first; hashlib releases the GIL on large buffers);
    returns digests by path. ``progress(nbytes)`` is called from the hashing threads, serialised."""
    lock = threading.Lock()

    def advance(n: int) -> None:
        if progress is not None:
            with lock:
                progress(n)

    ordered = sorted(dict.fromkeys(files), key=lambda p: -p.stat().st_size)
    if jobs <= 1 or len(ordered) <= 1:
        return {p: hash_file(p, algorithm, progress=advance) for p in ordered}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="llmkit-hash") as pool:
        futures = {p: pool.submit(hash_file, p, algorithm, progress=advance) for p in ordered}
        return {p: f.result() for p, f in futures.items()}
