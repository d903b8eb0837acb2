"""XOR a byte stream with the key stream at disk speed: the threaded reader / XOR / writer / hasher.

Fixed buffers of :data:`~llmkit.crypto.keystream.BLOCK` bytes (a divisor of C, so a block never
straddles a chunk) are filled with ``readinto`` by a reader thread, XORed in place with numpy
(``bitwise_xor`` with ``out=``) by the calling thread, written by a writer thread and hashed by a
hasher thread; at most :data:`SLOTS` blocks are in flight per file, always written in order.
Memory: ``SLOTS * 2 * BLOCK`` (16 MiB) per file, independent of the file size.
"""

from __future__ import annotations

import hashlib
import os
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import BinaryIO

import numpy as np

from llmkit.crypto.keystream import BLOCK, KeyStream, read_full
from llmkit.io.core.sniff import ContentCheck

SLOTS = 4  # blocks in flight per file (reader -> XOR/hash -> writer)
WRITE_BEHIND = 64 * 2**20  # output bytes per early-writeback window (Linux posix_fadvise DONTNEED)
WRITE_BEHIND_OK = sys.platform.startswith("linux") and hasattr(os, "posix_fadvise")


def write_all(f: BinaryIO, view: memoryview) -> None:
    while len(view):
        n = f.write(view)
        if n is None:  # a non-blocking stream that is full: BufferedWriter semantics wrote it all
            return
        view = view[n:]


class Cancelled(Exception):
    """Another file of the same run failed; this one stopped and removed its temporary output."""


def xor_stream(
    src: BinaryIO,
    dst: BinaryIO,
    key: KeyStream,
    *,
    input_hashes: Sequence[hashlib._Hash] = (),
    output_hashes: Sequence[hashlib._Hash] = (),
    check: ContentCheck | None = None,
    advance: Callable[[int], None] = lambda n: None,
    cancel: threading.Event | None = None,
    write_behind: bool = False,
) -> int:
    """XOR all of ``src`` (from its current position) with the key stream into ``dst``; returns bytes.

    Four threads over :data:`SLOTS` reusable buffers, so everything overlaps: a reader (+ input
    hashes, used by encrypt for the BELLE header), this thread (key read, XOR, content check), a
    writer, and a hasher for ``output_hashes`` (MD5 runs at ~0.5 GB/s on one core, slower than the
    disk; beside the writer it costs no extra time up to that rate). A slot is reused once both the
    writer and the hasher are done with it; blocks are written in order. ``check`` sees every block
    before it is written, so garbage in the first block never reaches ``dst``. ``write_behind`` (a
    regular output file) starts the disk writeback of finished windows early, so a final fsync is short.
    """
    stream = _XorPipeline(src, dst, key, input_hashes, output_hashes, check, advance, cancel, write_behind)
    return stream.run()


class _XorPipeline:
    """One :func:`xor_stream` call: the :data:`SLOTS` buffers, the queues between its stages, its first error.

    A slot index travels ``free`` -> reader -> ``to_xor`` -> XOR (the calling thread) -> one queue per
    consumer (writer, hasher) -> back to ``free`` once every consumer released it. The first error
    of any stage is ``errors[0]``; after it, every stage drains its queue without doing the work, so
    no thread waits forever.
    """

    def __init__(
        self,
        src: BinaryIO,
        dst: BinaryIO,
        key: KeyStream,
        input_hashes: Sequence[hashlib._Hash],
        output_hashes: Sequence[hashlib._Hash],
        check: ContentCheck | None,
        advance: Callable[[int], None],
        cancel: threading.Event | None,
        write_behind: bool,
    ) -> None:
        self.src, self.dst, self.key = src, dst, key
        self.input_hashes, self.output_hashes = input_hashes, output_hashes
        self.check, self.advance, self.cancel = check, advance, cancel
        self.slots = [(np.empty(BLOCK, dtype=np.uint8), np.empty(BLOCK, dtype=np.uint8)) for _ in range(SLOTS)]
        self.free: queue.Queue[int] = queue.Queue()
        for i in range(SLOTS):
            self.free.put(i)
        self.to_xor: queue.Queue[tuple[int, int, int] | None] = queue.Queue()
        self.consumers: list[queue.Queue[tuple[int, int] | None]] = [queue.Queue()]  # [writer, hasher?]
        if output_hashes:
            self.consumers.append(queue.Queue())
        self.pending = [0] * SLOTS  # consumers still holding each slot
        self.pending_lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.written = 0
        self.fd = dst.fileno() if write_behind else -1
        self.flushed = 0  # output bytes whose early writeback was started

    def run(self) -> int:
        """Start the reader, writer and hasher, XOR every block in this thread, stop them; returns bytes."""
        threads = [
            threading.Thread(target=self._read, name="llmkit-xor-read", daemon=True),
            threading.Thread(target=self._write, name="llmkit-xor-write", daemon=True),
        ]
        if self.output_hashes:
            threads.append(threading.Thread(target=self._hash, name="llmkit-xor-hash", daemon=True))
        for t in threads:
            t.start()
        try:
            while (item := self.to_xor.get()) is not None:
                self._xor_block(*item)
        except BaseException as e:  # KeyboardInterrupt while waiting: stop the helpers before leaving
            self.errors.append(e)
            raise
        finally:
            self._stop(threads)
        if self.errors:
            raise self.errors[0]
        return self.written

    def _release(self, i: int) -> None:
        """One consumer is done with slot ``i``; the last one hands it back to the reader."""
        with self.pending_lock:
            self.pending[i] -= 1
            done = self.pending[i] == 0
        if done:
            self.free.put(i)

    def _read(self) -> None:
        """Reader thread: fill free slots from ``src`` in order (and feed the input hashes)."""
        offset = 0
        try:
            while True:
                i = self.free.get()
                if self.errors:
                    break
                if self.cancel is not None and self.cancel.is_set():
                    raise Cancelled()
                data = self.slots[i][0]
                n = read_full(self.src, data.data)
                if n == 0:
                    break
                view = data.data[:n]
                for h in self.input_hashes:
                    h.update(view)
                self.to_xor.put((i, n, offset))
                offset += n
                if n < BLOCK:
                    break
        except BaseException as e:
            self.errors.append(e)
        finally:
            self.to_xor.put(None)

    def _xor_block(self, i: int, n: int, offset: int) -> None:
        """This thread: XOR slot ``i`` in place, show it to the content check, hand it to the consumers."""
        if self.errors:
            self.free.put(i)
            return
        try:
            data, scratch = self.slots[i]
            data = data[:n]
            np.bitwise_xor(data, self.key.block(offset, n, scratch), out=data)
            if self.check is not None:
                self.check.feed(data)
            with self.pending_lock:
                self.pending[i] = len(self.consumers)
            for q in self.consumers:
                q.put((i, n))
        except Exception as e:
            self.errors.append(e)
            self.free.put(i)

    def _write(self) -> None:
        """Writer thread: write the blocks to ``dst`` in order, count them, start early writeback."""
        while (item := self.consumers[0].get()) is not None:
            i, n = item
            if not self.errors:
                try:
                    write_all(self.dst, self.slots[i][0].data[:n])
                    self.written += n
                    self.advance(n)
                    if self.fd >= 0 and self.written - self.flushed >= 2 * WRITE_BEHIND:
                        # Start the disk writeback of the window before the last one now, rather than
                        # paying for all of it in the final fsync (and keep the page cache clean).
                        os.posix_fadvise(self.fd, self.flushed, WRITE_BEHIND, os.POSIX_FADV_DONTNEED)
                        self.flushed += WRITE_BEHIND
                except BaseException as e:
                    self.errors.append(e)
            self._release(i)  # keep draining so the reader never waits forever

    def _hash(self) -> None:
        """Hasher thread: feed the XORed blocks to ``output_hashes`` in order."""
        while (item := self.consumers[1].get()) is not None:
            i, n = item
            if not self.errors:
                view = self.slots[i][0].data[:n]
                for h in self.output_hashes:
                    h.update(view)
            self._release(i)

    def _stop(self, threads: list[threading.Thread]) -> None:
        """End the consumers' queues, wake a reader waiting for a slot after a failure, join the threads."""
        for q in self.consumers:
            q.put(None)
        if self.errors:
            self.free.put(-1)  # wake a reader waiting for a slot
        for t in threads:
            # After a failure the reader may sit in a blocking read (a pipe); it is a daemon thread.
            t.join(timeout=5 if self.errors else None)
