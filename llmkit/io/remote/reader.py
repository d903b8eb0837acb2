"""A remote file read front to back once, its digest checked at the end (:class:`VerifiedReader`).

A thread fetches the next :data:`CHUNK` bytes while the job computes (at most :data:`AHEAD` chunks wait,
so memory stays near ``AHEAD * CHUNK``), hashing each as it arrives; :meth:`VerifiedReader.readinto` hands
the bytes out in order. At the end of the file the digest is compared with the one the store published: a
mismatch (bytes corrupted in transit, or the remote file changed) is an error before any output is kept.
Nothing is fetched until the first read, so a dry run or a failed check fetches no tensor data.
"""

from __future__ import annotations

import queue
import threading

from llmkit.errors import CheckFailed, InputError
from llmkit.io.remote.store import Hasher, RemoteEntry, Store

CHUNK = 16 * 2**20  # bytes per ranged request
AHEAD = 3  # chunks fetched ahead of the reader at most


class VerifiedReader:
    """``entry``'s bytes from ``start`` on (``head``: the bytes before ``start``, fetched already and
    hashed first), as a binary stream with ``readinto``/``read``."""

    def __init__(
        self, store: Store, entry: RemoteEntry, start: int, head: bytes, known: dict[int, bytes] | None = None
    ):
        self.store, self.entry, self.position = store, entry, start
        self._known = dict(sorted((known or {}).items()))  # offset -> bytes fetched already (metadata reads)
        self._hasher = Hasher(entry.digest[0], entry.size) if entry.digest else None
        if self._hasher is not None:
            self._hasher.update(head)
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(AHEAD)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._buf = memoryview(b"")
        self._done = False
        self._verified = False

    def _run(self) -> None:
        offset = self.position
        try:
            while offset < self.entry.size and not self._stop.is_set():
                data = self._known_at(offset)
                if data is None:
                    end = min([offset + CHUNK, self.entry.size, *(k for k in self._known if k > offset)])
                    data = self.store.fetch(self.entry, offset, end)
                end = offset + len(data)
                if self._hasher is not None:
                    self._hasher.update(data)
                offset = end
                self._put(data)
            self._put(None)
        except BaseException as e:  # handed to the reader, raised there
            self._put(e)

    def _known_at(self, offset: int) -> bytes | None:
        """The bytes from ``offset`` that a metadata read fetched already, if any."""
        for start, data in self._known.items():
            if start <= offset < start + len(data):
                return data[offset - start :]
        return None

    def _put(self, item: bytes | BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _next(self) -> bool:
        """Refill the buffer; False at the end of the file (verified then)."""
        if self._done:
            return False
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"fetch {self.entry.name}", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            self._done = True
            self._verify()
            return False
        self._buf = memoryview(item)
        return True

    def _verify(self) -> None:
        if self._hasher is None or self._verified:
            return
        algorithm, expected = self.entry.digest or ("", "")
        got = self._hasher.hexdigest()
        if got != expected:
            raise CheckFailed(
                f"{self.store.root / self.entry.name}: the bytes read do not match the {algorithm.split(':')[0]} "
                f"the store publishes ({got[:16]}... != {expected[:16]}...): corrupted in transit or changed "
                "while read; nothing was kept (run again; if it repeats, the remote file is damaged)"
            )
        self._verified = True

    def readinto(self, view: memoryview) -> int:
        if not len(self._buf) and not self._next():
            return 0
        n = min(len(view), len(self._buf))
        view[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.position += n
        return n

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if not len(self._buf) and not self._next():
                break
            take = len(self._buf) if n < 0 else min(n - len(out), len(self._buf))
            out += self._buf[:take]
            self._buf = self._buf[take:]
            self.position += take
        return bytes(out)

    def finish(self) -> None:
        """Read what is left (nothing after a read to the end) and judge the digest: :class:`CheckFailed`
        on a mismatch. A consumer that reads the file whole calls it before its output is made final."""
        while len(self._buf) or self._next():
            self.position += len(self._buf)
            self._buf = memoryview(b"")
        self._verify()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._buf = memoryview(b"")


def read_verified(store: Store, entry: RemoteEntry) -> bytes:
    """A small file whole, checked against the store's digest."""
    data = store.fetch(entry, 0, entry.size) if entry.size else b""
    if entry.digest is not None:
        hasher = Hasher(entry.digest[0], entry.size)
        hasher.update(data)
        if hasher.hexdigest() != entry.digest[1]:
            raise InputError(
                "the bytes read do not match the digest the store publishes",
                path=store.root / entry.name,
                hint="run again; if it repeats, the remote file is damaged",
            )
    return data
