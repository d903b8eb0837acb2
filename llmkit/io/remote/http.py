"""``https://`` and ``http://`` inputs (:class:`HttpStore`): one weight file, or a model folder that a plain
HTTP server cannot list, read by name; on fsspec's ``HTTPFileSystem`` (its aiohttp session and loop).

A folder URL is read by the names a model folder has (:data:`INDEXES`, then the shards the index names; else
the first of :data:`FOLDER_WEIGHTS`), plus the side files llmkit carries (:data:`SIDE_FILES`), each if the
server has it (404: absent). Sizes come from ``HEAD`` (``Content-Length``); the digest from its
``Repr-Digest``/``Digest`` (sha-256, else md5) or ``Content-MD5``; a file without one is read unverified
(:meth:`Store.unverified_line`). Bytes are fetched by ranged GETs: a ``200`` to one (the server ignores
``Range``) is refused, a ``Content-Range`` total other than the listed size is an error (the file changed).
Redirects are followed on every request; no credentials are sent; ``HTTP(S)_PROXY``/``NO_PROXY`` apply.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from llmkit.errors import InputError
from llmkit.io.core.files import AUX_FILES
from llmkit.io.hf.names import ADAPTER_CONFIG, BIN_INDEX, SAFETENSORS_INDEX
from llmkit.io.remote.store import RemoteEntry, Store
from llmkit.io.remote.url import as_remote_path

INDEXES = (SAFETENSORS_INDEX, BIN_INDEX)
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
SIDE_FILES = (*AUX_FILES, ADAPTER_CONFIG)
_INDEX_MAX = 64 * 2**20  # bytes: a larger "index" is no shard index
_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class Answer:
    """One HTTP answer: ``status``, ``headers`` (case-insensitive), ``body`` (empty for HEAD or a refused range)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def _b64_hex(value: str, length: int) -> str | None:
    try:
        raw = base64.b64decode(value.strip().strip(":"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == length else None


def published_digest(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """The digest a ``HEAD`` answer publishes: ``Repr-Digest``/``Digest`` sha-256 first, then md5 (also
    ``Content-MD5``), as (algorithm, hex); None when there is none (or none that parses)."""
    found: dict[str, str] = {}
    for field in ("Repr-Digest", "Digest"):
        for part in headers.get(field, "").split(","):
            alg, _, value = part.strip().partition("=")
            alg = alg.strip().lower()
            size = {"sha-256": 32, "md5": 16}.get(alg)
            if size and (hex_value := _b64_hex(value, size)):
                found.setdefault(alg, hex_value)
    if (md5 := headers.get("Content-MD5")) and (hex_value := _b64_hex(md5, 16)):
        found.setdefault("md5", hex_value)
    if "sha-256" in found:
        return ("sha256", found["sha-256"])
    return ("md5", found["md5"]) if "md5" in found else None


def _proxy(url: str) -> str | None:
    """The proxy ``HTTP(S)_PROXY`` names for ``url``, unless ``NO_PROXY`` exempts its host."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if parts.hostname is None or urllib.request.proxy_bypass(parts.hostname):
        return None
    return proxies.get(parts.scheme)


class HttpStore(Store):
    """A weight file (the URL's name ends in a weight suffix) or a model folder on a plain HTTP server."""

    no_digest = "the server publishes no digest"

    def __init__(self, url: str):
        import aiohttp
        from fsspec.implementations.http import HTTPFileSystem  # type: ignore[import-untyped]  # no type hints

        self.url = url
        self.root = as_remote_path(url)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        self.fs = HTTPFileSystem(skip_instance_cache=True, client_kwargs={"timeout": timeout})
        self._listed: dict[str, bytes] = {}  # files fetched whole while listing (a shard index): not again
        self._entries = self.guarded(self._list)

    # ---- requests ----
    def request(self, method: str, url: str, headers: dict[str, str] | None = None) -> Answer:
        """One request (redirects followed), its body read unless it is an answer to refuse."""
        from fsspec.asyn import sync  # type: ignore[import-untyped]  # fsspec ships no type hints

        return sync(self.fs.loop, self._request, method, url, headers or {})

    async def _request(self, method: str, url: str, headers: dict[str, str]) -> Answer:
        from multidict import CIMultiDict

        session = await self.fs.set_session()
        sent = {"Accept-Encoding": "identity", **headers}
        async with session.request(
            method, self.fs.encode_url(url), headers=sent, allow_redirects=True, proxy=_proxy(url)
        ) as r:
            wanted = method == "GET" and (r.status == 206 or (r.status == 200 and "Range" not in headers))
            return Answer(r.status, CIMultiDict(r.headers), await r.read() if wanted else b"")

    def _raise_for(self, a: Answer, url: str) -> None:
        """An error answer as the exception :meth:`Store.fetch` sorts: final (404, 401/403, other 4xx) or retried."""
        if a.status in (404, 410):
            raise FileNotFoundError(url)
        if a.status in (401, 403):
            raise PermissionError(url)
        if 400 <= a.status < 500 and a.status not in (408, 429):
            raise InputError(f"the server answers HTTP {a.status}", path=url, hint="check the URL")
        if a.status >= 300:
            raise OSError(f"HTTP {a.status} from {url}")

    def describe(self, e: BaseException, what: str) -> InputError:
        if isinstance(e, FileNotFoundError):
            return InputError("not found on the server (HTTP 404)", path=what, hint="check the URL")
        if isinstance(e, PermissionError):
            return InputError(
                "the server refuses access (HTTP 401/403)",
                path=what,
                hint="llmkit sends no credentials to https:// URLs; download the files and pass the folder",
            )
        return super().describe(e, what)

    # ---- listing ----
    def _probe(self, name: str, absent: tuple[int, ...] = (404, 410)) -> RemoteEntry | None:
        """``name`` under the URL, from a ``HEAD``: None when the server has no such file (an ``absent`` status)."""
        key = self.url if self.single else f"{self.url}/{name}"
        a = self.request("HEAD", key)
        if a.status in absent and not self.single:
            return None
        self._raise_for(a, key)
        length = a.headers.get("Content-Length")
        if length is None or not length.isdigit() or a.headers.get("Content-Encoding", "identity") != "identity":
            raise InputError(
                "the server gives no length for it (no Content-Length in its HEAD answer)",
                path=key,
                hint="llmkit reads remote files by byte ranges; download it and pass the local file",
            )
        return RemoteEntry(name, key, int(length), published_digest(a.headers))

    def _shards(self, entry: RemoteEntry) -> list[str]:
        """The files a shard index names (the index fetched whole, kept for the side-file read)."""
        if entry.size > _INDEX_MAX:
            raise InputError("too large for a shard index", path=self.root / entry.name)
        data = self._listed[entry.name] = self.fetch(entry, 0, entry.size)
        try:
            weight_map = json.loads(data)["weight_map"]
            return list(dict.fromkeys(str(v) for v in weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InputError(
                "not a shard index (no weight_map)", path=self.root / entry.name, hint="check the URL"
            ) from None

    def _list(self) -> dict[str, RemoteEntry]:
        from llmkit.io.remote.source import WEIGHT_SUFFIXES

        name = self.url.rsplit("/", 1)[-1]
        self.single = name.endswith(WEIGHT_SUFFIXES) and "/" in self.url.split("://", 1)[1]
        if self.single:
            self.root = self.root.parent
            entry = self._probe(name)
            assert entry is not None
            return {name: entry}
        out: dict[str, RemoteEntry] = {}
        for index in INDEXES:
            if (e := self._probe(index)) is not None:
                out[index] = e
                out.update({n: s for n in self._shards(e) if (s := self._probe(n)) is not None})
                break
        else:
            weights = next((e for n in FOLDER_WEIGHTS if (e := self._probe(n)) is not None), None)
            if weights is None:
                raise InputError(
                    f"no model here: the server has none of {', '.join(INDEXES + FOLDER_WEIGHTS)} (HTTP 404)",
                    path=self.url,
                    hint="a folder URL is read by these names; name the weight file in the URL",
                )
            out[weights.name] = weights
        # a side file may also be refused when absent (a bucket's web endpoint says 403 for a missing key)
        out.update({n: e for n in SIDE_FILES if (e := self._probe(n, (401, 403, 404, 410))) is not None})
        return out

    def entries(self) -> dict[str, RemoteEntry]:
        return self._entries

    # ---- bytes ----
    def _fetch_once(self, entry: RemoteEntry, start: int, end: int) -> bytes:
        listed = self._listed.get(entry.name)
        if listed is not None:
            return listed[start:end]
        a = self.request("GET", entry.key, {"Range": f"bytes={start}-{end - 1}"})
        if a.status == 200:
            raise InputError(
                f"the server at {self.url} ignores Range requests",
                hint="llmkit reads remote files by byte ranges; download the files and pass the local copy",
            )
        self._raise_for(a, entry.key)
        if a.status != 206:
            raise OSError(f"HTTP {a.status} to a ranged GET")
        return self._check_range(entry, start, a)

    def _check_range(self, entry: RemoteEntry, start: int, a: Answer) -> bytes:
        m = _RANGE.fullmatch(a.headers.get("Content-Range", "").strip())
        if m is None or int(m.group(1)) != start:
            raise OSError(f"a 206 answer without the range asked for (Content-Range: {a.headers.get('Content-Range')})")
        if m.group(3) != "*" and int(m.group(3)) != entry.size:
            raise InputError(
                f"changed while read: the server now gives {m.group(3)} bytes, {entry.size} when listed",
                path=self.root / entry.name,
                hint="run again once the file stays the same",
            )
        return a.body
