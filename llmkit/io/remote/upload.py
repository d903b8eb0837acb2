"""One S3 object written front to back as a multipart upload that stays invisible until :meth:`complete`.

:class:`ObjectUpload` is the file handle a remote stage gives the writer: ``write``/``tell``, a
``seek`` forward (over zeros) or to where it is, ``truncate`` to a larger size (zeros at the end); a seek
backwards is refused: those bytes are gone.
Every :data:`PART_SIZE` bytes become one part, sent on a thread while the writer goes on (at most
:data:`AHEAD` parts in flight, so memory stays near ``(AHEAD + 1) * PART_SIZE``). Each part carries its
``Content-MD5`` (S3 refuses a part whose bytes changed on the way) and the part's returned ETag is
checked against the MD5 computed here. Nothing is visible under the key until :meth:`complete`; then
the object's ETag must be the MD5 of the parts' MD5s. An object smaller than one part is one PUT at
:meth:`complete`. :meth:`abort` drops the upload (S3 frees its parts).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from llmkit.errors import InputError
from llmkit.io.remote.store import AWS_CREDENTIALS, RETRY_WAIT, TRIES

PART_SIZE = 16 << 20  # bytes per part (S3: at least 5 MiB except the last, at most 10,000 parts)
MAX_PARTS = 10_000
AHEAD = 2  # parts in flight while the writer fills the next one


def part_size_for(size: int) -> int:
    """The part size for an object of about ``size`` bytes: :data:`PART_SIZE`, or larger (whole MiB) when
    that would take more than 9,000 parts (room for the header and the estimate's slack)."""
    mib = 1 << 20
    return max(PART_SIZE, -(-size // 9_000 // mib) * mib + mib)


class ObjectUpload:
    """A write-only, front-to-back handle on ``s3://bucket/key``; see the module docstring."""

    def __init__(self, call: Callable[..., Any], bucket: str, key: str, url: str, part_size: int = PART_SIZE):
        self._call, self.bucket, self.key, self.url = call, bucket, key, url
        self.part_size = part_size
        self._buf = bytearray()
        self._pos = 0
        self._upload_id: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[dict[str, Any]]] = []
        self._parts: list[dict[str, Any]] = []
        self._md5s: list[bytes] = []
        self._end = 0  # the length truncate() asked for
        self.finished = False

    # ---- the file handle the layouts write to ----
    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.finished:
            raise ValueError("write to a finished upload")
        self._buf += data
        self._pos += len(data)
        while len(self._buf) >= self.part_size:
            self._send(bytes(self._buf[: self.part_size]))
            del self._buf[: self.part_size]
        return len(data)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        """Stay, or move forward over bytes never written (they are zeros, as in a sparse local file)."""
        target = offset if whence == 0 else self._pos + offset if whence == 1 else None
        if target is not None and target > self._pos:
            self._zeros(target - self._pos)
        if target != self._pos:
            raise InputError(
                "this layout writes out of order, which an object upload cannot do",
                path=self.url,
                hint="write safetensors, .ckpt or .gguf to s3://, or write to a local path",
            )
        return self._pos

    def truncate(self, size: int) -> int:
        """Make the file ``size`` bytes long: what is not written up to there is zeros (never shorter)."""
        if size < self._pos:
            raise InputError("a layout cut an upload short", path=self.url)
        self._end = size
        return size

    def _zeros(self, n: int) -> None:
        while n > 0:
            step = min(n, 1 << 20)
            self.write(bytes(step))
            n -= step

    def flush(self) -> None:
        """Nothing to do: a part goes out when it is full."""

    def close(self) -> None:
        """A writer that gives up closes its files: nothing more is sent (the stage aborts the upload;
        a file the writer completed was finished by ``close_file`` before)."""
        self.finished = True
        self._buf.clear()

    @property
    def size(self) -> int:
        return self._pos

    # ---- parts ----
    def _send(self, data: bytes) -> None:
        if self._upload_id is None:
            made = self._retried(
                lambda: self._call("create_multipart_upload", Bucket=self.bucket, Key=self.key), "starting"
            )
            self._upload_id = str(made["UploadId"])
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmkit-upload")
        while len(self._pending) >= AHEAD:
            self._parts.append(self._pending.pop(0).result())
        number = len(self._md5s) + 1
        md5 = hashlib.md5(data).digest()
        self._md5s.append(md5)
        assert self._pool is not None
        self._pending.append(self._pool.submit(self._put_part, number, data, md5))

    def _put_part(self, number: int, data: bytes, md5: bytes) -> dict[str, Any]:
        def put() -> Any:
            return self._call(
                "upload_part",
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
                ContentMD5=base64.b64encode(md5).decode(),
            )

        got = self._retried(put, f"part {number}")
        etag = str(got.get("ETag", "")).strip('"')
        if etag != md5.hex():
            raise InputError(f"S3 stored part {number} as {etag}, but its bytes hash to {md5.hex()}", path=self.url)
        return {"PartNumber": number, "ETag": got["ETag"]}

    def _retried(self, call: Callable[[], Any], what: str) -> Any:
        wait = RETRY_WAIT
        for attempt in range(1, TRIES + 1):
            try:
                return call()
            except (PermissionError, FileNotFoundError) as e:
                raise s3_write_error(e, self.url) from None
            except Exception as e:
                if attempt == TRIES:
                    raise InputError(
                        f"uploading {what} failed {TRIES} times: {str(e).splitlines()[0] if str(e) else e!r}",
                        path=self.url,
                        hint="check the connection and run again",
                    ) from None
            time.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")

    def finish(self) -> None:
        """The last bytes written: a multipart upload sends its last part and waits for every part."""
        if self.finished:
            return
        if self._end > self._pos:
            self._zeros(self._end - self._pos)
        self.finished = True
        if self._upload_id is not None:
            if self._buf:
                self._send(bytes(self._buf))
                self._buf.clear()
            while self._pending:
                self._parts.append(self._pending.pop(0).result())

    # ---- the end ----
    def complete(self) -> str:
        """Make the object visible under its key; its ETag, checked against the bytes written."""
        self.finish()
        if self._upload_id is None:
            data = bytes(self._buf)
            md5 = hashlib.md5(data).digest()
            got = self._retried(
                lambda: self._call(
                    "put_object",
                    Bucket=self.bucket,
                    Key=self.key,
                    Body=data,
                    ContentMD5=base64.b64encode(md5).decode(),
                ),
                "the object",
            )
            want = md5.hex()
        else:
            got = self._retried(
                lambda: self._call(
                    "complete_multipart_upload",
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                ),
                "the last step",
            )
            want = f"{hashlib.md5(b''.join(self._md5s)).hexdigest()}-{len(self._md5s)}"
        self._shutdown()
        etag = str(got.get("ETag", "")).strip('"')
        if etag != want:
            raise InputError(f"S3 stored the object as {etag}, but the bytes written hash to {want}", path=self.url)
        return etag

    def abort(self) -> None:
        """Drop the upload: nothing appears under the key (best effort; S3 also expires stale uploads)."""
        for f in self._pending:
            f.cancel()
        self._shutdown()
        if self._upload_id is not None:
            with contextlib.suppress(Exception):  # the next run on this output aborts what is left
                self._call("abort_multipart_upload", Bucket=self.bucket, Key=self.key, UploadId=self._upload_id)
            self._upload_id = None

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def s3_write_error(e: BaseException, url: str) -> InputError:
    """One line for a refused write to ``url``: no such bucket, or credentials that may not write there."""
    if isinstance(e, FileNotFoundError):
        return InputError("no such bucket", path=url, hint="create the bucket first, or check its name")
    return InputError(
        "access denied",
        path=url,
        hint=f"{AWS_CREDENTIALS} allowed to write here",
    )
