"""Where ``llmkit download`` keeps bytes until they verify: a staging folder no repo file can collide with.

- The staging folder is a hidden sibling of DIR, ``.<DIR name>.llmkit-download`` beside it, so no repo path
  (always inside DIR) can land in it. Only when that is not possible (DIR's parent is not writable, or DIR is
  on another file system than its parent, e.g. a mount point) is it ``DIR/.llmkit-download``, and then a repo
  file under that name is refused before anything is fetched.
- Inside it every file has its own folder (``0/``, ``1/``, ...) for the client, so no repo file collides with
  another one's bookkeeping (``.cache/huggingface/...``) either.
- A run holds an exclusive lock on ``llmkit-download.lock`` in it: a second run into the same DIR is refused
  while the first runs; a folder left by a killed run (SIGKILL, power loss) is unlocked, and the next run
  empties it before it starts (partial files are discarded; finished files were already verified and renamed
  into DIR). The folder is removed when the run ends, whatever the outcome.
- :func:`cancellable_bar`: the client's progress hook, which stops a transfer at its next chunk once a stop
  event is set (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

from llmkit.errors import InputError
from llmkit.io.core.claim import LockBusy, LockUnsupported, lock_file
from llmkit.io.core.destination import make_folder, remove_empty

SUFFIX = ".llmkit-download"  # the sibling: .<DIR name>.llmkit-download
INSIDE = ".llmkit-download"  # DIR/.llmkit-download, when no sibling is possible
LOCK = "llmkit-download.lock"


class DownloadCancelled(Exception):
    """A transfer stopped because the run is stopping (raised inside the client, caught by the runner)."""


def staging_dir(out: Path) -> Path:
    """The staging folder of a download into ``out`` (see the module docstring)."""
    full = Path(os.path.abspath(out))
    if full.name and _can_stage_beside(full):
        return full.parent / f".{full.name}{SUFFIX}"
    return full / INSIDE


def _can_stage_beside(out: Path) -> bool:
    """True if a folder beside ``out`` can be made, on the file system ``out`` is (or will be) on."""
    parent = out.parent
    if not parent.exists():
        return True  # made together with out, by the same mkdir
    if not os.access(parent, os.W_OK | os.X_OK):
        return False
    if not out.exists():
        return True
    try:
        return os.stat(out).st_dev == os.stat(parent).st_dev
    except OSError:
        return False


def refuse_collisions(staging: Path, out: Path, paths: list[str]) -> None:
    """With the staging folder inside ``out``, a repo file under its name cannot be downloaded: refuse it."""
    if staging.parent != Path(os.path.abspath(out)):
        return
    clash = next((p for p in paths if p.split("/", 1)[0] == staging.name), None)
    if clash is not None:
        raise InputError(
            f"the repo has {clash!r}, under the name of the staging folder {staging.name} that this "
            "download needs inside the output folder (its parent folder is not writable or is on "
            "another file system); nothing was downloaded",
            path=out,
            hint="choose an -o whose parent folder is writable and on the same file system: the "
            "staging folder then goes beside it",
        )


class Staging:
    """The locked staging folder of one run: ``with Staging(path, out) as s: s.folder(i)``."""

    def __init__(self, path: Path, out: Path):
        self.path = path
        self.out = out
        self._fd: int | None = None
        self._owned = False  # locked by this run: only then is the folder this run's to empty and remove
        self._made: list[Path] = []

    def __enter__(self) -> Staging:
        self._claim()
        try:
            self._lock()
            for entry in self.path.iterdir():  # what a killed run left: partial, unverified, discarded
                if entry.name != LOCK:
                    _remove(entry)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    def folder(self, index: int) -> Path:
        """The client's own folder for the ``index``-th file of the run."""
        return self.path / str(index)

    def _claim(self) -> None:
        if os.path.lexists(self.path) and (self.path.is_symlink() or not self.path.is_dir()):
            raise InputError(
                f"{self.path} is in the way of the download's staging folder",
                path=self.out,
                hint=f"move or remove {self.path}, or choose another -o",
            )
        if self.path.is_dir() and any(self.path.iterdir()) and not (self.path / LOCK).exists():
            raise InputError(
                f"{self.path} exists and is not a staging folder of llmkit download",
                path=self.out,
                hint=f"move or remove {self.path}, or choose another -o",
            )
        self._made = make_folder(self.path)

    def _lock(self) -> None:
        lock = self.path / LOCK
        for _ in range(10):
            try:
                fd = lock_file(lock, errors_name=lock)
            except LockBusy as busy:
                raise InputError(
                    f"another llmkit download{busy.holder} is writing this folder; nothing was changed",
                    path=self.out,
                    hint="wait for that run to finish (or stop it), then run this again",
                ) from None
            except LockUnsupported:  # a file system without locks (some NFS): run unlocked
                self._owned = True
                return
            if fd is not None:
                self._fd, self._owned = fd, True
                return
            make_folder(self.path)  # the run that held it removed its folder: make it again and retry
        raise InputError(
            "could not claim this folder for the download",
            path=self.out,
            hint="another download into this folder keeps starting and stopping; try again",
        )

    def _release(self) -> None:
        if not self._owned:  # another run's folder (or none): not ours to touch
            return
        for entry in _entries(self.path):  # the lock file last: a second run never sees a lockless leftover
            if entry.name != LOCK:
                with contextlib.suppress(OSError):  # rmtree below has the last word
                    _remove(entry)
        shutil.rmtree(self.path, ignore_errors=True)  # the lock file too, while it is still held
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._owned = False
        remove_empty([p for p in self._made if p != self.path])


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink()


def cancellable_bar(stop: threading.Event) -> type:
    """A progress-bar class for the client (``tqdm_class``) that stops the transfer once ``stop`` is set."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class StopAware(hf_tqdm):
        stop_event = stop  # also cuts short a wait between retries (llmkit.hub_transfer._pause)

        def update(self, n=1):
            if stop.is_set():
                raise DownloadCancelled()
            return super().update(n)

    return StopAware
