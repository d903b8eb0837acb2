"""Outputs on the hub: ``-o hf://owner/name[@branch][/folder]`` (a model folder) or ``-o hf://owner/name/model.ckpt``.

:class:`HubStaging` is the writer's stage (``llmkit.io.core.staging.Staging``) for a hub repo, through
huggingface_hub's commit API, with the guarantees of a local output the hub's way:

- **Stage.** The hub needs a file's sha256 and size before its upload, so each file is written into a private
  temporary folder (``$TMPDIR/llmkit-upload-*``); once closed it is uploaded on a thread (LFS, or Xet where the
  client uses it) while the next file is computed, then deleted: at most two files are on local disk at once
  (the one written and the one uploading). Uploaded objects are invisible until a commit names them.
- **Commit.** One ``create_commit`` with every file (uploaded ones by reference, small ones inline), deletions
  of the old output's files that ``--force`` replaces and this run does not write, and ``parent_commit`` the
  branch's head seen before any upload: everything appears at once, and of two runs aimed at one repo the
  second one's commit is refused (nothing of it is committed).
- **Refusals.** Existing files of this layout under the folder without ``--force``; an output that is, is
  inside or holds one of the job's remote inputs; no token. A missing repo is created (as ``hf upload`` does,
  with the account's default visibility), a missing branch from the default branch's head, both only when the
  run starts writing (never for ``--dry-run``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import unquote

from llmkit.errors import InputError, OutputExistsError
from llmkit.io.core.staging import ExistingFolder
from llmkit.io.remote.stage import RemoteStage, pid_alive
from llmkit.io.remote.store import current_endpoint

UPLOAD_MARK = "llmkit-upload-"
COMMIT_MESSAGE = "Upload with llmkit"
_CHANGED = frozenset({409, 412})  # the hub's answers to a commit whose parent is no longer the branch head
T = TypeVar("T")


def parse_hub_output(url: str) -> tuple[str, str | None, str]:
    """``hf://owner/name[@branch][/path]`` -> (repo, branch or None, path in the repo, ``""`` for the top)."""
    parts = [p for p in url[len("hf://") :].split("/") if p]
    if len(parts) < 2:
        raise InputError("a hub output needs a repo", path=url, hint="use hf://owner/name[@branch][/folder]")
    name, _, branch = parts[1].partition("@")
    if not name or parts[1].endswith("@"):
        raise InputError("a hub output needs a repo name", path=url, hint="use hf://owner/name[@branch][/folder]")
    return f"{parts[0]}/{name}", unquote(branch) or None, "/".join(parts[2:])


def remove_dead_uploads(tmp: Path) -> None:
    """Remove the upload folders of runs of this machine that were killed (their process is gone)."""
    try:
        entries = list(os.scandir(tmp))
    except OSError:
        return
    for e in entries:
        pid = e.name[len(UPLOAD_MARK) :].partition("-")[0]
        if e.name.startswith(UPLOAD_MARK) and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(e.path, ignore_errors=True)


class HubStaging(RemoteStage):
    """The pending commit of one run's output in a hub repo; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        one_file: bool,
        writes: Callable[[str], bool],
        owned: Callable[[str], bool],
        force: bool,
    ):
        from huggingface_hub import HfApi, get_token
        from huggingface_hub.utils import disable_progress_bars, logging

        from llmkit.redact import register_secret

        super().__init__(url, one_file=one_file, writes=writes, owned=owned, force=force)
        self.repo, self.branch, self.folder = parse_hub_output(self.url)
        if one_file and not self.folder:
            raise InputError(
                "a one-file output needs a file name", path=self.url, hint="use hf://owner/name/model.ckpt"
            )
        self.endpoint = current_endpoint()
        token = get_token()
        if not token:
            raise InputError(
                f"writing to {self.repo} on {self.endpoint} needs a token",
                path=self.url,
                hint="set HF_TOKEN or run hf auth login with a token that can write to it",
            )
        register_secret(token)
        logging.set_verbosity_error()
        disable_progress_bars()
        self.api = HfApi(endpoint=self.endpoint, token=token)
        self.scratch: Path | None = Path(tempfile.gettempdir())  # where files pass through (the disk check)
        self.folder_path: Path | None = None  # this run's private upload folder, made by open()
        self.parent: str | None = None  # the branch head the listing was read at (None: no repo yet)
        self._missing: str | None = None  # "repo" | "branch": made by open()
        self._existing = ExistingFolder()
        self._uploaded: dict[str, Any] = {}  # name -> CommitOperationAdd, uploaded
        self._sizes: dict[str, int] = {}
        self._small: dict[str, bytes] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future[None] | None = None

    # ---- names and errors ----
    def _in_repo(self, name: str) -> str:
        return self.folder if self.one_file else f"{self.folder}/{name}".lstrip("/")

    def _local(self, name: str) -> Path:
        assert self.folder_path is not None
        return self.folder_path / ("output" if self.one_file else name)

    def describe(self, e: BaseException) -> InputError:
        """One line about this output for a client failure (a refused token names what to set)."""
        from llmkit.hub_errors import http_cause, hub_error, status_of

        cause = http_cause(e)
        status = status_of(cause) if cause is not None else None
        if status in (401, 403):
            return InputError(
                f"{self.endpoint} refused to let this run write to {self.repo} (HTTP {status})",
                path=self.url,
                hint="set HF_TOKEN or run hf auth login with a token that can write to it",
            )
        err = hub_error(cause or e, self.repo, self.endpoint)
        return InputError(err.message, path=self.url, hint=err.hint)

    def _guard(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except InputError:
            raise
        except Exception as e:
            raise self.describe(e) from None

    # ---- what the branch holds ----
    def _listing(self) -> list[str]:
        """The repo's files at the branch (its head in :attr:`parent`); a missing repo or branch lists what it
        will start from (nothing, or the default branch)."""
        from huggingface_hub import errors

        def info(revision: str | None) -> Any:
            try:
                return self.api.model_info(self.repo, revision=revision)
            except errors.GatedRepoError as e:
                raise self.describe(e) from None

        self._missing = None
        try:
            got = info(self.branch)
        except errors.RepositoryNotFoundError:
            self._missing, self.parent = "repo", None
            return []
        except errors.RevisionNotFoundError:
            if self.branch is None:
                raise InputError(
                    "the repo has no main branch", path=self.url, hint="name a branch: hf://owner/name@branch"
                ) from None
            self._missing = "branch"
            got = self._guard(lambda: info(None))
        except InputError:
            raise
        except Exception as e:
            raise self.describe(e) from None
        self.parent = got.sha
        return [s.rfilename for s in got.siblings or []]

    def check(self) -> ExistingFolder:
        """What the output's existing files become; raises if this run may not replace them."""
        files = self._listing()
        if self.one_file:
            if any(f.startswith(self.folder + "/") for f in files):
                raise InputError(
                    "the output is a folder in the repo", path=self.url, hint="choose another file name for -o"
                )
            names = [self.target.name] if self.folder in files else []
        else:
            prefix = f"{self.folder}/" if self.folder else ""
            names = [f[len(prefix) :] for f in files if f.startswith(prefix) and "/" not in f[len(prefix) :]]
        self._existing = self.sort_existing(names)
        return self._existing

    # ---- the protocol ----
    def open(self) -> object:
        """Make a missing repo or branch, check again, and make this run's private upload folder."""
        self.check()
        if self._missing == "repo":
            self._guard(lambda: self.api.create_repo(self.repo, exist_ok=True))
            self.check()
        branch = self.branch
        if self._missing == "branch" and branch is not None:
            self._guard(lambda: self.api.create_branch(self.repo, branch=branch, revision=self.parent, exist_ok=True))
            self.check()
        assert self.scratch is not None
        remove_dead_uploads(self.scratch)
        self.folder_path = Path(tempfile.mkdtemp(prefix=f"{UPLOAD_MARK}{os.getpid()}-", dir=self.scratch))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmkit-hub-upload")
        return self.target

    def open_file(self, name: str, size: int = 0) -> BinaryIO:
        return open(self._local(name), "w+b")  # the writer keeps it open; close_file closes it

    def close_file(self, name: str, f: BinaryIO) -> None:
        """Close the file and start its upload (after the previous one finished: two files on disk at most)."""
        f.flush()
        f.close()
        self._sizes[name] = self._local(name).stat().st_size
        self._wait()
        assert self._pool is not None
        self._pending = self._pool.submit(self._upload, name)

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # an upload's error, already one line about this output

    def _upload(self, name: str) -> None:
        """Upload one closed file (the hub keeps it unnamed until the commit), then delete the local copy."""
        from huggingface_hub import CommitOperationAdd

        local = self._local(name)
        op = CommitOperationAdd(path_in_repo=self._in_repo(name), path_or_fileobj=str(local))
        self._guard(lambda: self.api.preupload_lfs_files(self.repo, [op], revision=self.branch, free_memory=True))
        if op._upload_mode == "regular":  # a small file goes inline in the commit: keep its bytes
            op.path_or_fileobj = local.read_bytes()
        self._uploaded[name] = op
        local.unlink()

    def size(self, name: str) -> int:
        return self._sizes[name] if name in self._sizes else len(self._small[name])

    def write_file(self, name: str, data: bytes) -> None:
        self._small[name] = data

    def commit(self) -> None:
        """One commit of every file and the replaced files' deletions, on the head seen before any upload."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        try:
            self._wait()
            written = set(self._uploaded) | set(self._small)
            ops: list[Any] = [*self._uploaded.values()]
            ops += [CommitOperationAdd(self._in_repo(n), d) for n, d in self._small.items() if n not in self._uploaded]
            ops += [CommitOperationDelete(self._in_repo(n)) for n in self._existing.replaced if n not in written]
            try:
                self.api.create_commit(
                    self.repo, ops, commit_message=COMMIT_MESSAGE, revision=self.branch, parent_commit=self.parent
                )
            except Exception as e:
                from llmkit.hub_errors import http_cause, status_of

                if status_of(http_cause(e)) in _CHANGED:
                    raise OutputExistsError(
                        "the repo changed while this run wrote it; nothing was committed",
                        path=self.url,
                        hint="run again (with --force if the output is there now)",
                    ) from None
                raise self.describe(e) from None
            self.kept, self.replaced = self._existing.kept, self._existing.replaced
        finally:
            self.discard()

    def discard(self) -> None:
        """Stop the uploads and remove the private folder (what was uploaded stays unnamed: never committed)."""
        if self._pool is not None:
            if self._pending is not None:
                self._pending.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._pending = None
        if self.folder_path is not None:
            shutil.rmtree(self.folder_path, ignore_errors=True)
            self.folder_path = None
