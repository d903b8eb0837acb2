"""XOR a byte stream with the key stream at disk speed: the threaded reader / XOR / writer / hashers.

Fixed buffers of :data:`~llmkit.crypto.keystream.BLOCK` bytes (a divisor of C, so a block never
straddles a chunk) are filled with ``readinto`` by a reader thread, XORed with numpy by the calling
thread into the slot's second buffer (the one the key block was read into, ``bitwise_xor`` with
``out=``), so the bytes read stay readable: an input hasher reads them while they are XORed and
written, a writer thread writes the XORed bytes and an output hasher hashes them. Each hasher is one
thread (MD5 is one sequential stream on one core; hashlib releases the GIL), so the input's and the
output's run side by side. At most :data:`SLOTS` blocks are in flight per file, always written in order.
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
from llmkit.io.core.writeback import WriteBehind

SLOTS = 4  # blocks in flight per file (reader -> XOR/hash -> writer)
WRITE_BEHIND_OK = sys.platform.startswith("linux") and hasattr(os, "posix_fadvise")  # a regular output file


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

    Up to five threads over :data:`SLOTS` reusable slots, so everything overlaps: a reader, an input
    hasher for ``input_hashes`` (the bytes as read: encrypt's BELLE header, decrypt's ``.enc`` md5),
    this thread (key read, XOR, content check), a writer, and an output hasher for ``output_hashes``
    (MD5 runs at ~0.5 GB/s on one core, slower than the disk; beside the writer it costs no extra
    time up to that rate, and the two hashers use one core each). A slot is reused once every
    consumer of it is done; blocks are written and hashed in order. ``check`` sees every block
    before it is written, so garbage in the first block never reaches ``dst``. ``write_behind`` (a
    regular output file) starts the disk writeback of finished windows early, so a final fsync is short.
    """
    stream = _XorPipeline(src, dst, key, input_hashes, output_hashes, check, advance, cancel, write_behind)
    return stream.run()


class _XorPipeline:
    """One :func:`xor_stream` call: the :data:`SLOTS` buffers, the queues between its stages, its first error.

    A slot is two buffers: ``read`` (the bytes read, never changed) and ``xored`` (the key block, then
    the XORed bytes). Its index travels ``free`` -> reader -> ``to_hash_input`` (the input hasher, if
    any) and ``to_xor`` -> XOR (the calling thread) -> one queue per output consumer (writer, output
    hasher) -> back to ``free`` once every consumer released it. The first error of any stage is
    ``errors[0]``; after it, every stage drains its queue without doing the work, so no thread waits
    forever.
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
        self.to_hash_input: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self.consumers: list[queue.Queue[tuple[int, int] | None]] = [queue.Queue()]  # [writer, output hasher?]
        if output_hashes:
            self.consumers.append(queue.Queue())
        self.holders = len(self.consumers) + (1 if input_hashes else 0)  # consumers of each slot read
        self.pending = [0] * SLOTS  # consumers still holding each slot
        self.pending_lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.written = 0
        self.behind = WriteBehind(dst.fileno()) if write_behind else None

    def run(self) -> int:
        """Start the reader, writer and hashers, XOR every block in this thread, stop them; returns bytes."""
        threads = [
            threading.Thread(target=self._read, name="llmkit-xor-read", daemon=True),
            threading.Thread(target=self._write, name="llmkit-xor-write", daemon=True),
        ]
        if self.input_hashes:
            hash_input = (self.to_hash_input, 0, self.input_hashes)
            threads.append(threading.Thread(target=self._hash, args=hash_input, name="llmkit-xor-hash-in", daemon=True))
        if self.output_hashes:
            hash_output = (self.consumers[1], 1, self.output_hashes)
            threads.append(threading.Thread(target=self._hash, args=hash_output, name="llmkit-xor-hash", daemon=True))
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

    def _release(self, i: int, holders: int = 1) -> None:
        """``holders`` consumers are done with slot ``i``; the last one hands it back to the reader."""
        with self.pending_lock:
            self.pending[i] -= holders
            done = self.pending[i] == 0
        if done:
            self.free.put(i)

    def _read(self) -> None:
        """Reader thread: fill free slots from ``src`` in order, for the input hasher and the XOR."""
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
                with self.pending_lock:
                    self.pending[i] = self.holders
                if self.input_hashes:
                    self.to_hash_input.put((i, n))
                self.to_xor.put((i, n, offset))
                offset += n
                if n < BLOCK:
                    break
        except BaseException as e:
            self.errors.append(e)
        finally:
            self.to_hash_input.put(None)
            self.to_xor.put(None)

    def _xor_block(self, i: int, n: int, offset: int) -> None:
        """This thread: XOR slot ``i`` into its second buffer, show it to the content check, hand it to the
        output consumers (the bytes read stay as they were, for the input hasher)."""
        if self.errors:
            self._release(i, len(self.consumers))
            return
        try:
            read, xored = self.slots[i]
            out = xored[:n]
            np.bitwise_xor(read[:n], self.key.block(offset, n, xored), out=out)  # the key block may be ``out``
            if self.check is not None:
                self.check.feed(out)
            for q in self.consumers:
                q.put((i, n))
        except Exception as e:
            self.errors.append(e)
            self._release(i, len(self.consumers))

    def _write(self) -> None:
        """Writer thread: write the blocks to ``dst`` in order, count them, start early writeback."""
        while (item := self.consumers[0].get()) is not None:
            i, n = item
            if not self.errors:
                try:
                    write_all(self.dst, self.slots[i][1].data[:n])
                    self.written += n
                    self.advance(n)
                    if self.behind is not None:  # the disk writes as the stream runs; the fsync is short
                        self.behind.wrote(self.dst.tell())
                except BaseException as e:
                    self.errors.append(e)
            self._release(i)  # keep draining so the reader never waits forever

    def _hash(self, blocks: queue.Queue[tuple[int, int] | None], buffer: int, hashes: Sequence[hashlib._Hash]) -> None:
        """A hasher thread: feed ``hashes`` the blocks of ``blocks`` in order, from each slot's ``buffer``
        (0: the bytes read, 1: the XORed bytes)."""
        while (item := blocks.get()) is not None:
            i, n = item
            if not self.errors:
                try:
                    view = self.slots[i][buffer].data[:n]
                    for h in hashes:
                        h.update(view)
                except BaseException as e:
                    self.errors.append(e)
            self._release(i)

    def _stop(self, threads: list[threading.Thread]) -> None:
        """End the consumers' queues, wake a reader waiting for a slot after a failure, join the threads."""
        for q in (*self.consumers, self.to_hash_input):
            q.put(None)
        if self.errors:
            self.free.put(-1)  # wake a reader waiting for a slot
        for t in threads:
            # After a failure the reader may sit in a blocking read (a pipe); it is a daemon thread.
            t.join(timeout=5 if self.errors else None)
