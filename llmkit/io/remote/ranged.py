"""Remote weight files read tensor by tensor with ranged requests, for ``--ray``: each task fetches only the
bytes of the tensors it writes, in any order, and nothing is read front to back.

Under ``--ray`` (:func:`ranged`: on the driver and in every task), :func:`llmkit.io.remote.source.open_remote`
gives each file's front-to-back reader a :class:`RangedSpans` over the same spans (a safetensors file's
tensors, a torch zip's storages), which it reads through instead. A range read judges no digest (a digest
covers the whole file): the driver has every file read whole and checked against the digest it listed,
once, by :func:`verify_file` (a Ray task per file, beside the pieces); a one-process run over ranged files
(a recipe's step Ray does not split) does the same in ``read_to_end`` before its output is made final. A
task's listing must equal the driver's (:func:`listed_as`, :func:`check_listed`): an input that changed
while the job ran fails it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from llmkit.errors import InputError
from llmkit.io.core.source import TensorFile
from llmkit.io.core.spec import TensorInfo
from llmkit.io.remote.reader import CHUNK, VerifiedReader
from llmkit.io.remote.store import RemoteEntry, Store, hub_endpoint, open_store

Listing = dict[str, dict[str, tuple[int, tuple[str, str] | None]]]  # URL -> file -> (size, digest)
_LISTED: ContextVar[Listing | None] = ContextVar("llmkit_remote_listed", default=None)


def ranged() -> bool:
    """Whether remote sources opened now read by range: under ``--ray``, on the driver and in every task."""
    from llmkit import cluster

    return cluster.current_address() is not None or cluster.current_piece() is not None


@contextmanager
def listed_as(listing: Listing | None) -> Iterator[None]:
    """Within the block (a Ray task), a remote input opened must list its weight files as the driver did
    (``listing``: same sizes and digests), else the job fails: the input changed while the job ran."""
    token = _LISTED.set(listing)
    try:
        yield
    finally:
        _LISTED.reset(token)


def check_listed(url: str, entries: dict[str, RemoteEntry], names: list[str]) -> None:
    """Refuse weight files ``names`` of ``url`` listed otherwise than the driver listed them."""
    expected = (_LISTED.get() or {}).get(url)
    if expected is None:
        return
    for n in names:
        e = entries[n]
        if expected.get(n) != (e.size, e.digest):
            raise InputError(
                f"{url.rstrip('/')}/{n} changed while the job ran (the driver listed {expected.get(n)}, a task "
                f"{(e.size, e.digest)}); nothing is kept",
                hint="run again once the remote input stays unchanged, or pin it (hf://OWNER/NAME@COMMIT)",
            )


def ranged_entries(sources: list[object]) -> Iterator[tuple[Store, RemoteEntry]]:
    """(store, entry) of every file of ``sources`` (remote sources) read by range."""
    for src in sources:
        store = getattr(src, "store", None)
        for f in getattr(src, "remote_files", []):
            spans = getattr(getattr(f, "raw", f), "ranges", None)  # a torch zip reads through its storages'
            if store is not None and spans is not None:
                yield store, spans.entry


def listing(sources: list[object]) -> Listing:
    """URL (as given: a task lists it again) -> weight file -> (size, digest) of every ranged remote file."""
    out: Listing = {}
    for store, entry in ranged_entries(sources):
        out.setdefault(store.url, {})[entry.name] = (entry.size, entry.digest)
    return out


class RangedSpans(TensorFile):
    """Tensors (or a torch zip's storages) of one remote file, each fetched on its own by ranged requests of
    at most ``CHUNK`` bytes into its tensor's memory; ``index`` is None (any order)."""

    def __init__(
        self, store: Store, entry: RemoteEntry, infos: dict[str, TensorInfo], spans: dict[str, tuple[int, int]]
    ):
        self.store, self.entry, self.infos, self._spans = store, entry, infos, spans
        self.path = store.root / entry.name
        self.unverified: str | None = None

    def index(self, name: str) -> int | None:
        return None

    def integrity_warning(self, values_read: bool = True) -> str | None:
        return self.unverified

    def get(self, name: str) -> torch.Tensor:
        begin, end = self._spans[name]
        info = self.infos[name]
        tensor = torch.empty(info.shape, dtype=info.dtype)
        view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy().data)
        for at in range(begin, end, CHUNK):
            stop = min(end, at + CHUNK)
            view[at - begin : stop - begin] = self.store.fetch(self.entry, at, stop)
        return tensor

    def read_to_end(self) -> None:
        """A one-process run over ranged reads: the file read whole and judged against its digest."""
        verify_entry(self.store, self.entry)


def verify_entry(store: Store, entry: RemoteEntry) -> None:
    """Read ``entry`` whole (fetched ahead, hashed in order) and judge it against the digest ``entry``
    carries: :class:`~llmkit.errors.CheckFailed` on a mismatch. Memory: a few ``CHUNK``s."""
    reader = VerifiedReader(store, entry, 0, b"")
    try:
        reader.finish()
    finally:
        reader.close()


@dataclass(frozen=True)
class VerifyFile:
    """One remote input file to read whole and check (a Ray task): where (the pinned URL and the hub
    endpoint) and the entry the driver listed, whose size and digest the bytes must match."""

    url: str
    endpoint: str | None
    entry: RemoteEntry

    @property
    def file(self) -> str:
        return f"the check of {self.url.rstrip('/')}/{self.entry.name}"


def verify_file(task: VerifyFile) -> str:
    """The Ray task: list ``task.url`` again, read the file whole and judge it against the driver's digest;
    the file's name when it matches."""
    with hub_endpoint(task.endpoint):
        store = open_store(task.url)
        verify_entry(store, task.entry)
    return task.entry.name


def verifications(sources: list[object], endpoint: str | None) -> list[VerifyFile]:
    """One :class:`VerifyFile` per ranged remote weight file of ``sources`` that publishes a digest."""
    return [VerifyFile(store.pinned_url, endpoint, e) for store, e in ranged_entries(sources) if e.digest is not None]
