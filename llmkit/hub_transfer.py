"""The bytes of ``llmkit download``: each repo file fetched by huggingface_hub into its own staging folder,
verified by content, renamed into place; several at once, all stopping at their next chunk when the run stops.

A file is checked against what the hub announces for it: the sha256 of an LFS file, the git blob sha1 of a
small one (:func:`file_digest`). Bytes that arrive corrupted or short never get the file's name.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import CheckFailed, InputError, writing
from llmkit.hub_errors import Attempts, client_retried_get, http_cause, hub_error, one_line, with_retries
from llmkit.hub_staging import DownloadCancelled, cancellable_bar

_CHUNK = 8 * 2**20
RESUME_CHUNK = 16 * 2**10  # bytes the client writes at a time, so a dropped transfer resumes close to where it was


@dataclass
class FileOutcome:
    path: str
    size: int
    status: str  # downloaded | skipped | would download
    digest: str | None = None
    verified: str | None = None  # sha256 | git-sha1 | table | None


@dataclass
class RemoteFile:
    path: str
    size: int
    algorithm: str  # sha256 (LFS) or git-sha1
    digest: str


def _git_sha1(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path, algorithm: str) -> str:
    if algorithm == "git-sha1":
        return _git_sha1(path)
    from llmkit.hashing import hash_file

    return hash_file(path, algorithm)


def fetch_all(todo: list[RemoteFile], jobs: int, advance, fetch) -> list[FileOutcome]:
    """``fetch(i, remote, bar_class)`` for every file, ``jobs`` at a time; the first failure is raised once every
    file has had its chance (what verified is kept, so a re-run fetches less). On Ctrl-C / SIGTERM in the main
    thread every transfer stops at its next chunk and nothing new starts. Returns or raises only once every
    worker is done, so the staging folder can be removed safely."""
    stop, lock = threading.Event(), threading.Lock()
    bar = cancellable_bar(stop)

    def one(i: int, r: RemoteFile) -> FileOutcome:
        if stop.is_set():
            raise DownloadCancelled()
        outcome = fetch(i, r, bar)
        with lock:
            advance(r.size)
        return outcome

    pool = ThreadPoolExecutor(max_workers=min(jobs, len(todo)))
    try:
        futures = [pool.submit(one, i, r) for i, r in enumerate(todo)]
        wait(futures)
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for f in futures:
        error = f.exception()
        if error is not None:
            raise error
    return [f.result() for f in futures]


def quiet_client() -> None:
    """Quiet the client (its retry messages and tqdm bars would break the one-line-error and rich-progress
    conventions: llmkit reports the outcome itself) and make its resume fine-grained."""
    from huggingface_hub import constants
    from huggingface_hub.utils import disable_progress_bars, logging

    logging.set_verbosity_error()
    disable_progress_bars()
    # The client resumes a dropped transfer from the bytes it has written, in chunks of this size (10 MB by
    # default): with smaller chunks a drop early in a file resumes instead of restarting from byte 0.
    constants.DOWNLOAD_CHUNK_SIZE = RESUME_CHUNK


def fetch_file(
    repo: str,
    revision: str,
    endpoint: str,
    r: RemoteFile,
    staging: Path,
    target: Path,
    verify: bool,
    bar: type | None = None,
) -> FileOutcome:
    """One file: fetched by huggingface_hub into its own staging folder, verified, renamed into place."""
    from huggingface_hub import get_token, hf_hub_download

    attempts = Attempts()
    try:
        got = Path(
            with_retries(
                lambda: hf_hub_download(
                    repo,
                    r.path,
                    revision=revision,
                    local_dir=staging,
                    endpoint=endpoint,
                    token=get_token(),
                    force_download=True,
                    tqdm_class=bar,
                ),
                attempts,
                client_retried=client_retried_get,
                sleep=_pause(bar),
            )
        )
    except DownloadCancelled:
        raise
    except Exception as e:
        cause = http_cause(e)  # the client wraps a refused file in "Force download failed"
        if cause is not None:
            raise hub_error(cause, repo, endpoint, file=r.path, path=target, attempts=attempts) from e
        raise InputError(
            f"the download of {r.path} failed ({type(e).__name__}: {one_line(str(e))}); "
            "nothing was kept under its name",
            path=target,
            hint="run the same command again: verified files are skipped",
        ) from e
    if got.stat().st_size != r.size:
        raise CheckFailed(
            f"received {got.stat().st_size:,} bytes, the hub announced {r.size:,}; nothing was kept",
            path=target,
            hint="run the same command again",
        )
    digest = file_digest(got, r.algorithm) if verify else None
    if verify and digest != r.digest:
        raise CheckFailed(
            f"the received bytes have {r.algorithm} {digest}, the hub announced {r.digest}: corrupted "
            "in transit; nothing was kept under this name",
            path=target,
            hint="run the same command again, or try another --endpoint",
        )
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(got, target)
    return FileOutcome(r.path, r.size, "downloaded", digest or r.digest, r.algorithm if verify else None)


def _pause(bar: type | None):
    """The wait between retries of a transfer: cut short (the transfer cancelled) when the run stops."""
    stop = getattr(bar, "stop_event", None)

    def pause(seconds: float) -> None:
        if stop is None:
            time.sleep(seconds)
        elif stop.wait(seconds):
            raise DownloadCancelled()

    return pause
