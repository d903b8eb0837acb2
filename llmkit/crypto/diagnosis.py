"""Why a decryption came out wrong: a wrong key or a damaged ``.enc`` file, and which check tells them apart.

Both give wrong bytes. What settles it: the key check (its md5: without ``--no-key-check`` the key is known to
be the right one, so the file is damaged); for TechGPT-1.0, the published MD5s of the ``.enc`` files (``llmkit
verify DIR --table techgpt-7b.enc``: a match means the file is intact, so the key is wrong). A BELLE header
holds the sha256 of the *decrypted* bytes, so by itself it cannot tell a damaged file from a wrong key; the
hub's sha256 of the ``.enc`` file can (``llmkit download`` checks every file against it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmkit.crypto.keycheck import KEY_DESCRIPTION
from llmkit.errors import CheckFailed

if TYPE_CHECKING:
    from llmkit.crypto.plan import FileJob
    from llmkit.io.core.sniff import ContentError


def file_check(job: FileJob) -> str:
    """The check that says whether this ``.enc`` file is intact."""
    if job.remote is not None:
        return (
            "a remote .enc is judged against its store's digest only once read to its end: download it "
            "(llmkit download for the hub, which verifies every file) and decrypt the local copy"
        )
    if job.in_entries and job.src is not None:
        return (
            f"llmkit verify {job.src.parent} --table {job.in_entries[0][0]} compares the .enc files with the "
            "published MD5s"
        )
    return (
        "llmkit download of its repo into the same folder checks every .enc file against the hub's sha256 and "
        "fetches a damaged one again"
    )


def key_or_damage(job: FileJob, key_checked: bool) -> str:
    """The hint of a decryption whose bytes are wrong: both causes (or the one left), and what tells them apart."""
    if key_checked:
        return (
            f"the key is {KEY_DESCRIPTION} (its md5 was checked), so the .enc file is damaged: download it "
            f"again ({file_check(job)})"
        )
    belle = (
        "; the BELLE header holds the sha256 of the decrypted bytes, so it cannot tell the two apart"
        if job.fmt == "belle"
        else ""
    )
    return (
        f"either the key is not {KEY_DESCRIPTION} (LLaMA-2's file or a converted model is the usual mistake) "
        f"or the .enc file is damaged{belle}: run without --no-key-check to check the key's md5; "
        f"{file_check(job)}"
    )


def content_failed(e: ContentError, job: FileJob, to_stream: bool, key_checked: bool) -> CheckFailed:
    """A content check failure as the user's error: garbage is a wrong key or a damaged file (the key check tells
    which), a short file a bad download."""
    if e.incomplete:
        kept = "discard what reached stdout" if to_stream else "nothing was kept"
        return CheckFailed(
            f"the decrypted {e.kind} file is incomplete: {e.detail}; {kept}",
            path=job.display,
            hint=f"the .enc file is truncated or damaged: download it again ({file_check(job)})",
        )
    return CheckFailed(
        f"the decrypted bytes are not a {e.kind} file ({e.detail}); decryption stopped",
        path=job.display,
        hint=f"{key_or_damage(job, key_checked)}; --no-content-check decrypts files that are not model files",
    )
