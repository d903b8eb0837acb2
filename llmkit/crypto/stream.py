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
    slots = [(np.empty(BLOCK, dtype=np.uint8), np.empty(BLOCK, dtype=np.uint8)) for _ in range(SLOTS)]
    free: queue.Queue[int] = queue.Queue()
    for i in range(SLOTS):
        free.put(i)
    to_xor: queue.Queue[tuple[int, int, int] | None] = queue.Queue()
    consumers: list[queue.Queue[tuple[int, int] | None]] = [queue.Queue()]  # [writer, hasher?]
    if output_hashes:
        consumers.append(queue.Queue())
    pending = [0] * SLOTS  # consumers still holding each slot
    pending_lock = threading.Lock()
    errors: list[BaseException] = []
    written = [0]

    def release(i: int) -> None:
        with pending_lock:
            pending[i] -= 1
            done = pending[i] == 0
        if done:
            free.put(i)

    def reader() -> None:
        offset = 0
        try:
            while True:
                i = free.get()
                if errors:
                    break
                if cancel is not None and cancel.is_set():
                    raise Cancelled()
                data = slots[i][0]
                n = read_full(src, data.data)
                if n == 0:
                    break
                view = data.data[:n]
                for h in input_hashes:
                    h.update(view)
                to_xor.put((i, n, offset))
                offset += n
                if n < BLOCK:
                    break
        except BaseException as e:
            errors.append(e)
        finally:
            to_xor.put(None)

    fd = dst.fileno() if write_behind else -1
    flushed = [0]

    def writer() -> None:
        while (item := consumers[0].get()) is not None:
            i, n = item
            if not errors:
                try:
                    write_all(dst, slots[i][0].data[:n])
                    written[0] += n
                    advance(n)
                    if fd >= 0 and written[0] - flushed[0] >= 2 * WRITE_BEHIND:
                        # Start the disk writeback of the window before the last one now, rather than
                        # paying for all of it in the final fsync (and keep the page cache clean).
                        os.posix_fadvise(fd, flushed[0], WRITE_BEHIND, os.POSIX_FADV_DONTNEED)
                        flushed[0] += WRITE_BEHIND
                except BaseException as e:
                    errors.append(e)
            release(i)  # keep draining so the reader never waits forever

    def hasher() -> None:
        while (item := consumers[1].get()) is not None:
            i, n = item
            if not errors:
                view = slots[i][0].data[:n]
                for h in output_hashes:
                    h.update(view)
            release(i)

    threads = [
        threading.Thread(target=reader, name="llmkit-xor-read", daemon=True),
        threading.Thread(target=writer, name="llmkit-xor-write", daemon=True),
    ]
    if output_hashes:
        threads.append(threading.Thread(target=hasher, name="llmkit-xor-hash", daemon=True))
    for t in threads:
        t.start()
    try:
        while (item := to_xor.get()) is not None:
            i, n, offset = item
            if errors:
                free.put(i)
                continue
            try:
                data, scratch = slots[i]
                data = data[:n]
                np.bitwise_xor(data, key.block(offset, n, scratch), out=data)
                if check is not None:
                    check.feed(data)
                with pending_lock:
                    pending[i] = len(consumers)
                for q in consumers:
                    q.put((i, n))
            except Exception as e:
                errors.append(e)
                free.put(i)
    except BaseException as e:  # KeyboardInterrupt while waiting: stop the helpers before leaving
        errors.append(e)
        raise
    finally:
        for q in consumers:
            q.put(None)
        if errors:
            free.put(-1)  # wake a reader waiting for a slot
        for t in threads:
            # After a failure the reader may sit in a blocking read (a pipe); it is a daemon thread.
            t.join(timeout=5 if errors else None)
    if errors:
        raise errors[0]
    return written[0]
