"""Outputs in object storage: ``-o s3://bucket/prefix/`` (a model folder) or ``-o s3://bucket/model.ckpt``.

:class:`S3Staging` is the writer's stage (``llmkit.io.core.staging.Staging``) for S3, with the same
guarantees as a local output, the object store's way:

- **Claim.** A lock object (``PREFIX/.llmkit-lock``, or ``.NAME.llmkit-lock`` beside a one-object output)
  is created with ``If-None-Match: *``, so of two runs aimed at one output exactly one gets it; the other
  stops at once naming the holder. A lock left by a killed run on this machine (its process is gone) is
  taken over; one from another machine is reported with how to remove it.
- **Stage.** Each file is a multipart upload (``llmkit.io.remote.upload``): nothing is visible under a final
  name while the job runs, every part is checked as S3 stores it, and a failure aborts every upload.
- **Commit.** When the writer has checked every file: the uploads are completed (each object's ETag checked),
  then the side files, then the shard index last, so a reader that finds the index finds the whole model;
  with ``--force``, objects of the old output that this run does not write are deleted at the very end.
- **Refusals.** Existing objects of this layout under the prefix without ``--force``; an output that is,
  is inside or holds one of the job's remote inputs.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, cast

from llmkit.errors import InputError, OutputExistsError
from llmkit.io.core.staging import ExistingFolder, Staging
from llmkit.io.remote.stage import RemoteStage, pid_alive
from llmkit.io.remote.store import s3_filesystem
from llmkit.io.remote.upload import ObjectUpload, part_size_for, s3_write_error
from llmkit.io.remote.url import remote_url

LOCK_NAME = ".llmkit-lock"


def remote_staging(
    target: Path,
    *,
    one_file: bool,
    writes: Callable[[str], bool],
    owned: Callable[[str], bool],
    force: bool,
) -> Staging:
    """The stage of a remote output: S3 uploads for ``s3://``, a hub commit for ``hf://``."""
    url = remote_url(target)
    assert url is not None
    if url.startswith("s3://"):
        return S3Staging(url, one_file=one_file, writes=writes, owned=owned, force=force)
    if url.startswith("hf://"):
        from llmkit.io.remote.hub_sink import HubStaging

        return HubStaging(url, one_file=one_file, writes=writes, owned=owned, force=force)
    raise InputError(f"cannot write to {url}", hint="write to a local path, s3://bucket/prefix or hf://owner/name")


def _place(url: str) -> str:
    """Where a URL points, whatever the revision: ``hf://owner/name@rev/sub`` as ``hf://owner/name/sub``."""
    if not url.startswith("hf://"):
        return url.rstrip("/")
    parts = url[len("hf://") :].split("/")
    if len(parts) >= 2:
        parts[1] = parts[1].split("@", 1)[0]
    return "hf://" + "/".join(p for p in parts if p)


def _inside(a: str, b: str) -> bool:
    a, b = _place(a), _place(b)
    return a == b or a.startswith(b + "/")


def check_remote_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse a remote output that is, is inside or holds one of the job's remote inputs."""
    url = remote_url(out)
    assert url is not None
    for i in inputs:
        src = remote_url(i) if i is not None else None
        if src is not None and (_inside(url, src) or _inside(src, url)):
            raise InputError(
                f"the output would overwrite the input {src}",
                path=url,
                hint="choose an -o outside every input",
            )


class S3Staging(RemoteStage):
    """The pending uploads of one run's output under ``s3://bucket/prefix``; see the module docstring."""

    scratch: Path | None = None  # nothing passes through local disk

    def __init__(
        self,
        url: str,
        *,
        one_file: bool,
        writes: Callable[[str], bool],
        owned: Callable[[str], bool],
        force: bool,
    ):
        super().__init__(url, one_file=one_file, writes=writes, owned=owned, force=force)
        bucket, _, self.prefix = self.url[len("s3://") :].partition("/")
        self.bucket = bucket
        if not self.prefix:
            raise InputError("an S3 output needs a prefix", path=self.url, hint="use s3://bucket/prefix/")
        self.fs = s3_filesystem("writing to s3://")
        self.fs.retries = 1  # each upload step is retried by llmkit (upload.TRIES), with its own backoff
        self.uploads: dict[str, ObjectUpload] = {}
        self.small: dict[str, bytes] = {}
        self.run = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        self._locked = False

    # ---- names ----
    def _key(self, name: str) -> str:
        return self.prefix if self.one_file else f"{self.prefix}/{name}"

    @property
    def _lock_key(self) -> str:
        if self.one_file:
            head, _, tail = self.prefix.rpartition("/")
            return f"{head}/.{tail}{LOCK_NAME}" if head else f".{tail}{LOCK_NAME}"
        return f"{self.prefix}/{LOCK_NAME}"

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self.fs.call_s3(method, **kwargs)

    def _guard(self, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except InputError:
            raise
        except FileNotFoundError:
            raise InputError(
                "no such bucket", path=f"s3://{self.bucket}", hint="create it, or check its name"
            ) from None
        except PermissionError as e:
            raise s3_write_error(e, self.url) from None

    def _listed(self) -> list[str]:
        """The names directly under the prefix (a one-object output: that object, if it exists)."""

        def ls() -> list[str]:
            if self.one_file:
                return [self.target.name] if self.fs.exists(f"{self.bucket}/{self.prefix}") else []
            got = self._call("list_objects_v2", Bucket=self.bucket, Prefix=f"{self.prefix}/")
            names = [str(o["Key"])[len(self.prefix) + 1 :] for o in got.get("Contents", [])]
            while got.get("IsTruncated"):
                got = self._call(
                    "list_objects_v2",
                    Bucket=self.bucket,
                    Prefix=f"{self.prefix}/",
                    ContinuationToken=got["NextContinuationToken"],
                )
                names += [str(o["Key"])[len(self.prefix) + 1 :] for o in got.get("Contents", [])]
            return [n for n in names if n and "/" not in n and n != LOCK_NAME]

        self.fs.invalidate_cache()
        return cast(list[str], self._guard(ls))

    # ---- the protocol ----
    def check(self) -> ExistingFolder:
        """What the output's existing objects become; raises if this run may not replace them."""
        return self.sort_existing(self._listed(), folder_word="prefix")

    def open(self) -> object:
        """Take the output's lock, check again under it, and drop what a dead run left pending."""
        self._acquire()
        try:
            self.check()
            self._abort_stale_uploads()
        except BaseException:
            self._release()
            raise
        return self.target

    def _acquire(self) -> None:
        body = json.dumps({"run": self.run, "started": time.time()}).encode()
        for _ in range(2):
            try:
                self._guard(
                    lambda: self._call("put_object", Bucket=self.bucket, Key=self._lock_key, Body=body, IfNoneMatch="*")
                )
                self._locked = True
                return
            except FileExistsError:
                holder = self._holder()
                if holder is None or not self._dead(holder):
                    self._refuse(holder)
                self._guard(lambda: self._call("delete_object", Bucket=self.bucket, Key=self._lock_key))
        self._refuse(self._holder())

    def _holder(self) -> str | None:
        try:
            return str(json.loads(self.fs.cat_file(f"{self.bucket}/{self._lock_key}"))["run"])
        except FileNotFoundError:
            return ""  # released meanwhile: try again
        except Exception:
            return None

    @staticmethod
    def _dead(holder: str) -> bool:
        """A holder that is gone: released, or a process of this machine that no longer runs."""
        if holder == "":
            return True
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))

    def _refuse(self, holder: str | None) -> None:
        who = f" ({holder.rsplit(':', 1)[0].replace(':', ', pid ')})" if holder else ""
        raise OutputExistsError(
            f"another llmkit run is writing this output{who}",
            path=self.url,
            hint=f"wait for it to finish; if it is gone, delete s3://{self.bucket}/{self._lock_key}",
        )

    def _abort_stale_uploads(self) -> None:
        """Abort pending uploads of this output's names that a killed run left (they hold storage)."""
        prefix = self.prefix if self.one_file else f"{self.prefix}/"
        got = self._guard(lambda: self._call("list_multipart_uploads", Bucket=self.bucket, Prefix=prefix))
        for u in got.get("Uploads", []):
            key = str(u["Key"])
            name = key[len(prefix) :]
            ours = key == self.prefix if self.one_file else "/" not in name and (self.writes(name) or self.owned(name))
            if ours:
                self._call("abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=u["UploadId"])

    def _delete(self, key: str) -> None:
        self._guard(lambda: self._call("delete_object", Bucket=self.bucket, Key=key))

    def _release(self) -> None:
        if self._locked:
            self._locked = False
            if self._holder() == self.run:
                self._call("delete_object", Bucket=self.bucket, Key=self._lock_key)

    def open_file(self, name: str, size: int = 0) -> BinaryIO:
        up = ObjectUpload(self._call, self.bucket, self._key(name), str(self.path(name)), part_size_for(size))
        self.uploads[name] = up
        return cast(BinaryIO, up)

    def close_file(self, name: str, f: BinaryIO) -> None:
        self.uploads[name].finish()

    def size(self, name: str) -> int:
        return self.uploads[name].size if name in self.uploads else len(self.small[name])

    def write_file(self, name: str, data: bytes) -> None:
        self.small[name] = data

    def commit(self) -> None:
        """Complete every upload, the side files, the index last; then drop the old output's leftovers."""
        try:
            if self._holder() != self.run:
                raise OutputExistsError(
                    "this run's lock on the output was taken away; nothing was made final",
                    path=self.url,
                    hint="run again once no other run writes this output",
                )
            existing = self.check()
            for up in self.uploads.values():
                up.complete()
            last = sorted(self.small, key=lambda n: n.endswith(".index.json"))
            for name in last:
                up = ObjectUpload(self._call, self.bucket, self._key(name), str(self.path(name)))
                up.write(self.small[name])
                up.complete()
            written = set(self.uploads) | set(self.small)
            for name in existing.replaced:
                if name not in written:
                    self._delete(self._key(name))
            self.kept, self.replaced = existing.kept, existing.replaced
        finally:
            self.discard()

    def discard(self) -> None:
        """Abort every pending upload and release the lock (after a commit: only the lock)."""
        try:
            for up in self.uploads.values():
                up.abort()
        finally:
            self._release()
