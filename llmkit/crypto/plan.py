"""Options and plans of decrypt and encrypt: everything checked before the long work starts.

A plan is the list of files to stream (:class:`FileJob`), found from the options: the inputs
expanded, every format detected, the published tables looked up, and the output folder checked
(not an input, not inside or around one, no clash without ``force``, free space, writable). The key
identity check (:func:`~llmkit.crypto.keycheck.check_key`) runs after planning, before any output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.crypto.keycheck import require_key_file
from llmkit.crypto.names import (
    EMPTY_SHA256,
    FORMATS,
    HEADER_BYTES,
    detect_format,
    expand_decrypt_inputs,
    expand_encrypt_inputs,
    output_name,
    stale_belle_outputs,
)
from llmkit.crypto.tables import published_entries
from llmkit.errors import InputError, OutputExistsError
from llmkit.io.core.destination import ensure_output_is_new
from llmkit.units import check_space, free_bytes

if TYPE_CHECKING:
    from llmkit.crypto.remote import RemoteEnc


def _freeze_paths(options: DecryptOptions | EncryptOptions) -> None:
    """Normalize frozen options as given by any caller: ``inputs`` a tuple of paths, ``key`` and ``output`` paths."""
    object.__setattr__(options, "inputs", tuple(Path(p) for p in options.inputs))
    object.__setattr__(options, "key", Path(options.key))
    if options.output is not None:
        object.__setattr__(options, "output", Path(options.output))


@dataclass(frozen=True)
class DecryptOptions:
    """What ``llmkit decrypt`` does, as data (the CLI builds it from its flags)."""

    inputs: tuple[Path, ...]  # .enc files, folders (their *.enc), hf:// / s3:// URLs, or Path("-") for stdin
    key: Path
    output: Path | None = None  # the output folder; None: the stream passed to decrypt() (stdout)
    format: str = "auto"  # auto | techgpt | belle
    key_check: bool = True  # the key must be LLaMA-1 7B consolidated.00.pth
    content_check: bool = True  # the decrypted bytes must be a whole file of the kind the name says
    table_check: bool = True  # a published md5 table that does not match fails (off: a warning)
    jobs: int = 1  # files in parallel
    force: bool = False  # overwrite existing outputs
    dry_run: bool = False  # every check, then the files and bytes to read (fetch) listed; nothing read or written

    def __post_init__(self) -> None:
        _freeze_paths(self)


@dataclass(frozen=True)
class EncryptOptions:
    """What ``llmkit encrypt`` does, as data."""

    inputs: tuple[Path, ...]  # files, or folders (every file but *.enc, README*, LICENSE*, NOTICE*, hidden)
    key: Path
    output: Path  # the output folder
    format: str = "techgpt"  # techgpt | belle
    key_check: bool = True
    jobs: int = 1
    force: bool = False

    def __post_init__(self) -> None:
        _freeze_paths(self)


@dataclass
class FileJob:
    src: Path | None  # None: stdin; a RemotePath for a remote file (``remote``)
    display: str  # input name as shown
    out_name: str | None  # decrypt: final output name; encrypt: None until the BELLE digest is known
    fmt: str
    payload: int | None  # bytes to XOR (None for stdin)
    header: bytes | None = None  # BELLE decrypt: the expected sha256 digest
    in_entries: list[tuple[str, str]] = field(default_factory=list)  # published (table, md5) of the input
    out_entries: list[tuple[str, str]] = field(default_factory=list)  # ... and of the output
    table_check: bool = True  # a mismatch with those entries fails (False: a warning)
    remote: RemoteEnc | None = None  # a remote file: its store, entry and the head fetched while planning


@dataclass
class CryptoPlan:
    """The files of one run, checked. ``total``: bytes to XOR (None when stdin is read)."""

    command: str  # decrypt | encrypt
    key: Path
    out_dir: Path | None  # None: one file to a stream
    files: list[FileJob]
    ignored: list[str]  # files of input folders left alone
    label: str  # the progress bar's label
    jobs: int

    @property
    def total(self) -> int | None:
        sizes = [j.payload for j in self.files if j.payload is not None]
        return sum(sizes) if len(sizes) == len(self.files) else None  # unknown while any payload is

    @property
    def reads_stdin(self) -> bool:
        return any(j.src is None for j in self.files)


def _common_checks(options: DecryptOptions | EncryptOptions, formats: Sequence[str], what: str) -> None:
    if options.format not in formats:
        raise InputError(f"unknown format {options.format!r}", hint=f"use {', '.join(formats[:-1])} or {formats[-1]}")
    if options.jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {options.jobs}")
    if not options.inputs:
        raise InputError("no input given", hint=f"pass {what}")


def refuse_key_folder(out_dir: Path, key: Path) -> None:
    """The key is an input: ``-o`` may not be the folder that holds it, whether the folder of the path
    as given (a link there is what ``--force`` would replace) or of the file it resolves to."""
    holders = {os.path.realpath(os.path.dirname(os.path.abspath(key))), os.path.dirname(os.path.realpath(key))}
    if os.path.realpath(out_dir) in holders:
        raise InputError(
            f"the output folder holds the key {key}",
            path=out_dir,
            hint="choose another -o; llmkit never writes beside or over its inputs, the key included",
        )


def check_outputs(
    out_dir: Path,
    names: list[str],
    inputs: list[Path],
    files: Sequence[Path | None],
    force: bool,
    need: int,
    extra_clashes: Callable[[str], list[str]] | None = None,
    *,
    key: Path,
) -> None:
    """Pre-flight checks of the output folder; ``inputs`` as given (files, folders), ``files`` expanded,
    ``key`` the key file (an input too: never written, moved or deleted, with or without ``force``)."""
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    dup = [n for n, c in seen.items() if c > 1]
    if dup:
        raise InputError(
            f"two inputs would both write {dup[0]}",
            path=out_dir,
            hint="pass each file once, or decrypt them into different folders",
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError("the output path exists and is not a folder", path=out_dir, hint="choose another -o")
    refuse_key_folder(out_dir, key)
    ensure_output_is_new(out_dir, [*inputs, key])
    resolved_inputs = {os.path.realpath(p) for p in (*files, key) if p is not None}
    for n in names:
        target = out_dir / n
        if os.path.realpath(target) in resolved_inputs:
            raise InputError(
                f"the output {n} would overwrite an input",
                path=out_dir,
                hint="choose another -o; llmkit never writes over its inputs",
            )
    if not force:
        clash = [n for n in names if (out_dir / n).exists()]
        if extra_clashes is not None:
            clash += [c for n in names for c in extra_clashes(n)]
        if clash:
            raise OutputExistsError(
                f"the output folder already holds {', '.join(clash[:3])}" + (" ..." if len(clash) > 3 else ""),
                path=out_dir,
                hint="pass --force to overwrite, or choose another -o",
            )
    check_space(out_dir, need, free_bytes(out_dir))  # a read-only file system, or output + margin > free


def _local_job(p: Path, fmt: str, table_check: bool) -> FileJob:
    out_name = output_name(p)
    f, header = detect_format(p, fmt)
    size = p.stat().st_size
    job = FileJob(
        p, str(p), out_name, f, size - HEADER_BYTES if f == "belle" else size, header, table_check=table_check
    )
    if f == "techgpt":  # the published tables are TechGPT-1.0's; BELLE files carry their own sha256
        job.in_entries, job.out_entries = published_entries(p.name, out_name)
    return job


def plan_decrypt(options: DecryptOptions, *, to_stream: bool) -> CryptoPlan:
    """Check everything a decrypt can check before it starts; ``to_stream``: the output is a stream.
    A remote input (``hf://``, ``s3://``, a registry name) is listed after the local checks
    (:mod:`llmkit.crypto.remote`); only a BELLE file's 32-byte header is fetched."""
    from llmkit.crypto.remote import input_url, remote_jobs

    _common_checks(options, ("auto", *FORMATS), ".enc files, their folder, a URL, or - for stdin")
    fmt = options.format
    if (options.output is None) != to_stream:
        raise InputError("give either an output folder or an output stream")
    urls = [input_url(p) for p in options.inputs]
    expanded = [
        expand_decrypt_inputs([p]) if u is None else ([], []) for p, u in zip(options.inputs, urls, strict=True)
    ]
    files = [f for found, _ in expanded for f in found]  # local
    if None in files:
        if len(options.inputs) > 1:
            raise InputError("stdin (-) must be the only input")
        if fmt == "auto":
            raise InputError("stdin has no file name to detect the format from", hint="pass --format techgpt or belle")
        if not to_stream:
            raise InputError("stdin has no file name to name the output after", hint="write to stdout with -o -")
    if to_stream and len(files) > 1:
        raise InputError(
            f"{len(files)} inputs cannot all go to stdout", hint="decrypt one file with -o -, or give an output folder"
        )
    require_key_file(options.key)
    jobs: list[FileJob] = []
    ignored: list[str] = []
    for (found, skipped), url in zip(expanded, urls, strict=True):
        if url is not None:
            found_jobs, skipped = remote_jobs(*url, fmt, options.table_check)
            jobs += found_jobs
        else:
            jobs += [
                FileJob(None, "-", None, fmt, None) if f is None else _local_job(f, fmt, options.table_check)
                for f in found
            ]
        ignored += skipped
    if to_stream and len(jobs) > 1:
        raise InputError(
            f"{len(jobs)} inputs cannot all go to stdout", hint="decrypt one file with -o -, or give an output folder"
        )
    if options.output is not None:
        check_outputs(
            options.output,
            [j.out_name for j in jobs if j.out_name],
            [p for p, u in zip(options.inputs, urls, strict=True) if u is None and str(p) != "-"],
            files,
            options.force,
            sum(j.payload or 0 for j in jobs),
            key=options.key,
        )
    return CryptoPlan("decrypt", options.key, options.output, jobs, ignored, "decrypting", options.jobs)


def plan_encrypt(options: EncryptOptions) -> CryptoPlan:
    """Check everything an encrypt can check before it starts. BELLE names carry the plaintext sha256,
    known only at the end, so any ``<name>.<hex>.enc`` already in the output folder clashes."""
    _common_checks(options, FORMATS, "files or their folder")
    if options.output is None:
        raise InputError("encrypt writes files into a folder", hint="pass -o DIR")
    files, ignored = expand_encrypt_inputs(options.inputs)
    require_key_file(options.key)
    out_dir, names = options.output, [p.name for p in files]
    if options.format == "techgpt":
        check_outputs(
            out_dir,
            [f"{n}.{EMPTY_SHA256}.enc" for n in names],
            list(options.inputs),
            files,
            options.force,
            sum(p.stat().st_size for p in files),
            key=options.key,
        )
    else:
        check_outputs(
            out_dir,
            [f"{n}.<sha256>.enc" for n in names],
            list(options.inputs),
            files,
            options.force,
            sum(p.stat().st_size + HEADER_BYTES for p in files),
            extra_clashes=lambda n: stale_belle_outputs(out_dir, n[: -len(".<sha256>.enc")]),
            key=options.key,
        )
    jobs = [FileJob(p, str(p), None, options.format, p.stat().st_size) for p in files]
    return CryptoPlan("encrypt", options.key, out_dir, jobs, ignored, "encrypting", options.jobs)
