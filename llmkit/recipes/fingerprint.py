"""Fingerprints of what a recipe step reads and writes: one ``stat`` per file to check, content where it matters.

A fingerprint of a path is ``None`` (it does not exist) or ``{relative file name: entry}`` (``""`` for a
single file; hidden names are skipped). An entry holds the file's ``size`` and ``mtime_ns``; for what the
recipe itself wrote (every step's output, which is what later steps read) also ``sha256`` (its content)
and ``seal`` (``[inode, ctime_ns]`` when the hash was taken, or None).

Why (docs/families/README.md, "How a re-run decides what to reuse"): size and mtime miss a file changed
in place with its time set back, and hashing every recorded file on every re-run would read a 26 GB
output each time. A file's ctime and inode cannot be set back from user space: any write, ``touch``,
``os.utime``, copy or rename-over gives a new one. So a re-run compares each file's size and seal (one
``stat``); a file whose seal differs (or every file, with ``rehash``) is read again and its sha256
compared: the same content is reused and its seal renewed, other content makes the step run again. A seal
is kept only when the file's ctime was at least :data:`SEAL_MARGIN_NS` old once its hash was finished, so
a change within the same timestamp tick cannot hide behind it (git's "racily clean" rule); a younger file
is simply read again on the next run.

The hash is taken by reading each output once after its step. Each file is hashed at most once per run
(keyed by its stat; a sealed file not at all), so a step's output recorded again as the next step's input
costs nothing more. The
files the user supplies (``--key``, ``--llama-dir``) are fingerprinted by size and mtime only: what a
step made from them is checked by content anyway.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import InputError
from llmkit.hashing import hash_file
from llmkit.pipeline import ProgressFactory

SEAL_MARGIN_NS = 2_000_000_000  # above every file system's timestamp step (1 s on the coarsest)

Entry = dict[str, Any]
Fingerprint = dict[str, Entry] | str | None  # str: an earlier llmkit's digest of sizes and times


@dataclass(frozen=True)
class Change:
    """Why a recorded fingerprint no longer matches: the first ``file`` that differs and ``how``:
    missing, added, size, time, kind (no longer a regular file), content, content in place (same size and
    modification time), older record (written by an llmkit that recorded no content), or remote (a remote
    input's listing: ``detail`` says what differs)."""

    file: Path
    how: str
    detail: str = ""


def listing(path: Path) -> dict[str, Path] | None:
    """Relative name -> file under ``path`` (``{"": path}`` for a single file); None when it does not exist."""
    if not path.exists():
        return None
    if not path.is_dir():
        return {"": path}
    out: dict[str, Path] = {}
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            p = Path(root) / name
            out[p.relative_to(path).as_posix()] = p
    return out


def _stat(p: Path) -> os.stat_result:
    try:
        return os.stat(p)
    except OSError:  # a dangling link inside a folder: fingerprinted as the link itself
        return os.lstat(p)


def _key(p: Path, st: os.stat_result) -> tuple:
    return str(p), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


class Fingerprints:
    """Takes and checks fingerprints for one run. ``rehash``: read every sealed file again too.
    ``renewed``: a check renewed a record's seal or time (the manifest is worth saving)."""

    def __init__(self, *, rehash: bool = False, progress: ProgressFactory | None = None) -> None:
        self.rehash = rehash
        self.progress = progress
        self.renewed = False
        self._hashes: dict[tuple, tuple[str, list[int] | None]] = {}

    def take(self, path: Path, *, content: bool) -> dict[str, Entry] | None:
        """The fingerprint of ``path`` now; ``content``: with the sha256 of every regular file."""
        files = listing(path)
        if files is None:
            return None
        out: dict[str, Entry] = {}
        todo: dict[str, tuple[Path, os.stat_result]] = {}
        for rel, p in files.items():
            st = _stat(p)
            out[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
            if content and stat.S_ISREG(st.st_mode):
                todo[rel] = (p, st)
        with self._bar(path, todo.values()) as advance:
            for rel, (p, st) in todo.items():
                sha, seal, st = self._hash(p, st, advance)
                out[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha, "seal": seal}
        return out

    def check(self, path: Path, recorded: Any) -> Change | None:
        """None when ``path`` still matches ``recorded`` (renewing its seals), else the first change."""
        if isinstance(recorded, str):
            return Change(path, "older record")
        files = listing(path)
        if recorded is None or files is None:
            return None if recorded is files else Change(path, "missing" if files is None else "added")
        for rel in sorted(set(recorded) | set(files)):
            if rel not in files or rel not in recorded:
                return Change(files.get(rel, path / rel), "missing" if rel not in files else "added")
        todo: dict[str, tuple[Path, os.stat_result]] = {}
        for rel, p in files.items():
            entry, st = recorded[rel], _stat(p)
            if st.st_size != entry["size"]:
                return Change(p, "size")
            if entry.get("sha256") is None:
                if st.st_mtime_ns != entry["mtime_ns"]:
                    return Change(p, "time")
            elif not stat.S_ISREG(st.st_mode):
                return Change(p, "kind")
            elif self.rehash or entry.get("seal") != [st.st_ino, st.st_ctime_ns] or st.st_mtime_ns != entry["mtime_ns"]:
                todo[rel] = (p, st)
            else:  # sealed: its content is the recorded one, so recording it again as an input reads nothing
                self._hashes.setdefault(_key(p, st), (entry["sha256"], entry["seal"]))
        with self._bar(path, todo.values()) as advance:
            for rel, (p, st) in todo.items():
                entry = recorded[rel]
                sha, seal, st = self._hash(p, st, advance)
                if sha != entry["sha256"]:
                    return Change(p, "content in place" if st.st_mtime_ns == entry["mtime_ns"] else "content")
                if entry.get("seal") != seal or entry["mtime_ns"] != st.st_mtime_ns:
                    entry.update(mtime_ns=st.st_mtime_ns, seal=seal)
                    self.renewed = True
        return None

    def _bar(self, path: Path, todo: Any) -> Any:
        """One progress bar for the files of ``path`` still to read (none when all are known)."""
        total = sum(st.st_size for p, st in todo if _key(p, st) not in self._hashes)
        if self.progress is None or not total:
            return nullcontext(lambda n: None)
        return self.progress(f"sha256 {path.name}", total)

    def _hash(
        self, p: Path, st: os.stat_result, advance: Callable[[int], None]
    ) -> tuple[str, list[int] | None, os.stat_result]:
        """(sha256, seal, stat) of the regular file ``p`` whose stat was ``st``: read once per run."""
        for _ in range(2):
            known = self._hashes.get(_key(p, st))
            if known is not None:
                return known[0], known[1], st
            sha = hash_file(p, "sha256", progress=advance)
            done, after = time.time_ns(), _stat(p)
            if _key(p, after) == _key(p, st):
                seal = [st.st_ino, st.st_ctime_ns] if done - st.st_ctime_ns >= SEAL_MARGIN_NS else None
                self._hashes[_key(p, st)] = (sha, seal)
                return sha, seal, st
            st = after
        raise InputError(
            "changed while llmkit was reading it",
            path=p,
            hint="another program is writing into the work folder; run the recipe again once it is done",
        )
