"""TechGPT-1.0's published MD5 tables (its model card), checked while a file is decrypted.

The tables are consulted for TechGPT-format files only (BELLE files carry their own sha256).
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
    try:
        from llmkit.registry import find_expected
    except ModuleNotFoundError as e:  # pragma: no cover - the registry ships with llmkit
        if e.name == "llmkit.registry":
            return []
        raise
    return list(find_expected(name, "md5"))


def published_entries(enc_name: str, out_name: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The (table, md5) entries of a TechGPT ``.enc`` file and of its plaintext, found while planning."""
    return _published(enc_name), _published(out_name)


def finish_tables(job: FileJob, result: FileResult, warnings: list[str]) -> None:
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
