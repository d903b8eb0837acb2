"""The published MD5 tables (TechGPT-1.0's model card, LLaMA's checklist), checked while a file is decrypted.

The tables are consulted for TechGPT-format files only (BELLE files carry their own sha256). A file
whose name a table lists must match it: a mismatch fails the run (nothing is kept) unless the user
opts out with ``--no-table-check`` (``DecryptOptions.table_check=False``), which makes it a warning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmkit.crypto.keycheck import KEY_DESCRIPTION
from llmkit.errors import CheckFailed
from llmkit.hashing import hash_file
from llmkit.pipeline import Check

if TYPE_CHECKING:
    from llmkit.crypto.plan import FileJob
    from llmkit.crypto.results import FileResult


def _published(name: str) -> list[tuple[str, str]]:
    """(table, md5) entries of llmkit's built-in checksum tables for a file name."""
    from llmkit.registry import find_expected  # looked up at call time: tests replace it on the package

    return list(find_expected(name, "md5"))


def published_entries(enc_name: str, out_name: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The (table, md5) entries of a TechGPT ``.enc`` file and of its plaintext, found while planning."""
    return _published(enc_name), _published(out_name)


def finish_tables(job: FileJob, result: FileResult, warnings: list[str]) -> None:
    """Compare md5s with the published tables (TechGPT-1.0's card, LLaMA's checklist). Raises CheckFailed
    on a mismatch, unless ``job.table_check`` is off (then the mismatch is a warning).

    Only the output is hashed while streaming: a match proves both the download and the key. The
    input is hashed (a second read) only to explain a mismatch. An input that is the published .enc
    file decrypting to another md5 proves a wrong key: that fails whatever ``table_check`` says.
    """
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

    A matching output implies the input; stdin is not hashed; otherwise the input is read again.
    """
    tables = ", ".join(t for t, _ in job.in_entries)
    if out_ok:
        result.checks.append(Check("input md5", "ok", f"implied by the output md5 (table {tables})"))
        return False
    if job.src is None:
        result.checks.append(Check("input md5", "info", "stdin: not hashed"))
        return False
    result.input_md5 = hash_file(job.src, "md5")
    if any(result.input_md5 == h for _, h in job.in_entries):
        result.checks.append(Check("input md5", "ok", f"{result.input_md5} matches table {tables}"))
        return True
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
