"""XOR "encryption" of TechGPT-1.0, BELLE and point-alpaca weights (SPEC.md section 1).

The key stream, exactly as upstream: the data is cut into chunks of C = 10 MiB; chunk i is XORed
with the i-th sequential C-byte read of the key file, tiled to the chunk's length; an empty read
(the key is exhausted) seeks the key back to 0 and reads again. So a short last key read (key
length not a multiple of C) is tiled *inside its chunk* and the next chunk starts again at key
offset 0: the key byte for data byte j is **not** ``key[j % len(key)]``.

Formats:

- TechGPT: ``<name>.<64 hex>.enc``, no header, the whole file is XORed; the hex is always sha256 of
  the empty string (a constant label, not a checksum).
- BELLE / point-alpaca: ``<name>.<sha256 hex>.enc``, the first 32 bytes are the raw sha256 of the
  plaintext, then the XORed payload (key offset 0 aligns with payload byte 0).

How it runs: fixed buffers of :data:`BLOCK` bytes (a divisor of C, so a block never straddles a
chunk) are filled with ``readinto`` by a reader thread, XORed in place with numpy (``bitwise_xor``
with ``out=``) and hashed by the calling thread, and written by a writer thread; at most
:data:`SLOTS` blocks are in flight per file, always written in order. Memory: ``SLOTS * 2 * BLOCK``
(16 MiB) per file plus, while a short key read is tiled, one C-sized key segment; independent of
the file size. Output goes to a temporary name in the output folder, is fsynced (with early
writeback, so the fsync is short) and renamed only after every check passed.

The key check: the key must be Meta's LLaMA-1 7B ``consolidated.00.pth`` (:data:`KEY_SIZE` bytes,
md5 :data:`KEY_MD5`); the full md5 is cached by (resolved path, size, mtime) in
``$LLMKIT_CACHE_DIR/key-md5.json`` (default ``~/.cache/llmkit``). Tests patch :data:`KEY_SIZE` and
:data:`KEY_MD5` (module constants, read at call time); there is deliberately no CLI option for that.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Iterator, Sequence

import numpy as np

from llmkit.errors import CheckFailed, InputError, OutputExistsError, writing
from llmkit.hashing import hash_file
from llmkit.io.destination import TMP_SUFFIX, StagedFiles, ensure_output_is_new
from llmkit.io.sniff import ContentCheck, ContentError
from llmkit.units import check_space, free_bytes

CHUNK = 10 * 2**20  # upstream data chunk and key read size (SPEC.md 1)
BLOCK = 2 * 2**20  # llmkit's I/O unit; must divide CHUNK
SLOTS = 4  # blocks in flight per file (reader -> XOR/hash -> writer)
WRITE_BEHIND = 64 * 2**20  # output bytes per early-writeback window (Linux posix_fadvise DONTNEED)
HEADER_BYTES = 32  # BELLE: raw sha256 of the plaintext
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # TechGPT's constant label

# The key: Meta's LLaMA-1 7B consolidated.00.pth (the same file is the key for 7B and 13B models).
# Test seam: tests patch these two constants (they are read at call time).
KEY_SIZE = 13_476_939_516
KEY_MD5 = "6efc8dab194ab59e49cd24be5574d85e"
KEY_DESCRIPTION = "Meta's original LLaMA-1 7B consolidated.00.pth"
KEY_CACHE_FILE = "key-md5.json"

FORMATS = ("techgpt", "belle")
_HEX64 = re.compile(r"(?P<name>.+)\.(?P<hex>[0-9a-fA-F]{64})")

assert CHUNK % BLOCK == 0
_WRITE_BEHIND_OK = sys.platform.startswith("linux") and hasattr(os, "posix_fadvise")

ProgressFactory = Callable[[str, "int | None"], ContextManager[Callable[[int], None]]]


@contextmanager
def _no_progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


# ------------------------------------------------------------------ results


@dataclass
class Check:
    """One verification of one file: ``ok`` passed, ``mismatch`` failed (a warning), ``info`` a note."""

    name: str
    status: str
    detail: str


@dataclass
class FileResult:
    input: str
    output: str
    format: str
    bytes: int  # plaintext bytes
    sha256: str | None = None  # BELLE: the plaintext sha256 (verified against the header on decrypt)
    md5: str | None = None  # plaintext md5, when a published table lists the file
    input_md5: str | None = None  # md5 of the .enc input, when a published table lists it
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class CryptoResult:
    command: str  # decrypt | encrypt
    key: str
    key_check: str  # verified | verified (cached) | skipped
    output: str  # folder, or "-" for stdout
    files: list[FileResult] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files in input folders that were not touched
    warnings: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0


# ------------------------------------------------------------------ the key stream


def _read_full(f: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` (fewer bytes only at EOF); pipes and raw files may return short reads."""
    total = 0
    while total < len(view):
        n = f.readinto(view[total:])
        if not n:
            break
        total += n
    return total


def _sequential(f: BinaryIO) -> None:
    """Ask the kernel for aggressive read-ahead (cold caches: the key and the data stream from disk)."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (OSError, ValueError, AttributeError):
            pass  # pipes, exotic file objects


def _write_all(f: BinaryIO, view: memoryview) -> None:
    while len(view):
        n = f.write(view)
        if n is None:  # a non-blocking stream that is full: BufferedWriter semantics wrote it all
            return
        view = view[n:]


class KeyStream:
    """The upstream key stream for one data file (SPEC.md 1), served in blocks.

    ``block(offset, n, scratch)`` returns the key bytes for data bytes ``[offset, offset + n)``
    of the payload; blocks must come in order and not straddle a C boundary. The key file is
    opened afresh per data file, as upstream does.
    """

    def __init__(self, path: Path, *, chunk: int = CHUNK, block: int = BLOCK):
        self.path = Path(path)
        self.chunk = chunk
        self.block_size = block
        self._f = open(self.path, "rb", buffering=0)
        self.size = os.fstat(self._f.fileno()).st_size
        _sequential(self._f)
        if self.size == 0:
            self._f.close()
            raise InputError("the key file is empty", path=self.path, hint=f"pass {KEY_DESCRIPTION}")
        self._next = 0  # key offset where the next sequential C-byte read starts
        self._seg = (0, 0)  # (start, length) of the current chunk's key read
        self._tiled: np.ndarray | None = None
        self._tiled_seg: tuple[int, int] | None = None

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "KeyStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_chunk(self) -> None:
        # upstream: k = key.read(C); if k == b"": key.seek(0); k = key.read(C)
        if self._next >= self.size:
            self._next = 0
        length = min(self.chunk, self.size - self._next)
        self._seg = (self._next, length)
        self._next += length

    def _pread(self, pos: int, out: np.ndarray) -> None:
        self._f.seek(pos)
        if _read_full(self._f, memoryview(out)) != len(out):
            raise InputError("the key file got shorter while reading", path=self.path)

    def block(self, offset: int, n: int, scratch: np.ndarray) -> np.ndarray:
        within = offset % self.chunk
        if within == 0:
            self._start_chunk()
        start, length = self._seg
        if within + n <= length:  # the block lies inside this chunk's key read: a plain read
            out = scratch[:n]
            self._pread(start + within, out)
            return out
        # A short key read (end of the key, or a key shorter than C) is tiled inside its chunk.
        if self._tiled_seg != self._seg:
            segment = np.empty(length, dtype=np.uint8)
            self._pread(start, segment)
            self._tiled = np.resize(segment, length + self.block_size)  # repeats the segment
            self._tiled_seg = self._seg
        assert self._tiled is not None
        s = within % length
        return self._tiled[s:s + n]


# ------------------------------------------------------------------ the pipeline


class _Cancelled(Exception):
    """Another file of the same run failed; this one stopped and removed its temporary output."""


def xor_stream(src: BinaryIO, dst: BinaryIO, key: KeyStream, *,
               input_hashes: Sequence["hashlib._Hash"] = (), output_hashes: Sequence["hashlib._Hash"] = (),
               check: ContentCheck | None = None, advance: Callable[[int], None] = lambda n: None,
               cancel: threading.Event | None = None, write_behind: bool = False) -> int:
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
                    raise _Cancelled()
                data = slots[i][0]
                n = _read_full(src, memoryview(data))
                if n == 0:
                    break
                view = memoryview(data)[:n]
                for h in input_hashes:
                    h.update(view)
                to_xor.put((i, n, offset))
                offset += n
                if n < BLOCK:
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
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
                    _write_all(dst, memoryview(slots[i][0])[:n])
                    written[0] += n
                    advance(n)
                    if fd >= 0 and written[0] - flushed[0] >= 2 * WRITE_BEHIND:
                        # Start the disk writeback of the window before the last one now, rather than
                        # paying for all of it in the final fsync (and keep the page cache clean).
                        os.posix_fadvise(fd, flushed[0], WRITE_BEHIND, os.POSIX_FADV_DONTNEED)
                        flushed[0] += WRITE_BEHIND
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
            release(i)  # keep draining so the reader never waits forever

    def hasher() -> None:
        while (item := consumers[1].get()) is not None:
            i, n = item
            if not errors:
                view = memoryview(slots[i][0])[:n]
                for h in output_hashes:
                    h.update(view)
            release(i)

    threads = [threading.Thread(target=reader, name="llmkit-xor-read", daemon=True),
               threading.Thread(target=writer, name="llmkit-xor-write", daemon=True)]
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
            except Exception as e:  # noqa: BLE001 - stop the reader, drain, raise below
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


# ------------------------------------------------------------------ the key check


def cache_dir() -> Path:
    return Path(os.environ.get("LLMKIT_CACHE_DIR") or Path.home() / ".cache" / "llmkit")


def _load_key_cache() -> dict:
    try:
        data = json.loads((cache_dir() / KEY_CACHE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store_key_cache(entry_key: str, entry: dict) -> None:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        data = _load_key_cache()
        data[entry_key] = entry
        tmp = folder / f".{KEY_CACHE_FILE}.{os.getpid()}{TMP_SUFFIX}"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, folder / KEY_CACHE_FILE)
    except OSError:
        pass  # the cache only saves time


def _wrong_key(path: Path, why: str) -> InputError:
    return InputError(
        f"{why}: this is not {KEY_DESCRIPTION} ({KEY_SIZE:,} bytes, md5 {KEY_MD5})", path=path,
        hint="pass the original LLaMA-1 7B consolidated.00.pth (also for 13B models); LLaMA-2's "
             "consolidated.00.pth or a converted (Hugging Face) model is the usual mistake. "
             "Use --no-key-check only if the weights were encrypted with another key on purpose")


def check_key(path: str | os.PathLike, *, progress: ProgressFactory | None = None) -> str:
    """Refuse any key but LLaMA-1 7B ``consolidated.00.pth``. Returns ``verified`` or ``verified (cached)``.

    The size check fails fast; the full md5 (13.5 GB) is computed once per (path, size, mtime).
    """
    path = Path(path)
    st = path.stat()
    if not path.is_file():
        raise InputError("the key is not a file", path=path, hint=f"pass {KEY_DESCRIPTION}")
    if st.st_size != KEY_SIZE:
        raise _wrong_key(path, f"the key file is {st.st_size:,} bytes")
    entry_key = str(path.resolve())
    cached = _load_key_cache().get(entry_key)
    if isinstance(cached, dict) and cached.get("size") == st.st_size and cached.get("mtime_ns") == st.st_mtime_ns:
        digest, status = str(cached.get("md5")), "verified (cached)"
    else:
        with (progress or _no_progress)("checking the key (md5, once)", st.st_size) as advance:
            digest, status = hash_file(path, "md5", progress=advance), "verified"
        _store_key_cache(entry_key, {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": digest})
    if digest != KEY_MD5:
        raise _wrong_key(path, f"the key file has md5 {digest}")
    return status


# ------------------------------------------------------------------ planning


@dataclass
class _Job:
    src: Path | None  # None: stdin
    display: str  # input name as shown
    out_name: str | None  # decrypt: final output name; encrypt: None until the BELLE digest is known
    fmt: str
    payload: int | None  # bytes to XOR (None for stdin)
    header: bytes | None = None  # BELLE decrypt: the expected sha256 digest
    in_entries: list[tuple[str, str]] = field(default_factory=list)
    out_entries: list[tuple[str, str]] = field(default_factory=list)


def split_enc_name(name: str) -> tuple[str, str | None]:
    """``config.json.<64 hex>.enc`` -> (``config.json``, hex). Without a 64-hex label: (name minus .enc, None)."""
    base = name[:-4] if name.endswith(".enc") else name
    m = _HEX64.fullmatch(base)
    if m:
        return m.group("name"), m.group("hex").lower()
    return base, None


def _published(name: str) -> list[tuple[str, str]]:
    """(table, md5) entries of llmkit's built-in checksum tables for a file name."""
    try:
        from llmkit.registry import find_expected
    except ModuleNotFoundError as e:  # pragma: no cover - the registry ships with llmkit
        if e.name == "llmkit.registry":
            return []
        raise
    return list(find_expected(name, "md5"))


def detect_format(path: Path, fmt: str = "auto") -> tuple[str, bytes | None]:
    """The format of an ``.enc`` file (SPEC.md 1) and, for BELLE, its 32-byte header.

    auto: BELLE when the first 32 bytes equal the hex in the name. A name whose label is neither the
    TechGPT constant nor the file's first 32 bytes is refused (a damaged BELLE file decrypted as
    TechGPT would silently give garbage); ``--format`` settles it.
    """
    size = path.stat().st_size
    _, label = split_enc_name(path.name)
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if fmt == "auto":
        if label is not None and len(head) == HEADER_BYTES and head == bytes.fromhex(label):
            return "belle", head
        if label is None or label == EMPTY_SHA256:
            return "techgpt", None
        raise InputError(
            f"cannot tell the format: the name carries sha256 {label[:12]}... but the file "
            f"({size:,} bytes) does not start with it", path=path,
            hint="a BELLE file that is damaged or truncated? re-download it, or pass --format techgpt|belle")
    if fmt == "belle":
        if size < HEADER_BYTES:
            raise InputError(f"only {size} bytes: too short for the 32-byte BELLE sha256 header", path=path,
                             hint="the file is truncated; download it again")
        if label is not None and head != bytes.fromhex(label):
            raise InputError(f"the header sha256 {head.hex()[:12]}... differs from the name's {label[:12]}...",
                             path=path, hint="the file is damaged or renamed; download it again")
        return "belle", head
    if fmt == "techgpt":
        return "techgpt", None
    raise InputError(f"unknown format {fmt!r}", hint="use auto, techgpt or belle")


def _expand_decrypt_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path | None], list[str]]:
    files: list[Path | None] = []
    ignored: list[str] = []
    for raw in inputs:
        if str(raw) == "-":
            files.append(None)
            continue
        p = Path(raw)
        if p.is_dir():
            found = sorted(c for c in p.iterdir() if c.is_file() and c.name.endswith(".enc"))
            ignored += sorted(str(c) for c in p.iterdir() if c.is_file() and not c.name.endswith(".enc")
                              and not c.name.startswith("."))
            if not found:
                raise InputError("no .enc files in this folder", path=p,
                                 hint="pass the folder holding the downloaded *.enc files")
            files += found
        elif p.is_file():
            if not p.name.endswith(".enc"):
                raise InputError("not an .enc file", path=p,
                                 hint="decrypt takes .enc files or their folder; other files are never decrypted")
            files.append(p)
        elif p.exists():
            raise InputError("not a regular file or folder", path=p)
        else:
            raise InputError("no such file or folder", path=p, hint="check the path")
    return files, ignored


def _check_outputs(out_dir: Path, names: list[str], inputs: list[Path], files: Sequence[Path | None], force: bool,
                   need: int, extra_clashes: Callable[[str], list[str]] | None = None) -> None:
    """Pre-flight checks of the output folder; ``inputs`` as given (files, folders), ``files`` expanded."""
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    dup = [n for n, c in seen.items() if c > 1]
    if dup:
        raise InputError(f"two inputs would both write {dup[0]}", path=out_dir,
                         hint="pass each file once, or decrypt them into different folders")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError("the output path exists and is not a folder", path=out_dir, hint="choose another -o")
    ensure_output_is_new(out_dir, inputs)
    resolved_inputs = {os.path.realpath(p) for p in files if p is not None}
    for n in names:
        target = out_dir / n
        if os.path.realpath(target) in resolved_inputs:
            raise InputError(f"the output {n} would overwrite an input", path=out_dir,
                             hint="choose another -o; llmkit never writes over its inputs")
    if not force:
        clash = [n for n in names if (out_dir / n).exists()]
        if extra_clashes is not None:
            clash += [c for n in names for c in extra_clashes(n)]
        if clash:
            raise OutputExistsError(f"the output folder already holds {', '.join(clash[:3])}"
                                    + (" ..." if len(clash) > 3 else ""), path=out_dir,
                                    hint="pass --force to overwrite, or choose another -o")
    check_space(out_dir, need, free_bytes(out_dir))  # a read-only file system, or output + margin > free


# ------------------------------------------------------------------ running jobs


def _run_all(jobs: list[_Job], work: Callable[[_Job, threading.Event], FileResult], n_jobs: int) -> list[FileResult]:
    """Run ``work`` per job, ``n_jobs`` at a time; on the first failure the others stop and clean up."""
    cancel = threading.Event()
    if n_jobs <= 1 or len(jobs) <= 1:
        return [work(j, cancel) for j in jobs]
    results: list[FileResult | None] = [None] * len(jobs)
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = work(jobs[index], cancel)
        except BaseException as e:  # noqa: BLE001
            if not isinstance(e, _Cancelled):
                failures.append(e)
            cancel.set()

    with ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="llmkit-file") as pool:
        list(pool.map(run, range(len(jobs))))
    if failures:
        raise failures[0]
    return [r for r in results if r is not None]


def _finish_tables(job: _Job, result: FileResult, warnings: list[str]) -> None:
    """Compare md5s with the published tables (TechGPT-1.0's card). Raises CheckFailed on a wrong key.

    Only the output is hashed while streaming: a match proves both the download and the key. The
    input is hashed (a second read) only to explain a mismatch. A failure needs proof that the key is
    wrong: the input is the published .enc file but the output is not the published plaintext. A
    file that merely shares a name with a table entry (another model in the same format) gets a
    warning, not a failure.
    """
    out_ok = bool(job.out_entries) and any(result.md5 == h for _, h in job.out_entries)
    published_input = False
    if job.in_entries:
        tables = ", ".join(t for t, _ in job.in_entries)
        if out_ok:
            result.checks.append(Check("input md5", "ok", f"implied by the output md5 (table {tables})"))
        elif job.src is None:
            result.checks.append(Check("input md5", "info", "stdin: not hashed"))
        else:
            result.input_md5 = hash_file(job.src, "md5")
            if any(result.input_md5 == h for _, h in job.in_entries):
                published_input = True
                result.checks.append(Check("input md5", "ok", f"{result.input_md5} matches table {tables}"))
            else:
                msg = (f"{job.display}: md5 {result.input_md5} differs from the published {job.in_entries[0][1]} "
                       f"(table {tables}): a damaged or partial download, or another model")
                result.checks.append(Check("input md5", "mismatch", msg))
                warnings.append(msg)
    if job.out_entries:
        tables = ", ".join(t for t, _ in job.out_entries)
        if out_ok:
            result.checks.append(Check("output md5", "ok", f"{result.md5} matches table {tables}"))
        elif published_input:
            raise CheckFailed(
                f"decrypted to md5 {result.md5}, but table {tables} publishes {job.out_entries[0][1]} although the "
                "input is the published file" + ("; nothing was kept" if result.output != "-" else ""),
                path=result.output, hint=f"the key is wrong: use {KEY_DESCRIPTION}")
        else:
            msg = (f"{result.output}: md5 {result.md5} differs from table {tables} ({job.out_entries[0][1]})"
                   + ("; the input is not the published file either" if job.in_entries else ""))
            result.checks.append(Check("output md5", "mismatch", msg))
            warnings.append(msg)


def _content_failed(e: ContentError, job: _Job, to_stream: bool) -> CheckFailed:
    """A content check failure as the user's error: garbage means a wrong key, a short file a bad download."""
    if e.incomplete:
        kept = "discard what reached stdout" if to_stream else "nothing was kept"
        return CheckFailed(f"the decrypted {e.kind} file is incomplete: {e.detail}; {kept}", path=job.display,
                           hint="the .enc file is truncated or damaged: download it again "
                                "(llmkit verify compares it with the published MD5s)")
    return CheckFailed(f"the decrypted bytes are not a {e.kind} file ({e.detail}); decryption stopped",
                       path=job.display,
                       hint="the key is not the one these weights were encrypted with: TechGPT-1.0 needs "
                            f"{KEY_DESCRIPTION} (LLaMA-2's file or a converted model is the usual mistake); "
                            "--no-content-check decrypts files that are not model files")


def _decrypt_one(job: _Job, key: Path, out_dir: Path | None, stream: BinaryIO | None, stdin: BinaryIO | None,
                 advance: Callable[[int], None], cancel: threading.Event, warnings: list[str],
                 stage: StagedFiles, content_check: bool) -> FileResult:
    start = time.perf_counter()
    out_md5 = hashlib.md5() if job.out_entries else None
    out_sha = hashlib.sha256() if job.fmt == "belle" else None
    out_name = job.out_name or "-"
    check: ContentCheck | None = None
    if content_check:
        check = ContentCheck.for_name(job.out_name, job.payload) if job.out_name else ContentCheck(None)
    tmp = out_dir / f".{out_name}{TMP_SUFFIX}" if out_dir is not None else None
    src_cm = open(job.src, "rb", buffering=0) if job.src is not None else nullcontext(stdin)
    try:
        with src_cm as src, KeyStream(key) as ks:
            assert src is not None
            _sequential(src)
            header = None
            if job.fmt == "belle":
                buf = bytearray(HEADER_BYTES)
                got = _read_full(src, memoryview(buf))
                header = bytes(buf[:got])
                if got < HEADER_BYTES:
                    raise InputError(f"only {got} bytes: too short for the 32-byte BELLE sha256 header",
                                     path=job.display, hint="the file is truncated; download it again")
                if job.header is not None and header != job.header:
                    raise InputError("the header changed while decrypting", path=job.display)
            dst_cm = open(tmp, "wb", buffering=0) if tmp is not None else nullcontext(stream)
            with writing(out_dir / out_name if out_dir is not None else "-"), dst_cm as dst:
                assert dst is not None
                try:
                    n = xor_stream(src, dst, ks, output_hashes=[h for h in (out_md5, out_sha) if h is not None],
                                   check=check, advance=advance, cancel=cancel,
                                   write_behind=_WRITE_BEHIND_OK and tmp is not None)
                    if check is not None:
                        check.finish()
                except ContentError as e:
                    raise _content_failed(e, job, tmp is None) from None
                if tmp is not None:
                    os.fsync(dst.fileno())
                else:
                    dst.flush()
        if job.payload is not None and n != job.payload:
            raise InputError(f"read {n:,} bytes, expected {job.payload:,}: the file changed while decrypting",
                             path=job.display)
        result = FileResult(job.display, str(out_dir / out_name) if out_dir is not None else "-", job.fmt, n)
        if out_sha is not None:
            result.sha256 = out_sha.hexdigest()
            if header is not None and out_sha.digest() != header:
                raise CheckFailed(f"the decrypted sha256 {result.sha256} differs from the header's {header.hex()}"
                                  + ("; nothing was kept" if tmp is not None else ""), path=job.display,
                                  hint="the file is truncated or damaged (download it again), or the key is wrong")
            result.checks.append(Check("sha256 header", "ok", f"{result.sha256} matches the BELLE header"))
        if out_md5 is not None:
            result.md5 = out_md5.hexdigest()
        _finish_tables(job, result, warnings)
        if check is not None and check.seen:
            result.checks.append(Check("plausible", "ok", f"a whole {check.kind} file"))
        if tmp is not None and out_dir is not None:
            stage.add(tmp, out_dir / out_name)
            tmp = None
        result.seconds = round(time.perf_counter() - start, 3)
        return result
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def decrypt(inputs: Sequence[str | os.PathLike], key: str | os.PathLike, out_dir: str | os.PathLike | None = None,
            *, fmt: str = "auto", key_check: bool = True, content_check: bool = True, jobs: int = 1,
            force: bool = False, stream: BinaryIO | None = None, stdin: BinaryIO | None = None,
            progress: ProgressFactory | None = None) -> CryptoResult:
    """Decrypt ``.enc`` files (or every ``*.enc`` in folders) into ``out_dir``, or into ``stream``.

    ``"-"`` in ``inputs`` reads ``stdin`` (needs ``fmt``). Everything that can be checked before the
    long work is checked first: inputs, formats, output names, existing outputs (refused without
    ``force``), free space, the key. ``content_check``: the decrypted bytes must be a whole file of
    the kind the name says (JSON, safetensors, torch zip, SentencePiece; stdin: whichever the first
    bytes look like). The output set is renamed to its final names only when every file passed.
    Peak memory ~16 MiB per parallel file, whatever the file size.
    """
    t0 = time.perf_counter()
    key = Path(key)
    if fmt not in ("auto", *FORMATS):
        raise InputError(f"unknown format {fmt!r}", hint="use auto, techgpt or belle")
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    if not inputs:
        raise InputError("no input given", hint="pass .enc files, their folder, or - for stdin")
    if (out_dir is None) == (stream is None):
        raise InputError("give either an output folder or an output stream")
    files, ignored = _expand_decrypt_inputs(inputs)
    if None in files:
        if len(files) > 1:
            raise InputError("stdin (-) must be the only input")
        if fmt == "auto":
            raise InputError("stdin has no file name to detect the format from", hint="pass --format techgpt or belle")
        if stream is None:
            raise InputError("stdin has no file name to name the output after", hint="write to stdout with -o -")
        if stdin is None:
            stdin = sys.stdin.buffer
    if stream is not None and len(files) > 1:
        raise InputError(f"{len(files)} inputs cannot all go to stdout", hint="decrypt one file with -o -, "
                         "or give an output folder")
    if not key.is_file():
        raise InputError("no such key file" if not key.exists() else "the key is not a file", path=key,
                         hint=f"pass {KEY_DESCRIPTION}")
    plan: list[_Job] = []
    for p in files:
        if p is None:
            plan.append(_Job(None, "-", None, fmt, None))
            continue
        f, header = detect_format(p, fmt)
        out_name, _ = split_enc_name(p.name)
        size = p.stat().st_size
        payload = size - HEADER_BYTES if f == "belle" else size
        job = _Job(p, str(p), out_name, f, payload, header)
        if f == "techgpt":  # the published tables are TechGPT-1.0's; BELLE files carry their own sha256
            job.in_entries, job.out_entries = _published(p.name), _published(out_name)
        plan.append(job)
    out_path = Path(out_dir) if out_dir is not None else None
    given = [Path(i) for i in inputs if str(i) != "-"]
    if out_path is not None:
        _check_outputs(out_path, [j.out_name for j in plan if j.out_name], given, files, force,
                       sum(j.payload or 0 for j in plan))
    key_status = check_key(key, progress=progress) if key_check else "skipped"
    if out_path is not None:
        out_path.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    total = sum(j.payload for j in plan) if all(j.payload is not None for j in plan) else None
    stage = StagedFiles()
    try:
        with (progress or _no_progress)("decrypting", total) as advance:
            lock = threading.Lock()

            def safe_advance(n: int) -> None:
                with lock:
                    advance(n)

            results = _run_all(plan, lambda j, c: _decrypt_one(j, key, out_path, stream, stdin, safe_advance, c,
                                                               warnings, stage, content_check), jobs)
        stage.commit()
    finally:
        stage.discard()
    return CryptoResult("decrypt", str(key), key_status, str(out_path) if out_path is not None else "-", results,
                        ignored, warnings, sum(r.bytes for r in results), round(time.perf_counter() - t0, 3))


# ------------------------------------------------------------------ encrypt


_NOT_ENCRYPTED = re.compile(r"^(README|LICENSE|NOTICE)(\..*)?$", re.IGNORECASE)


def _expand_encrypt_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
    files: list[Path] = []
    ignored: list[str] = []
    for raw in inputs:
        p = Path(raw)
        if str(raw) == "-":
            raise InputError("encrypt reads files, not stdin", hint="pass the files or their folder")
        if p.is_dir():
            for c in sorted(p.iterdir()):
                if not c.is_file() or c.name.startswith("."):
                    continue
                if c.name.endswith(".enc") or _NOT_ENCRYPTED.match(c.name):
                    ignored.append(str(c))
                else:
                    files.append(c)
            if not files:
                raise InputError("no files to encrypt in this folder", path=p)
        elif p.is_file():
            files.append(p)
        else:
            raise InputError("no such file or folder", path=p, hint="check the path")
    return files, ignored


def _stale_belle_outputs(out_dir: Path, name: str) -> list[str]:
    if not out_dir.is_dir():
        return []
    prefix = name + "."
    return sorted(c.name for c in out_dir.iterdir() if c.name.startswith(prefix) and c.name.endswith(".enc")
                  and _HEX64.fullmatch(c.name[:-4]) and split_enc_name(c.name)[0] == name)


def _encrypt_one(job: _Job, key: Path, out_dir: Path, force: bool, advance: Callable[[int], None],
                 cancel: threading.Event, stage: StagedFiles, stale: list[Path]) -> FileResult:
    start = time.perf_counter()
    assert job.src is not None
    name = job.src.name
    tmp: Path | None = out_dir / f".{name}.{job.fmt}.enc{TMP_SUFFIX}"
    sha = hashlib.sha256() if job.fmt == "belle" else None
    try:
        label = EMPTY_SHA256 if sha is None else "<sha256>"
        with writing(out_dir / f"{name}.{label}.enc"), open(job.src, "rb", buffering=0) as src, \
                KeyStream(key) as ks, open(tmp, "w+b", buffering=0) as dst:
            _sequential(src)
            if sha is not None:
                dst.write(bytes(HEADER_BYTES))  # placeholder; the digest is known at the end
            n = xor_stream(src, dst, ks, input_hashes=[sha] if sha else [], advance=advance, cancel=cancel,
                           write_behind=_WRITE_BEHIND_OK)
            if sha is not None:
                dst.seek(0)
                _write_all(dst, memoryview(sha.digest()))
            os.fsync(dst.fileno())
        if job.payload is not None and n != job.payload:
            raise InputError(f"read {n:,} bytes, expected {job.payload:,}: the file changed while encrypting",
                             path=job.src)
        label = sha.hexdigest() if sha is not None else EMPTY_SHA256
        final = f"{name}.{label}.enc"
        if force and sha is not None:
            stale += [out_dir / old for old in _stale_belle_outputs(out_dir, name) if old != final]
        stage.add(tmp, out_dir / final)
        tmp = None
        result = FileResult(str(job.src), str(out_dir / final), job.fmt, n,
                            sha256=sha.hexdigest() if sha is not None else None)
        result.seconds = round(time.perf_counter() - start, 3)
        return result
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def encrypt(inputs: Sequence[str | os.PathLike], key: str | os.PathLike, out_dir: str | os.PathLike, *,
            fmt: str = "techgpt", key_check: bool = True, jobs: int = 1, force: bool = False,
            progress: ProgressFactory | None = None) -> CryptoResult:
    """The exact inverse of :func:`decrypt`: files as the upstream tools would have published them.

    TechGPT: ``<name>.<sha256 of empty>.enc``, no header. BELLE: 32-byte plaintext sha256 header and
    ``<name>.<sha256>.enc``, written in one pass (the header is filled in at the end).
    """
    t0 = time.perf_counter()
    key = Path(key)
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}", hint="use techgpt or belle")
    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    if not inputs:
        raise InputError("no input given", hint="pass files or their folder")
    files, ignored = _expand_encrypt_inputs(inputs)
    if not key.is_file():
        raise InputError("no such key file" if not key.exists() else "the key is not a file", path=key,
                         hint=f"pass {KEY_DESCRIPTION}")
    out_path = Path(out_dir)
    names = [p.name for p in files]
    given = [Path(i) for i in inputs]
    if fmt == "techgpt":
        _check_outputs(out_path, [f"{n}.{EMPTY_SHA256}.enc" for n in names], given, files, force,
                       sum(p.stat().st_size for p in files))
    else:  # the BELLE names carry the plaintext sha256, known only at the end: any <name>.<hex>.enc clashes
        _check_outputs(out_path, [f"{n}.<sha256>.enc" for n in names], given, files, force,
                       sum(p.stat().st_size + HEADER_BYTES for p in files),
                       extra_clashes=lambda n: _stale_belle_outputs(out_path, n[:-len(".<sha256>.enc")]))
    key_status = check_key(key, progress=progress) if key_check else "skipped"
    out_path.mkdir(parents=True, exist_ok=True)
    plan = [_Job(p, str(p), None, fmt, p.stat().st_size) for p in files]
    with (progress or _no_progress)("encrypting", sum(j.payload or 0 for j in plan)) as advance:
        lock = threading.Lock()

        def safe_advance(n: int) -> None:
            with lock:
                advance(n)

        stage, stale = StagedFiles(), []
        try:
            results = _run_all(plan, lambda j, c: _encrypt_one(j, key, out_path, force, safe_advance, c, stage,
                                                               stale), jobs)
            stage.commit(replace=stale)
        finally:
            stage.discard()
    return CryptoResult("encrypt", str(key), key_status, str(out_path), results, ignored, [],
                        sum(r.bytes for r in results), round(time.perf_counter() - t0, 3))
