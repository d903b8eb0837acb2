"""Remote ``.enc`` inputs of decrypt: ``hf://``, ``s3://`` or a registry model's name (docs/remote.md).

A URL is listed once (:func:`~llmkit.io.remote.store.open_store`: each file's size and the digest its store
publishes); its ``*.enc`` files become the run's :class:`~llmkit.crypto.plan.FileJob` s, its other files are
ignored as a local folder's are (listed, never fetched). Nothing is fetched while planning but, when the name
leaves the format open (BELLE), a file's first 32 bytes, which its reader then reuses. While the job runs each
file streams through a :class:`~llmkit.io.remote.reader.VerifiedReader` (fetched ahead on a thread, hashed as it
arrives) straight into the XOR: no local copy, each byte fetched once, the digest judged before the output's
rename (:func:`open_remote_input`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.crypto.names import HEADER_BYTES, detect_format_of, output_name
from llmkit.crypto.tables import published_entries
from llmkit.errors import InputError

if TYPE_CHECKING:
    from llmkit.crypto.plan import FileJob
    from llmkit.io.remote.reader import VerifiedReader
    from llmkit.io.remote.store import RemoteEntry, Store


@dataclass
class RemoteEnc:
    """One remote ``.enc`` file: its store and listing entry, and the bytes ``[0, len(head))`` fetched while
    planning (the reader starts from them, so they are not fetched again)."""

    store: Store
    entry: RemoteEntry
    head: bytes = b""

    @property
    def size(self) -> int:
        return self.entry.size


def input_url(path: Path) -> tuple[str, str | None] | None:
    """``(url, registry name or None)`` when the input ``path`` is remote: ``hf://``/``s3://``, or a name of
    ``llmkit models`` that is no local path (its hub repo); else None."""
    from llmkit.io.remote.url import registry_url, remote_url

    url = remote_url(path)
    if url is not None:
        return url, None
    text = os.fspath(path)
    if text == "-" or os.path.lexists(path):
        return None
    url = registry_url(text)
    return (url, text) if url is not None else None


def list_remote(url: str, name: str | None) -> tuple[Store, list[RemoteEntry], list[str]]:
    """The store of ``url``, its ``.enc`` entries (by name) and the other files (as URLs, ignored)."""
    from llmkit.io.remote.store import open_store

    try:
        store = open_store(url)
    except InputError as e:
        if name is None:
            raise
        hint = f"{e.hint}; or download it first: llmkit download {name}" if e.hint else f"llmkit download {name}"
        raise InputError(e.message, path=e.path, hint=hint) from None
    entries = store.entries()
    if store.single:
        entry = next(iter(entries.values()))
        if not entry.name.endswith(".enc"):
            raise InputError(
                "not an .enc file",
                path=store.root / entry.name,
                hint="decrypt takes .enc files or their folder; other files are never decrypted",
            )
        if entry.digest is None:  # a plain https:// server without Content-MD5/Digest: nothing to verify against
            raise InputError(
                f"decrypt reads remote files only against a published digest, and {store.no_digest}",
                path=store.root / entry.name,
                hint="download the .enc file and decrypt the local copy",
            )
        return store, [entry], []
    visible = sorted(n for n in entries if not n.startswith("."))
    found = [entries[n] for n in visible if n.endswith(".enc")]
    if not found:
        raise InputError(
            "no .enc files in this folder", path=store.root, hint="pass the folder holding the published *.enc files"
        )
    return store, found, [str(store.root / n) for n in visible if not n.endswith(".enc")]


def remote_jobs(url: str, name: str | None, fmt: str, table_check: bool) -> tuple[list[FileJob], list[str]]:
    """The jobs of the remote input ``url`` (checked as local ``.enc`` files are) and the files it ignores."""
    from llmkit.crypto.plan import FileJob

    store, entries, ignored = list_remote(url, name)
    jobs = []
    for entry in entries:
        path = store.root / entry.name
        remote = RemoteEnc(store, entry)

        def head(remote: RemoteEnc = remote) -> bytes:
            remote.head = store.fetch(remote.entry, 0, min(HEADER_BYTES, remote.size))
            return remote.head

        out_name = output_name(path)
        f, header = detect_format_of(path, entry.size, head, fmt)
        payload = entry.size - HEADER_BYTES if f == "belle" else entry.size
        job = FileJob(path, str(path), out_name, f, payload, header, table_check=table_check, remote=remote)
        if f == "techgpt":
            job.in_entries, job.out_entries = published_entries(path.name, out_name)
        jobs.append(job)
    return jobs, ignored


@contextmanager
def open_remote_input(job: FileJob) -> Iterator[VerifiedReader]:
    """``job``'s remote file as a binary stream from byte 0 (the planning head reused); on a clean exit the
    rest is read and the store's digest judged (:class:`~llmkit.errors.CheckFailed`: nothing is kept)."""
    from llmkit.io.remote.reader import VerifiedReader

    remote = job.remote
    assert remote is not None
    known = {0: remote.head} if remote.head else {}
    reader = VerifiedReader(remote.store, remote.entry, 0, b"", known=known)
    try:
        yield reader
        reader.finish()
    finally:
        reader.close()
