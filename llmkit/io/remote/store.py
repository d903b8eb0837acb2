"""Where a remote input lives: a folder (or one file) on the hub, in S3 or on an HTTP server
(``io/remote/http.py``), listed once with each file's size and the digest its store publishes, read by
exact byte ranges with retries.

- ``hf://owner/name[@revision][/sub]``: ``huggingface_hub.HfFileSystem`` (endpoint: :func:`hub_endpoint`'s,
  else ``HF_ENDPOINT``, else huggingface.co; token: ``HF_TOKEN`` or ``hf auth login``, as ``llmkit download``); the revision is pinned to its commit when
  listed, so every read is of that commit. Digests: an LFS file's sha256, a small file's git blob sha1.
- ``s3://bucket/prefix``: ``s3fs`` (credentials and region from the usual AWS environment and config files;
  endpoint: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``). Digest: the object's ETag, which is the MD5 of
  a single-part upload and, for a multipart one, the MD5 of its parts' MD5s (the part size is asked for).

A failed read is tried again (:data:`TRIES` in all, the wait doubling from :data:`RETRY_WAIT` s); a missing
file, a refused token and a gated repo are not.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from llmkit.errors import InputError
from llmkit.io.remote.url import RemotePath, as_remote_path

TRIES = 5
RETRY_WAIT = 0.5  # seconds before the second try
_FINAL_STATUS = frozenset({400, 401, 403, 404, 416})
T = TypeVar("T")
_ENDPOINT: ContextVar[str | None] = ContextVar("llmkit_hub_endpoint", default=None)


@contextmanager
def hub_endpoint(url: str | None) -> Iterator[None]:
    """Within the block, ``hf://`` inputs (and registry names) are read from ``url``, the hub or a mirror
    (``--endpoint``; None: no change). Read when a source is opened, so open it inside the block."""
    token = _ENDPOINT.set(url or _ENDPOINT.get())
    try:
        yield
    finally:
        _ENDPOINT.reset(token)


def current_endpoint() -> str:
    """The hub ``hf://`` reads: :func:`hub_endpoint`'s, else ``HF_ENDPOINT``, else huggingface.co (as
    ``llmkit download``), without a trailing ``/``."""
    return (_ENDPOINT.get() or os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


@dataclass(frozen=True)
class RemoteEntry:
    """One remote file: ``name`` relative to the listed folder, ``key`` the file system's path of it,
    ``digest`` (algorithm, expected value) or None when the store publishes none."""

    name: str
    key: str
    size: int
    digest: tuple[str, str] | None


class Hasher:
    """The digest of a store's ``algorithm`` fed the file's bytes in order: ``sha256``, ``git-sha1`` (of
    ``blob <size>\\0`` + bytes), ``md5``, ``s3-multipart:<part size>`` (MD5 of the parts' MD5s, ``-<parts>``)."""

    def __init__(self, algorithm: str, size: int):
        self.algorithm = algorithm
        self.part_size = int(algorithm.split(":")[1]) if algorithm.startswith("s3-multipart:") else 0
        self._parts: list[bytes] = []
        self._in_part = 0
        if algorithm == "git-sha1":
            self._h = hashlib.sha1(b"blob %d\0" % size)
        elif algorithm == "sha256":
            self._h = hashlib.sha256()
        else:
            self._h = hashlib.md5()

    def update(self, data: bytes | memoryview) -> None:
        if not self.part_size:
            self._h.update(data)
            return
        view = memoryview(data)
        while len(view):
            take = min(len(view), self.part_size - self._in_part)
            self._h.update(view[:take])
            self._in_part += take
            view = view[take:]
            if self._in_part == self.part_size:
                self._parts.append(self._h.digest())
                self._h, self._in_part = hashlib.md5(), 0

    def hexdigest(self) -> str:
        if not self.part_size:
            return self._h.hexdigest()
        parts = self._parts + ([self._h.digest()] if self._in_part or not self._parts else [])
        return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


def _status(e: BaseException) -> int | None:
    from llmkit.hub_errors import http_cause, status_of

    cause = http_cause(e)
    return status_of(cause) if cause is not None else None


class Store:
    """A listed remote folder (or file): :meth:`entries`, and :meth:`fetch` of byte ranges."""

    url: str
    root: RemotePath  # what messages name
    revision: str | None = None  # the commit (hub) the listing is pinned to
    single: bool = False  # the URL named one file (``root`` is then its folder), not a folder
    no_digest = "the store publishes no digest"  # why a file without a digest is read unverified

    @property
    def pinned_url(self) -> str:
        """The URL of what was listed: on the hub at its commit (``hf://owner/name@sha[/path]``)."""
        return self.url

    def entries(self) -> dict[str, RemoteEntry]:
        raise NotImplementedError

    def _fetch_once(self, entry: RemoteEntry, start: int, end: int) -> bytes:
        raise NotImplementedError

    def unverified_line(self, names: list[str]) -> str | None:
        """The warning that the files ``names`` of this store that have no digest were read unverified, or None."""
        bare = sorted(n for n in names if self.entries()[n].digest is None)
        if len(bare) <= 1:
            return f"{bare[0]} from {self.root} was read unverified ({self.no_digest})" if bare else None
        listed = ", ".join(bare[:4]) + (f" and {len(bare) - 4} more" if len(bare) > 4 else "")
        return f"{len(bare)} files from {self.root} were read unverified ({self.no_digest}): {listed}"

    def describe(self, e: BaseException, what: str) -> InputError:
        return InputError(f"cannot read {what}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")

    def guarded(self, call: Callable[[], T]) -> T:
        """``call()``, a client failure turned into this store's one-line error about its URL."""
        try:
            return call()
        except InputError:
            raise
        except Exception as e:
            raise self.describe(e, self.url) from None

    def fetch(self, entry: RemoteEntry, start: int, end: int, sleep: Callable[[float], None] = time.sleep) -> bytes:
        """Bytes ``[start, end)`` of ``entry``, exactly: a short or failed read is tried again."""
        wait = RETRY_WAIT
        for attempt in range(1, TRIES + 1):
            try:
                data = self._fetch_once(entry, start, end)
                if len(data) == end - start:
                    return data
                problem: BaseException = OSError(f"got {len(data)} of {end - start} bytes")
            except InputError:
                raise
            except (FileNotFoundError, PermissionError) as e:
                raise self.describe(e, str(self.root / entry.name)) from None
            except Exception as e:
                if _status(e) in _FINAL_STATUS:
                    raise self.describe(e, str(self.root / entry.name)) from None
                problem = e
            if attempt == TRIES:
                raise InputError(
                    f"reading bytes {start}-{end} failed {TRIES} times: {problem}",
                    path=self.root / entry.name,
                    hint="check the connection and run again",
                ) from None
            sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")


class HubStore(Store):
    """A repo (or a folder or file of it) on the hub, pinned to the commit its revision names when listed."""

    def __init__(self, url: str):
        from huggingface_hub import HfApi, HfFileSystem, get_token
        from huggingface_hub.hf_file_system import HfFileSystemResolvedRepositoryPath

        from llmkit.redact import register_secret

        self.url = url
        self.endpoint = current_endpoint()
        token = get_token()
        register_secret(token)
        self.fs = HfFileSystem(endpoint=self.endpoint, token=token, skip_instance_cache=True)
        self._files: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.root = as_remote_path(url)

        def pin_and_list() -> dict[str, RemoteEntry]:
            resolved = self.fs.resolve_path(url[len("hf://") :])
            if not isinstance(resolved, HfFileSystemResolvedRepositoryPath):
                raise InputError(f"{url} is not a model repo", hint="use hf://owner/name[@revision][/path]")
            self.repo = resolved.repo_id
            info = HfApi(endpoint=self.endpoint, token=token).model_info(self.repo, revision=resolved.revision)
            self.revision = info.sha
            sub = f"/{resolved.path_in_repo}" if resolved.path_in_repo else ""
            self._key = f"{self.repo}@{self.revision}{sub}"
            return self._list()

        self._entries = self.guarded(pin_and_list)

    def describe(self, e: BaseException, what: str) -> InputError:
        from llmkit.hub_errors import hub_error

        err = hub_error(e, getattr(self, "repo", self.url), self.endpoint)
        return InputError(f"{what}: {err.message}", hint=getattr(err, "hint", None))

    def _entry(self, name: str, d: dict) -> RemoteEntry:
        lfs = d.get("lfs")
        sha256 = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        digest = ("sha256", sha256) if sha256 else ("git-sha1", d["blob_id"]) if d.get("blob_id") else None
        return RemoteEntry(name, d["name"], int(d["size"]), digest)

    def _list(self) -> dict[str, RemoteEntry]:
        info = self.fs.info(self._key)
        self.single = info["type"] == "file"
        if self.single:
            self.root = self.root.parent
            return {info["name"].rsplit("/", 1)[-1]: self._entry(info["name"].rsplit("/", 1)[-1], info)}
        listed: list[dict[str, Any]] = self.fs.ls(self._key, detail=True)  # type: ignore[assignment]  # detail=True: dicts
        return {
            d["name"].rsplit("/", 1)[-1]: self._entry(d["name"].rsplit("/", 1)[-1], d)
            for d in listed
            if d["type"] == "file"
        }

    def entries(self) -> dict[str, RemoteEntry]:
        return self._entries

    @property
    def pinned_url(self) -> str:
        return f"hf://{self._key}"

    def _fetch_once(self, entry: RemoteEntry, start: int, end: int) -> bytes:
        with self._lock:
            f = self._files.get(entry.key)
            if f is None:
                f = self._files[entry.key] = self.fs.open(entry.key, "rb", block_size=1, cache_type="none")
        try:
            f.seek(start)
            return bytes(f.read(end - start))
        except BaseException:
            self._files.pop(entry.key, None)
            raise


AWS_CREDENTIALS = "set the AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)"


def s3_filesystem(doing: str) -> Any:
    """An ``s3fs.S3FileSystem`` with the AWS environment's credentials and endpoint (``AWS_ENDPOINT_URL_S3``,
    else ``AWS_ENDPOINT_URL``), no instance cache; ``doing`` (``reading s3://...``) names what needs it."""
    try:
        import s3fs  # type: ignore[import-untyped]  # s3fs ships no type hints
    except ImportError:
        raise InputError(f"{doing} needs s3fs, which is not installed", hint="pip install 'llmkit[s3]'") from None
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint} if endpoint else {}, skip_instance_cache=True)


class S3Store(Store):
    """Objects under an S3 prefix (or one object); credentials the AWS way, never from the command line."""

    def __init__(self, url: str):
        self.url = url
        self.root = as_remote_path(url)
        self.fs = s3_filesystem(f"reading {url}")
        self._key = url[len("s3://") :]
        self._entries = self.guarded(self._list)

    def describe(self, e: BaseException, what: str) -> InputError:
        if isinstance(e, FileNotFoundError):
            return InputError("no such object or prefix", path=what, hint="check the bucket and the prefix")
        if isinstance(e, PermissionError):
            return InputError(
                "access denied",
                path=what,
                hint=f"{AWS_CREDENTIALS} for this bucket",
            )
        return super().describe(e, what)

    def _digest(self, d: dict) -> tuple[str, str] | None:
        etag = str(d.get("ETag") or d.get("etag") or "").strip('"')
        if not etag:
            return None
        if "-" not in etag:
            return ("md5", etag)
        bucket, key = d["name"].split("/", 1)
        head = self.fs.call_s3("head_object", Bucket=bucket, Key=key, PartNumber=1)
        return (f"s3-multipart:{int(head['ContentLength'])}", etag)

    def _list(self) -> dict[str, RemoteEntry]:
        info = self.fs.info(self._key)
        items = (
            [info] if info["type"] == "file" else [d for d in self.fs.ls(self._key, detail=True) if d["type"] == "file"]
        )
        self.single = info["type"] == "file"
        out = {}
        for d in items:
            name = d["name"].rsplit("/", 1)[-1]
            out[name] = RemoteEntry(name, d["name"], int(d["size"]), self._digest(d))
        if info["type"] == "file":
            self.root = as_remote_path(self.url).parent
        return out

    def entries(self) -> dict[str, RemoteEntry]:
        return self._entries

    def _fetch_once(self, entry: RemoteEntry, start: int, end: int) -> bytes:
        return bytes(self.fs.cat_file(entry.key, start=start, end=end))


def open_store(url: str) -> Store:
    """The store of ``url`` (``hf://``, ``s3://``, ``https://`` or ``http://``), listed."""
    if url.startswith("hf://"):
        return HubStore(url)
    if url.startswith("s3://"):
        return S3Store(url)
    if url.startswith(("https://", "http://")):
        from llmkit.io.remote.http import HttpStore

        return HttpStore(url)
    raise InputError(f"unsupported URL scheme in {url}", hint="use hf://owner/name, s3://bucket/prefix or https://")
