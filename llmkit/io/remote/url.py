"""Which inputs are URLs: ``hf://``, ``s3://``, ``https://`` and ``http://`` (also as a
:class:`~pathlib.Path` has folded them, ``hf:/x``), or a registry model's name that is no local path;
:func:`open_url` opens them; :class:`RemotePath` is the ``path`` a remote source shows in messages
(``hf://owner/name/file``)."""

from __future__ import annotations

import os
from pathlib import PosixPath
from typing import TYPE_CHECKING

from llmkit.errors import InputError
from llmkit.io.remote.schemes import unfolded

if TYPE_CHECKING:
    from llmkit.io.remote.source import RemoteSource


class RemotePath(PosixPath):
    """A remote location as a path: stored as ``scheme:/rest`` (so ``/`` and ``.name`` work), shown as
    ``scheme://rest``. Nothing on the local disk has this name, so every local check of it finds nothing."""

    def __str__(self) -> str:
        parts = self.parts
        return f"{parts[0]}//{'/'.join(parts[1:])}" if len(parts) > 1 else f"{parts[0]}//"

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    @property
    def url(self) -> str:
        return str(self)

    @property
    def scheme(self) -> str:
        return self.parts[0][:-1]


def remote_url(path: str | os.PathLike) -> str | None:
    """``path`` as a ``scheme://rest`` URL when it names a remote location (``hf://...``, ``s3://...``,
    ``https://...``, or the ``hf:/...`` a ``Path`` makes of them), else None."""
    if isinstance(path, RemotePath):
        return path.url
    return unfolded(os.fspath(path))


def shown(path: str | os.PathLike) -> str:
    """``path`` as messages and results show it: a URL as ``scheme://rest`` (a ``Path`` folds it), else as is."""
    return remote_url(path) or os.fspath(path)


def as_path(path: str | os.PathLike) -> PosixPath:
    """``path`` as a ``Path``, a URL as a :class:`RemotePath` (``Path()`` of one loses the ``//``)."""
    url = remote_url(path)
    return as_remote_path(url) if url is not None else PosixPath(path)


def as_remote_path(url: str) -> RemotePath:
    scheme, rest = url.split("://", 1)
    return RemotePath(f"{scheme}:", *[p for p in rest.split("/") if p])


def registry_url(name: str) -> str | None:
    """``hf://<repo>`` of a registry model named ``name`` that is on the hub (``zhixi-13b-diff``), else None."""
    if not name or "/" in name or os.sep in name:
        return None
    from llmkit.registry import MODELS

    model = next((m for m in MODELS if m.name == name and m.repo_id), None)
    return f"hf://{model.repo_id}" if model is not None else None


def open_url(path: str | os.PathLike) -> RemoteSource | None:
    """The remote source ``path`` names: a URL, or a registry model's name that is no local path (its repo
    on the hub; a failure then also hints ``llmkit download <name>``). None for any other path."""
    url = remote_url(path)
    name = None
    if url is None and not os.path.lexists(path):  # a registry model's name: its repo on the hub
        url = registry_url(os.fspath(path))
        name = os.fspath(path) if url is not None else None
    if url is None:
        return None
    from llmkit.io.remote.source import open_remote

    try:
        return open_remote(url)
    except InputError as e:
        if name is None:
            raise
        hint = f"{e.hint}; or download it first: llmkit download {name}" if e.hint else f"llmkit download {name}"
        raise InputError(e.message, path=e.path, hint=hint) from None
