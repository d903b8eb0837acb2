"""``llmkit checksum``: md5sum-format tables of files, or per-tensor tables of models (``--tensors``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.errors import InputError
from llmkit.hashing import new_hash
from llmkit.pipeline import ProgressFactory, Result, no_progress
from llmkit.verify.files import display_path, hash_files, list_files, not_found, resolve_jobs

if TYPE_CHECKING:  # torch loads with the per-tensor tables only: plain file checksums start fast
    from llmkit.verify.tensors import TensorTable


@dataclass(frozen=True)
class ChecksumOptions:
    """``llmkit checksum PATH...``: files or folders (models with ``tensors``); ``algorithm`` None = md5
    for files, sha256 per tensor; ``jobs`` hashing threads (0 = up to 4)."""

    paths: tuple[Path, ...]
    algorithm: str | None = None
    tensors: bool = False
    jobs: int = 0
    dec_key: str | None = None  # with tensors: the key (file path or env:VAR) of encrypted .ckpt inputs
    dec_mode: str | None = None


def escape_name(name: str) -> tuple[str, bool]:
    """md5sum's escaping of ``\\`` and newlines in file names (the line then starts with ``\\``)."""
    if "\\" not in name and "\n" not in name and "\r" not in name:
        return name, False
    return name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r"), True


def format_line(digest: str, name: str) -> str:
    """One ``md5sum``-format line (text mode, two spaces)."""
    shown, escaped = escape_name(name)
    return ("\\" if escaped else "") + f"{digest}  {shown}"


@dataclass
class FileDigest:
    path: str
    digest: str
    size: int


@dataclass
class ChecksumResult(Result):
    """The digests of every file, in the order of the PATH arguments (folders sorted). Sizes in bytes."""

    algorithm: str
    files: list[FileDigest] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [format_line(f.digest, f.path) for f in self.files]


@dataclass
class TensorChecksums(Result):
    """``llmkit checksum --tensors``: one :class:`TensorTable` per model, in the order given."""

    algorithm: str
    tables: list[TensorTable] = field(default_factory=list)


def plan_checksum(paths: list[Path]) -> list[tuple[str, Path]]:
    """(display path, file) for every file under the PATHs, in the order given (folders sorted)."""
    out: list[tuple[str, Path]] = []
    for p in paths:
        if p.is_dir():
            arg = str(p)
            out += [(display_path(arg, rel), f) for rel, f in list_files(p).items()]
        elif p.is_file():
            out.append((str(p), p))
        else:
            raise not_found(p)
    return out


def checksum_files(
    planned: list[tuple[str, Path]],
    algorithm: str = "md5",
    *,
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
) -> ChecksumResult:
    """Digests of the planned files (``progress(nbytes)`` as they are read)."""
    new_hash(algorithm)
    digests = hash_files([f for _, f in planned], algorithm, jobs=jobs, progress=progress)
    return ChecksumResult(
        algorithm=algorithm, files=[FileDigest(shown, digests[f], f.stat().st_size) for shown, f in planned]
    )


def checksum(options: ChecksumOptions, *, progress: ProgressFactory | None = None) -> ChecksumResult | TensorChecksums:
    """``llmkit checksum``: file digests under one ``<algo> hashing`` progress bar, or with ``tensors``
    one per-tensor table per model, each under its own ``<algo> per tensor`` bar (bytes)."""
    progress = progress or no_progress
    jobs = resolve_jobs(options.jobs)
    if options.dec_key is not None and not options.tensors:
        raise InputError(
            "--dec-key goes with --tensors (file checksums hash the stored, encrypted bytes)",
            hint="add --tensors, or drop --dec-key",
        )
    if options.tensors:
        from llmkit.verify.tensors import tensor_table

        algorithm = options.algorithm or "sha256"
        tables = []
        key = None
        if options.dec_key is not None:
            from llmkit.io.mindspore.keys import read_key

            key = read_key(options.dec_key, options.dec_mode, flag="--dec-key")
        from llmkit.io.core.llama_tensors import check_source
        from llmkit.io.core.source import open_source

        for p in options.paths:
            with open_source(p, ckpt_key=key) as src:
                check_source(src)  # no table of an incomplete LLaMA (``llmkit.io.core.llama_tensors``)
                with progress(f"{algorithm} per tensor", src.total_bytes) as advance:
                    table = tensor_table(src, algorithm, jobs=jobs, progress=advance)
                table.source = str(p) if key is not None else str(src.path)
                tables.append(table)
        return TensorChecksums(algorithm=algorithm, tables=tables)
    algorithm = options.algorithm or "md5"
    planned = plan_checksum(list(options.paths))
    with progress(f"{algorithm} hashing", sum(f.stat().st_size for _, f in planned)) as advance:
        return checksum_files(planned, algorithm, jobs=jobs, progress=advance)
