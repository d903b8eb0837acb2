"""All-or-nothing outputs: a run claims its output, builds it beside the target and makes it final at once.

- **Claim.** :class:`OutputClaim` holds an exclusive ``flock`` on a hidden lock file beside the output
  (``.NAME.llmkit-lock``) for the whole run, so a second run aimed at the same ``-o`` fails at once with
  one line instead of mixing its files with the first run's. The kernel drops the lock when a process
  dies (SIGKILL included), so a stale lock never blocks a re-run.
- **Stage.** Every file of the run is written into a new hidden folder beside the target
  (``.NAME.llmkit-stage-PID``), or for a one-file output a hidden file beside it.
- **Commit.** One ``rename`` makes the output final: a new output is renamed into place (refusing to
  replace one that appeared meanwhile); an existing folder is *exchanged* with the stage in one atomic
  ``renameat2(RENAME_EXCHANGE)``, after the files of the old folder that this run does not replace were
  hard-linked into the stage (they are kept, untouched: same inode, same bytes). So a kill at any moment
  leaves either the old folder or the whole new one under the final name, never a mix.
- **Leftovers.** A killed run's stage is removed by the next run that claims the same output (the
  claim proves its owner is gone).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from llmkit.errors import InputError, OutputExistsError, writing
from llmkit.io.core.claim import OutputClaim

STAGE_MARK = ".llmkit-stage-"


OLD_MARK = ".llmkit-old-"


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


_AT_FDCWD = -100


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the kernel, libc or filesystem lacks it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; ``FileExistsError`` if ``dst`` exists (atomically where supported)."""
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):  # fallback: the claim keeps other llmkit runs out of this window
        raise FileExistsError(errno.EEXIST, "File exists", str(dst))
    os.rename(src, dst)


def exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one atomic step; False where the filesystem cannot."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems do not sync folders
    finally:
        os.close(fd)


def remove_leftovers(target: Path) -> list[str]:
    """Remove the stages of earlier runs on ``target`` that died (call only while holding its claim)."""
    removed: list[str] = []
    prefixes = (f".{target.name}{STAGE_MARK}", f".{target.name}{OLD_MARK}")
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(prefixes[1]) and not os.path.lexists(target):
            os.rename(entry.path, target)  # killed between the two renames of the fallback: the old output is back
            removed.append(entry.name)
        elif entry.name.startswith(prefixes):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed.append(entry.name)
    return removed


@dataclass
class ExistingFolder:
    """An existing output folder sorted out: ``replaced`` (this run's files or stale ones of its own
    kind, superseded by the new output) and ``kept`` (the user's files, carried into the new output)."""

    replaced: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def sort_existing(
    folder: Path, *, writes: Callable[[str], bool], owned: Callable[[str], bool], force: bool
) -> ExistingFolder:
    """What becomes of each entry of the existing output ``folder``; raise if the run may not replace it.

    ``writes(name)``: this run writes ``name``; ``owned(name)``: ``name`` is of the kind this command
    writes (its weight layout, config and tokenizer files), so ``--force`` removes a stale one. Without
    ``force`` any such entry is refused. Folders and special files cannot be carried into the new
    output in one atomic step, so they are refused too.
    """
    found = ExistingFolder()
    if not folder.is_dir():
        return found
    clash: list[str] = []
    special: list[str] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        name = entry.name
        if writes(name) or owned(name):
            (found.replaced if force else clash).append(name)
        elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
            found.kept.append(name)
        else:
            special.append(name + ("/" if entry.is_dir(follow_symlinks=False) else ""))
    if clash:
        raise OutputExistsError(
            f"output folder already holds {', '.join(clash[:3])}" + (" ..." if len(clash) > 3 else ""),
            path=folder,
            hint="pass --force to overwrite, or choose another -o",
        )
    if special:
        raise InputError(
            f"the output folder holds {', '.join(special[:3])}"
            + (" ..." if len(special) > 3 else "")
            + ", which llmkit cannot keep while it replaces the folder as a whole",
            path=folder,
            hint="choose a new or empty -o, or move those out first",
        )
    return found


def _carry(folder: Path, stage: Path, names: list[str]) -> None:
    """Hard-link the user's files of ``folder`` into ``stage``: same inode, nothing copied or changed."""
    for name in names:
        src = folder / name
        try:
            if src.is_symlink():
                os.symlink(os.readlink(src), stage / name)
            else:
                os.link(src, stage / name, follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed by its owner meanwhile
        except OSError as e:
            raise InputError(
                f"cannot keep {name} in the new output ({e.strerror})",
                path=folder,
                hint="move it out of the output folder, or choose another -o",
            ) from e


class Staging(Protocol):
    """What a writer builds its output in: a local stage beside the target (:class:`StagedFolder`,
    :class:`StagedFile`) or an object store's pending uploads (``llmkit.io.remote.sink``).

    ``check()`` raises if the run may not write the target (and says what it would replace); ``open()``
    claims it; files are written with ``open_file(name, size)``/``close_file`` (a handle that is written front to back:
    a remote stage refuses a seek backwards) and ``write_file``; ``commit()`` makes everything final at
    once, ``discard()`` keeps nothing. ``remote``: the stage is no local path (no fsync, no disk check).
    ``scratch``: a remote stage's local folder that each file passes through, from ``open_file`` until its
    upload after ``close_file`` (at most two files at once: one written, one uploading); None if none does.
    """

    target: Path
    kept: list[str]
    replaced: list[str]
    remote: bool
    scratch: Path | None

    def check(self) -> ExistingFolder: ...

    def open(self) -> object: ...

    def path(self, name: str) -> Path: ...

    def open_file(self, name: str, size: int = 0) -> BinaryIO: ...

    def close_file(self, name: str, f: BinaryIO) -> None: ...

    def size(self, name: str) -> int: ...

    def write_file(self, name: str, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def discard(self) -> None: ...


def staged_output(
    target: Path,
    *,
    one_file: bool,
    writes: Callable[[str], bool] = lambda n: False,
    owned: Callable[[str], bool] = lambda n: False,
    force: bool = False,
) -> Staging:
    """The stage for ``target``: a folder (or ``one_file``) beside it, or an object store's uploads for a
    URL (``s3://``, ``hf://``)."""
    from llmkit.io.remote.url import remote_url

    if remote_url(target) is not None:
        from llmkit.io.remote.sink import remote_staging

        return remote_staging(target, one_file=one_file, writes=writes, owned=owned, force=force)
    if one_file:
        return StagedFile(target, force=force)
    return StagedFolder(target, writes=writes, owned=owned, force=force)


class _Staged:
    """What both staged outputs share: the target, its claim, the hidden stage name beside it."""

    remote = False
    scratch: Path | None = None
    salvage: Callable[[Path], None] | None = None  # under the claim, before dead stages go (llmkit.cluster.resume)

    def __init__(self, target: Path, force: bool):
        self.target = Path(target)
        self.force = force
        self.stage = self.target.parent / f".{self.target.name}{STAGE_MARK}{os.getpid()}"
        self.claim = OutputClaim(self.target)
        self.kept: list[str] = []
        self.replaced: list[str] = []
        self.leftovers: list[str] = []

    def check(self) -> ExistingFolder:
        raise NotImplementedError

    def _make_stage(self) -> None:
        """Create the stage before any byte is written (a file stage is created by its writer)."""

    def path(self, name: str) -> Path:
        raise NotImplementedError

    def open_file(self, name: str, size: int = 0) -> BinaryIO:
        """A new file of the stage, about ``size`` bytes (a hint: an upload picks its part size from it)."""
        return open(self.path(name), "w+b")  # the writer keeps it open; close_file closes it

    def close_file(self, name: str, f: BinaryIO) -> None:
        """Flush, fsync and close a file of the stage."""
        f.flush()
        os.fsync(f.fileno())
        f.close()

    def size(self, name: str) -> int:
        return self.path(name).stat().st_size

    def write_file(self, name: str, data: bytes) -> None:
        self.path(name).write_bytes(data)

    def open(self) -> Path:
        """Claim the target, check it under the claim, remove dead runs' leftovers, make the stage."""
        self.claim.acquire()
        try:
            self.check()
            if self.salvage is not None:
                self.salvage(self.target)
            self.leftovers = remove_leftovers(self.target)
            self._make_stage()
        except BaseException:
            self.claim.release()
            raise
        return self.stage

    def _rename_new(self) -> None:
        """The stage becomes the target, which must not exist (it may have appeared: another tool)."""
        try:
            rename_noreplace(self.stage, self.target)
        except FileExistsError:
            raise OutputExistsError(
                "the output appeared while this run was writing it; nothing was kept",
                path=self.target,
                hint="choose another -o, or pass --force",
            ) from None


class StagedFolder(_Staged):
    """One run's output folder, built under a hidden name beside ``target`` and made final by one rename.

    ``open()`` claims the target, removes dead runs' leftovers and creates the stage; files are written
    at ``path(name)``; ``commit()`` makes the folder final (see the module docstring); ``discard()``
    removes the stage. ``writes``/``owned``/``force`` decide what an existing folder's entries become
    (:func:`sort_existing`), checked again under the claim at commit.
    """

    def __init__(
        self,
        target: Path,
        *,
        writes: Callable[[str], bool],
        owned: Callable[[str], bool] = lambda n: False,
        force: bool = False,
    ):
        super().__init__(Path(os.path.realpath(target)) if os.path.islink(target) else Path(target), force)
        self.writes, self.owned = writes, owned

    def check(self) -> ExistingFolder:
        """What an existing target holds (raises if this run may not replace it); no lock needed."""
        return sort_existing(self.target, writes=self.writes, owned=self.owned, force=self.force)

    def _make_stage(self) -> None:
        with writing(self.target):
            self.stage.mkdir()

    def path(self, name: str) -> Path:
        return self.stage / name

    def commit(self) -> None:
        try:
            existing = self.check()
            fsync_dir(self.stage)
            if not self.target.exists():
                self._rename_new()
            else:
                self._replace(existing)
            fsync_dir(self.target.parent)
            self.kept, self.replaced = existing.kept, existing.replaced
        finally:
            self.discard()

    def _replace(self, existing: ExistingFolder) -> None:
        _carry(self.target, self.stage, existing.kept)
        os.chmod(self.stage, stat.S_IMODE(os.stat(self.target).st_mode))
        fsync_dir(self.stage)
        if not exchange(self.stage, self.target):  # no atomic swap here: move the old one aside first
            aside = self.target.parent / f".{self.target.name}{OLD_MARK}{os.getpid()}"
            os.rename(self.target, aside)
            os.rename(self.stage, self.target)
            os.rename(aside, self.stage)
        # The stage name now holds the old folder: its files were replaced or linked into the new one.
        # A file that arrived in it since the check is carried over too, never deleted.
        late = [n for n in os.listdir(self.stage) if n not in existing.replaced and n not in existing.kept]
        _carry(
            self.stage,
            self.target,
            [n for n in late if not (self.stage / n).is_dir() and not os.path.lexists(self.target / n)],
        )

    def discard(self) -> None:
        """Remove the stage (after a commit: the old folder's entries) and release the claim."""
        try:
            if self.stage.is_dir():
                shutil.rmtree(self.stage, ignore_errors=True)
        finally:
            self.claim.release()


class StagedFile(_Staged):
    """A one-file output (``-o model.ckpt``), staged as a hidden file beside it and renamed into place.

    The same claim as :class:`StagedFolder`; ``force`` replaces only this file (never a non-regular one).
    """

    def __init__(self, target: Path, *, force: bool = False):
        super().__init__(target, force)

    def check(self) -> ExistingFolder:
        """Raise if this run may not replace an existing ``target``; what it would replace."""
        if not os.path.lexists(self.target):
            return ExistingFolder()
        if not self.force:
            raise OutputExistsError(
                "output file exists", path=self.target, hint="pass --force to overwrite, or choose another -o"
            )
        if not stat.S_ISREG(os.lstat(self.target).st_mode):
            raise InputError(
                "the output path exists and is not a regular file; llmkit replaces only files",
                path=self.target,
                hint="choose another -o",
            )
        return ExistingFolder(replaced=[self.target.name])

    def path(self, name: str) -> Path:
        return self.stage

    def commit(self) -> None:
        try:
            self.check()
            existed = os.path.lexists(self.target)
            with writing(self.target):
                if self.force:
                    os.replace(self.stage, self.target)
                else:
                    self._rename_new()
            fsync_dir(self.target.parent)
            self.replaced = [self.target.name] if existed else []
        finally:
            self.discard()

    def discard(self) -> None:
        try:
            self.stage.unlink(missing_ok=True)
        finally:
            self.claim.release()
