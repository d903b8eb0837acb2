"""Decrypt and encrypt: run a checked plan, file by file (or ``jobs`` at a time), all or nothing.

Each file streams through :func:`~llmkit.crypto.stream.xor_stream` into the run's staged output
folder beside ``-o``, is fsynced (with early writeback, so the fsync is short), and the folder becomes
final in one rename only after every check of every file passed (:class:`~llmkit.io.core.staging.StagedFolder`:
the output is claimed against a concurrent run; the folder's other files are kept). Peak memory ~16 MiB
per parallel file.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from llmkit.crypto.diagnosis import content_failed, key_or_damage
from llmkit.crypto.keycheck import check_key
from llmkit.crypto.keystream import KeyStream, advise_sequential, read_full
from llmkit.crypto.names import EMPTY_SHA256, HEADER_BYTES, stale_belle_outputs
from llmkit.crypto.plan import CryptoPlan, DecryptOptions, EncryptOptions, FileJob, plan_decrypt, plan_encrypt
from llmkit.crypto.remote import open_remote_input
from llmkit.crypto.results import CryptoResult, FileResult, planned_files
from llmkit.crypto.stream import WRITE_BEHIND_OK, Cancelled, write_all, xor_stream
from llmkit.crypto.tables import finish_tables, table_hashes
from llmkit.errors import CheckFailed, InputError, writing
from llmkit.io.core.destination import make_folder, remove_empty
from llmkit.io.core.sniff import ContentCheck, ContentError
from llmkit.io.core.staging import StagedFolder
from llmkit.pipeline import Check, ProgressFactory, no_progress

# work(job, advance, cancel, stage) -> the file's result; its output written into ``stage`` (None: a stream)
FileWork = Callable[[FileJob, Callable[[int], None], threading.Event, "StagedOutput | None"], FileResult]
_Options = TypeVar("_Options", DecryptOptions, EncryptOptions)


def _run_all(
    jobs: list[FileJob], work: Callable[[FileJob, threading.Event], FileResult], n_jobs: int
) -> list[FileResult]:
    """Run ``work`` per job, ``n_jobs`` at a time; on the first failure the others stop and clean up."""
    cancel = threading.Event()
    if n_jobs <= 1 or len(jobs) <= 1:
        return [work(j, cancel) for j in jobs]
    results: list[FileResult | None] = [None] * len(jobs)
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = work(jobs[index], cancel)
        except BaseException as e:
            if not isinstance(e, Cancelled):
                failures.append(e)
            cancel.set()

    with ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="llmkit-file") as pool:
        list(pool.map(run, range(len(jobs))))
    if failures:
        raise failures[0]
    return [r for r in results if r is not None]


class StagedOutput:
    """The output folder of a decrypt/encrypt run: files written into a stage, final all at once."""

    def __init__(self, out_dir: Path, force: bool, stale: Sequence[Path] = ()):
        self.written: set[str] = set()
        self._stale = stale  # filled while working: earlier BELLE outputs that --force replaces
        self.folder = StagedFolder(
            out_dir,
            writes=self.written.__contains__,
            force=force,
            owned=lambda n: any(p.name == n for p in self._stale),
        )

    def path(self, name: str) -> Path:
        """Where the file ``name`` is written (registered as this run's)."""
        self.written.add(name)
        return self.folder.path(name)


def _execute(
    plan: CryptoPlan, work: FileWork, progress: ProgressFactory | None, force: bool, stale: Sequence[Path] = ()
) -> list[FileResult]:
    """Every file of ``plan`` through ``work`` under one progress bar; the output folder becomes final
    (replacing ``stale``, filled while working) only when every file passed."""
    stage = StagedOutput(plan.out_dir, force, stale) if plan.out_dir is not None else None
    made = make_folder(plan.out_dir.parent) if plan.out_dir is not None else []
    try:
        if stage is not None:
            stage.written.update(j.out_name for j in plan.files if j.out_name)
            stage.folder.open()
        with (progress or no_progress)(plan.label, plan.total) as advance:
            lock = threading.Lock()

            def safe_advance(n: int) -> None:
                with lock:
                    advance(n)

            results = _run_all(plan.files, lambda j, c: work(j, safe_advance, c, stage), plan.jobs)
        if stage is not None:
            stage.folder.commit()
    except BaseException:
        if stage is not None:
            stage.folder.discard()
        remove_empty(made)
        raise
    return results


def _crypto_result(
    plan: CryptoPlan, key_status: str, results: list[FileResult], warnings: list[str], t0: float, dry_run: bool = False
) -> CryptoResult:
    """The run's result: per-file results, their total bytes and the seconds since ``t0``."""
    return CryptoResult(
        plan.command,
        str(plan.key),
        key_status,
        str(plan.out_dir or "-"),
        results,
        plan.ignored,
        warnings,
        sum(r.bytes for r in results),
        round(time.perf_counter() - t0, 3),
        dry_run=dry_run,
    )


def _as_options(cls: type[_Options], first: Any, key: Any, output: Any, flags: dict[str, Any]) -> _Options:
    """The options object, or one built from the keyword form ``(inputs, key, out_dir, fmt=..., ...)``."""
    if isinstance(first, cls):
        if key is not None or output is not None or flags:
            raise TypeError(f"pass either a {cls.__name__} or inputs and keyword arguments, not both")
        return first
    if "fmt" in flags:
        flags["format"] = flags.pop("fmt")
    return cls(inputs=tuple(first), key=key, output=output, **flags)


@contextmanager
def _removed_on_failure(tmp: Path | None) -> Iterator[None]:
    """A file's temporary output goes when its work fails (once staged, the stage owns it)."""
    try:
        yield
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ decrypt


def _read_belle_header(src: BinaryIO, job: FileJob) -> bytes:
    buf = bytearray(HEADER_BYTES)
    got = read_full(src, memoryview(buf))
    if got < HEADER_BYTES:
        raise InputError(
            f"only {got} bytes: too short for the 32-byte BELLE sha256 header",
            path=job.display,
            hint="the file is truncated; download it again",
        )
    if job.header is not None and bytes(buf) != job.header:
        raise InputError("the header changed while decrypting", path=job.display)
    return bytes(buf)


def _decrypt_one(
    job: FileJob,
    key: Path,
    out_dir: Path | None,
    stream: BinaryIO | None,
    stdin: BinaryIO | None,
    advance: Callable[[int], None],
    cancel: threading.Event,
    warnings: list[str],
    stage: StagedOutput | None,
    content_check: bool,
    key_checked: bool,
) -> FileResult:
    start = time.perf_counter()
    in_md5, out_md5 = table_hashes(job)
    out_sha = hashlib.sha256() if job.fmt == "belle" else None
    out_name = job.out_name or "-"
    check: ContentCheck | None = None
    if content_check:
        check = ContentCheck.for_name(job.out_name, job.payload) if job.out_name else ContentCheck(None)
    tmp = stage.path(out_name) if stage is not None else None
    # Both files are entered by the with statements below (a stream the caller gave is left open there); a
    # remote file's digest is judged when it is left.
    if job.remote is not None:
        src_cm: Any = open_remote_input(job)
    else:
        src_cm = open(job.src, "rb", buffering=0) if job.src is not None else nullcontext(stdin)  # noqa: SIM115
    with _removed_on_failure(tmp):
        with src_cm as src, KeyStream(key) as ks:
            assert src is not None
            advise_sequential(src)
            header = _read_belle_header(src, job) if job.fmt == "belle" else None
            dst_cm = open(tmp, "wb", buffering=0) if tmp is not None else nullcontext(stream)  # noqa: SIM115
            with writing(out_dir / out_name if out_dir is not None else "-"), dst_cm as dst:
                assert dst is not None
                try:
                    n = xor_stream(
                        src,
                        dst,
                        ks,
                        input_hashes=[in_md5] if in_md5 is not None else [],
                        output_hashes=[h for h in (out_md5, out_sha) if h is not None],
                        check=check,
                        advance=advance,
                        cancel=cancel,
                        write_behind=WRITE_BEHIND_OK and tmp is not None,
                    )
                    if check is not None:
                        check.finish()
                except ContentError as e:
                    raise content_failed(e, job, tmp is None, key_checked) from None
                if tmp is not None:
                    os.fsync(dst.fileno())
                else:
                    dst.flush()
        if job.payload is not None and n != job.payload:
            raise InputError(
                f"read {n:,} bytes, expected {job.payload:,}: the file changed while decrypting", path=job.display
            )
        result = FileResult(job.display, str(out_dir / out_name) if out_dir is not None else "-", job.fmt, n)
        result.fetched = job.remote.size if job.remote is not None else None
        if out_sha is not None:
            result.sha256 = out_sha.hexdigest()
            if header is not None and out_sha.digest() != header:
                raise CheckFailed(
                    f"the decrypted sha256 {result.sha256} differs from the header's {header.hex()}"
                    + ("; nothing was kept" if tmp is not None else ""),
                    path=job.display,
                    hint=key_or_damage(job, key_checked),
                )
            result.checks.append(Check("sha256 header", "ok", f"{result.sha256} matches the BELLE header"))
        finish_tables(job, result, warnings, (in_md5, out_md5))
        if check is not None and check.seen:
            result.checks.append(Check("plausible", "ok", f"a whole {check.kind} file"))
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def decrypt(
    options: DecryptOptions | Sequence[str | os.PathLike],
    key: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    stream: BinaryIO | None = None,
    stdin: BinaryIO | None = None,
    progress: ProgressFactory | None = None,
    **flags: Any,
) -> CryptoResult:
    """Decrypt ``.enc`` files (or every ``*.enc`` in folders) into ``options.output``, or into ``stream``.

    ``Path("-")`` in ``options.inputs`` reads ``stdin`` (needs ``options.format``). Everything that
    can be checked before the long work is checked first (:func:`~llmkit.crypto.plan.plan_decrypt`),
    then the key. ``content_check``: the decrypted bytes must be a whole file of the kind the name
    says (JSON, safetensors, torch zip, SentencePiece; stdin: whichever the first bytes look like).
    The output set is renamed to its final names only when every file passed. Peak memory ~16 MiB
    per parallel file, whatever the file size. Also callable as ``decrypt(inputs, key, out_dir,
    fmt=..., key_check=..., content_check=..., jobs=..., force=..., stream=..., ...)``.
    """
    options = _as_options(DecryptOptions, options, key, out_dir, flags)
    t0 = time.perf_counter()
    plan = plan_decrypt(options, to_stream=stream is not None)
    if plan.reads_stdin and stdin is None:
        stdin = sys.stdin.buffer
    key_status = check_key(plan.key, progress=progress) if options.key_check else "skipped"
    if options.dry_run:
        return _crypto_result(plan, key_status, planned_files(plan), [], t0, dry_run=True)
    warnings: list[str] = []

    def work(
        job: FileJob, advance: Callable[[int], None], cancel: threading.Event, stage: StagedOutput | None
    ) -> FileResult:
        return _decrypt_one(
            job,
            plan.key,
            plan.out_dir,
            stream,
            stdin,
            advance,
            cancel,
            warnings,
            stage,
            options.content_check,
            options.key_check,
        )

    return _crypto_result(plan, key_status, _execute(plan, work, progress, options.force), warnings, t0)


# ------------------------------------------------------------------ encrypt


def _encrypt_one(
    job: FileJob,
    key: Path,
    out_dir: Path,
    force: bool,
    advance: Callable[[int], None],
    cancel: threading.Event,
    stage: StagedOutput,
    stale: list[Path],
) -> FileResult:
    start = time.perf_counter()
    assert job.src is not None
    name = job.src.name
    tmp = stage.folder.path(f".{name}.{job.fmt}.enc.partial")  # named once the BELLE digest is known
    sha = hashlib.sha256() if job.fmt == "belle" else None
    with _removed_on_failure(tmp):
        label = EMPTY_SHA256 if sha is None else "<sha256>"
        with (
            writing(out_dir / f"{name}.{label}.enc"),
            open(job.src, "rb", buffering=0) as src,
            KeyStream(key) as ks,
            open(tmp, "w+b", buffering=0) as dst,
        ):
            advise_sequential(src)
            if sha is not None:
                dst.write(bytes(HEADER_BYTES))  # placeholder; the digest is known at the end
            n = xor_stream(
                src,
                dst,
                ks,
                input_hashes=[sha] if sha else [],
                advance=advance,
                cancel=cancel,
                write_behind=WRITE_BEHIND_OK,
            )
            if sha is not None:
                dst.seek(0)
                write_all(dst, memoryview(sha.digest()))
            os.fsync(dst.fileno())
        if job.payload is not None and n != job.payload:
            raise InputError(
                f"read {n:,} bytes, expected {job.payload:,}: the file changed while encrypting", path=job.src
            )
        label = sha.hexdigest() if sha is not None else EMPTY_SHA256
        final = f"{name}.{label}.enc"
        if force and sha is not None:
            stale += [out_dir / old for old in stale_belle_outputs(out_dir, name) if old != final]
        os.rename(tmp, stage.path(final))
    return FileResult(
        str(job.src),
        str(out_dir / final),
        job.fmt,
        n,
        sha256=sha.hexdigest() if sha is not None else None,
        seconds=round(time.perf_counter() - start, 3),
    )


def encrypt(
    options: EncryptOptions | Sequence[str | os.PathLike],
    key: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    progress: ProgressFactory | None = None,
    **flags: Any,
) -> CryptoResult:
    """The exact inverse of :func:`decrypt`: files as the upstream tools would have published them.

    TechGPT: ``<name>.<sha256 of empty>.enc``, no header. BELLE: 32-byte plaintext sha256 header and
    ``<name>.<sha256>.enc``, written in one pass (the header is filled in at the end). Also callable
    as ``encrypt(inputs, key, out_dir, fmt=..., key_check=..., jobs=..., force=..., progress=...)``.
    """
    options = _as_options(EncryptOptions, options, key, out_dir, flags)
    t0 = time.perf_counter()
    plan = plan_encrypt(options)
    key_status = check_key(plan.key, progress=progress) if options.key_check else "skipped"
    assert plan.out_dir is not None
    out = plan.out_dir
    stale: list[Path] = []

    def work(
        job: FileJob, advance: Callable[[int], None], cancel: threading.Event, stage: StagedOutput | None
    ) -> FileResult:
        assert stage is not None
        return _encrypt_one(job, plan.key, out, options.force, advance, cancel, stage, stale)

    return _crypto_result(plan, key_status, _execute(plan, work, progress, options.force, stale), [], t0)
