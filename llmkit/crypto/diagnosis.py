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

if TYPE_CHECKING:
    from llmkit.crypto.plan import FileJob


def file_check(job: FileJob) -> str:
    """The check that says whether this ``.enc`` file is intact."""
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
