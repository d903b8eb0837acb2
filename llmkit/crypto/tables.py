"""The published MD5 tables (TechGPT-1.0's model card, LLaMA's checklist), checked while a file is decrypted.

The tables are consulted for TechGPT-format files only (BELLE files carry their own sha256). A file
whose name a table lists must match it: a mismatch fails the run (nothing is kept) unless the user
opts out with ``--no-table-check`` (``DecryptOptions.table_check=False``), which makes it a warning.
The md5s are computed while the file streams (:func:`table_hashes`); on 2 CPUs a listed input is hashed only
when the output does not match (a second read), since a matching output proves it.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

from llmkit.crypto.keycheck import KEY_DESCRIPTION
from llmkit.errors import CheckFailed
from llmkit.hashing import hash_file
from llmkit.pipeline import Check

if TYPE_CHECKING:
    from llmkit.crypto.plan import FileJob
    from llmkit.crypto.results import FileResult

STDIN_MD5 = "stdin: no file name to look up in the published tables; compare it with the model card"


def _published(name: str) -> list[tuple[str, str]]:
    """(table, md5) entries of llmkit's built-in checksum tables for a file name."""
    from llmkit.registry import find_expected  # looked up at call time: tests replace it on the package

    return list(find_expected(name, "md5"))


def published_entries(enc_name: str, out_name: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The (table, md5) entries of a TechGPT ``.enc`` file and of its plaintext, found while planning."""
    return _published(enc_name), _published(out_name)


def table_hashes(job: FileJob) -> tuple[hashlib._Hash | None, hashlib._Hash | None]:
    """The md5s to compute while ``job`` streams: (of the input, of the output), None where none is wanted.

    The output's when a table lists it. The input's for TechGPT bytes read from stdin (no name to look
    up, and no second read possible: reported for the user to compare), and when a table lists the
    ``.enc`` file and either no table lists the output, or a core is spare for a second MD5 thread beside
    the XOR (:func:`spare_cores`), or the file is remote (a second read would fetch it again); otherwise
    :func:`finish_tables` hashes the input only after a mismatch.
    """
    if job.src is None:
        wants_input = job.fmt == "techgpt"
    else:
        wants_input = bool(job.in_entries) and (not job.out_entries or spare_cores() or job.remote is not None)
    return (hashlib.md5() if wants_input else None), (hashlib.md5() if job.out_entries else None)


def spare_cores() -> bool:
    """Whether a second MD5 beside the output's, the XOR and the I/O would get a core of its own (3+ CPUs)."""
    try:
        return len(os.sched_getaffinity(0)) >= 3
    except AttributeError:  # not Linux
        return (os.cpu_count() or 1) >= 3


def finish_tables(
    job: FileJob,
    result: FileResult,
    warnings: list[str],
    hashes: tuple[hashlib._Hash | None, hashlib._Hash | None],
) -> None:
    """Fill ``result``'s md5s from ``hashes`` (:func:`table_hashes`, fed while streaming) and compare them
    with the published tables (TechGPT-1.0's card, LLaMA's checklist). Raises CheckFailed on a mismatch,
    unless ``job.table_check`` is off (then the mismatch is a warning).

    A matching output proves both the download and the key; the input's md5 tells a wrong key (the
    input is the published .enc file) from a damaged download when it does not match. An input that
    is the published .enc file decrypting to another md5 proves a wrong key: that fails whatever
    ``table_check`` says.
    """
    input_md5, output_md5 = hashes
    if input_md5 is not None:
        result.input_md5 = input_md5.hexdigest()
    if output_md5 is not None:
        result.md5 = output_md5.hexdigest()
    if job.src is None and not job.in_entries and result.input_md5 is not None:
        result.checks.append(Check("input md5", "info", f"{result.input_md5} ({STDIN_MD5})"))
    out_ok = bool(job.out_entries) and any(result.md5 == h for _, h in job.out_entries)
    failed: list[str] = []  # what disagrees, for the failure message
    published_input = _check_input_md5(job, result, out_ok, warnings, failed) if job.in_entries else False
    kept = "; nothing was kept" if result.output != "-" else "; discard what reached stdout"
    if job.out_entries:
        _check_output_md5(job, result, out_ok, published_input, kept, warnings, failed)
    if failed and job.table_check:
        tables = ", ".join(dict.fromkeys(t for t, _ in (*job.in_entries, *job.out_entries)))
        raise CheckFailed(
            "the published md5 table does not match: " + "; ".join(failed) + kept,
            path=job.display,
            hint="download the file again (a damaged or partial download) and check the key; if these "
            f"are not the files of {tables} (another model under the same names), pass "
            "--no-table-check",
        )


def _check_input_md5(job: FileJob, result: FileResult, out_ok: bool, warnings: list[str], failed: list[str]) -> bool:
    """The ``input md5`` check against ``job.in_entries``; True when the input is the published .enc file.

    Without a streamed md5 a matching output implies the input, and a mismatch reads the input again.

    An input that differs while the output matches is a note: the output is the published file.
    """
    tables = ", ".join(t for t, _ in job.in_entries)
    if result.input_md5 is None and out_ok:  # not hashed while streaming (2 CPUs): the output proves it
        result.checks.append(Check("input md5", "ok", f"implied by the output md5 (table {tables})"))
        return False
    if result.input_md5 is None:  # the rare path: read the file again to explain the mismatch
        assert job.src is not None
        result.input_md5 = hash_file(job.src, "md5")
    if any(result.input_md5 == h for _, h in job.in_entries):
        result.checks.append(Check("input md5", "ok", f"{result.input_md5} matches table {tables}"))
        return True
    if out_ok:
        published = job.in_entries[0][1]
        detail = f"{result.input_md5} differs from table {tables} ({published}); it decrypts to the published file"
        result.checks.append(Check("input md5", "info", detail))
        return False
    msg = (
        f"{job.display}: md5 {result.input_md5} differs from the published {job.in_entries[0][1]} "
        f"(table {tables}): a damaged or partial download, or another model"
    )
    result.checks.append(Check("input md5", "mismatch", msg))
    warnings.append(msg)
    failed.append(f"the .enc file has md5 {result.input_md5}, table {tables} publishes {job.in_entries[0][1]}")
    return False


def _check_output_md5(
    job: FileJob,
    result: FileResult,
    out_ok: bool,
    published_input: bool,
    kept: str,
    warnings: list[str],
    failed: list[str],
) -> None:
    """The ``output md5`` check against ``job.out_entries``; the published input decrypting to
    another md5 proves a wrong key and raises CheckFailed at once."""
    tables = ", ".join(t for t, _ in job.out_entries)
    if out_ok:
        result.checks.append(Check("output md5", "ok", f"{result.md5} matches table {tables}"))
    elif published_input:
        raise CheckFailed(
            f"decrypted to md5 {result.md5}, but table {tables} publishes {job.out_entries[0][1]} although the "
            "input is the published file" + kept,
            path=result.output,
            hint=f"the key is wrong: use {KEY_DESCRIPTION}",
        )
    else:
        msg = f"{result.output}: md5 {result.md5} differs from table {tables} ({job.out_entries[0][1]})" + (
            "; the input is not the published file either" if job.in_entries else ""
        )
        result.checks.append(Check("output md5", "mismatch", msg))
        warnings.append(msg)
        failed.append(
            f"it decrypts to md5 {result.md5}, table {tables} publishes {job.out_entries[0][1]} for {job.out_name}"
        )
