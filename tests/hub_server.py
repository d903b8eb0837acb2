"""A fake Hugging Face hub on 127.0.0.1: the HTTP protocol huggingface_hub 2.4's client speaks (SPEC.md 7).

Repos live in memory (``{repo_id: {path: bytes}}``), each at one fixed commit. Served endpoints:

- ``GET /api/models/{owner}/{name}`` and ``GET /api/models/{owner}/{name}/revision/{rev}``: model info
  (``id``, ``sha``, ``siblings``, ``gated``, ...), what ``HfApi.model_info`` / ``repo_info`` read;
- ``GET /api/models/{owner}/{name}/tree/{rev}[/{path}]?recursive=true``: the tree listing
  (``{"type": "file", "oid", "size", "path", "lfs": {"oid", "size", "pointerSize"}}``, and
  ``{"type": "directory", "oid", "path"}``), what ``HfApi.list_repo_tree`` reads;
- ``HEAD``/``GET /{owner}/{name}/resolve/{rev}/{path}``: a small file is 200 with ``ETag: "<git blob
  sha1>"``, ``X-Repo-Commit``, ``Content-Length``; an LFS file is a 302 to ``/lfs/...`` on this same server
  with ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size``, ``X-Repo-Commit`` and ``Location``;
- ``HEAD``/``GET /lfs/{owner}/{name}/{sha256}/{path}``: the LFS bytes. The client follows a redirect that
  stays on the same host with its HEAD, so this response carries ``X-Repo-Commit`` and the sha256 ``ETag``
  too (as the hub's own ``/api/resolve-cache`` redirects do).

``FakeHub(cdn=True)`` serves LFS bytes as the real hub does, from another host: a second server on 127.0.0.1
(another port, ``cdn_url``). The resolve 302 then points there, at a signed URL (``?X-Amz-Expires=..&
X-Amz-Signature=..``; a wrong or missing signature is 403), and the hub itself serves no ``/lfs/``. The
client's HEAD stops at a redirect to another host and takes the file's metadata from the 302 itself
(``X-Linked-Etag``, ``X-Linked-Size``, ``X-Repo-Commit``), so the CDN answers as a storage bucket does: its
own ``ETag`` (the MD5 of the bytes), no hub headers. Its requests are logged with ``server="cdn"``.

``FakeHub(prefix="/mirror")`` is a mirror under a path: every endpoint above is served under the prefix
(``endpoint`` is ``url`` + prefix, what ``--endpoint`` / ``HF_ENDPOINT`` name), anything else is 404.

Both byte endpoints honour ``Range: bytes=a-`` / ``bytes=a-b`` (206 + ``Content-Range``).

Errors are typed the hub's way, by ``X-Error-Code`` / ``X-Error-Message`` headers: an unknown repo is 404
``RepoNotFound``; an unknown revision 404 ``RevisionNotFound``; an unknown file 404 ``EntryNotFound``; a gated
repo without the right ``Authorization: Bearer <token>`` is 401 (no token) or 403 (another token)
``GatedRepo``. As on the hub, a gated repo's info and tree are public and only its files are gated, unless
``gate_api`` is set (then every endpoint of the repo is gated).

Knobs for tests (plain attributes of :class:`FakeHub`, safe to change while the server runs):

- ``gated``: repo ids that need ``token``;
- ``corrupt_in_transit[path] = bytes``: GETs of ``path`` send these bytes instead (same length), while every
  header still announces the true size and hash;
- ``drop_after[path] = n``: a GET of ``path`` sends headers announcing the full length, then closes the
  connection once the file's byte offset ``n`` is reached (a resumed request from offset >= n gets the
  headers and no body at all). ``drop_times[path]`` (default 1) is how many responses are cut; after that
  the file is served normally;
- ``throttle[path] = bytes_per_second``: a GET of ``path`` sends its body at about this rate (small pieces with
  pauses), so a test can act while the transfer is under way (a signal mid-download);
- ``faults``: a list of :class:`Fault` (status, how many times, which requests): a matching request is answered
  with that status (5xx with an HTML body and an ``X-Request-Id``, 429 with ``Retry-After`` if given), as a hub
  under load or a proxy in front of it does; once a fault has answered ``times`` requests it is used up;
- ``log``: every request as a :class:`Hit` (method, path, query, status, repo, file, range, auth);
  :meth:`FakeHub.gets` / :meth:`FakeHub.requests_for` filter it.

``hub`` is the pytest fixture: a fresh server per test, always shut down afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

LFS_THRESHOLD = 1024  # files of at least this many bytes are LFS files (as are the ones listed as such)
DEFAULT_TOKEN = "hf_llmkit_test_token_0123456789"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob: sha1(b"blob <len>\\0" + data)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The git-lfs pointer file git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256_hex(data)}\nsize {len(data)}\n".encode()


@dataclass
class RepoFileSpec:
    path: str
    data: bytes
    lfs: bool

    @property
    def size(self) -> int:
        return len(self.data)

    @functools.cached_property
    def sha256(self) -> str:  # computed once: a ranged read of a GB file must not hash it again
        return sha256_hex(self.data)

    @functools.cached_property
    def md5(self) -> str:  # what a storage bucket (the CDN) announces as the ETag of a single-part object
        return hashlib.md5(self.data).hexdigest()

    @functools.cached_property
    def blob_sha1(self) -> str:
        """The git blob id of what git stores: the file itself, or its LFS pointer."""
        return git_blob_sha1(lfs_pointer(self.data) if self.lfs else self.data)

    @functools.cached_property
    def etag(self) -> str:
        """What the hub announces as the file's content hash: sha256 for LFS, git blob sha1 otherwise."""
        return self.sha256 if self.lfs else git_blob_sha1(self.data)


@dataclass
class FakeRepo:
    repo_id: str
    sha: str
    files: dict[str, RepoFileSpec]
    branches: tuple[str, ...] = ("main",)


@dataclass(frozen=True)
class Hit:
    method: str
    path: str  # the URL path, percent-decoded
    query: str
    status: int
    repo: str | None = None
    file: str | None = None  # the repo file a resolve/lfs request is about
    kind: str | None = None  # info | tree | resolve | lfs | other
    range: str | None = None
    auth: str | None = None  # the Authorization header as sent
    server: str = "hub"  # hub | cdn (FakeHub(cdn=True)'s byte server)


@dataclass
class Fault:
    """Answer ``times`` matching requests with ``status`` (``kind``: info | tree | resolve | lfs; ``file``: a repo
    file's path; ``method``: GET | HEAD; None matches any)."""

    status: int
    times: int = 10**9
    kind: str | None = None
    file: str | None = None
    method: str | None = None
    retry_after: int | None = None

    def matches(self, method: str, kind: str, file: str | None) -> bool:
        return (
            self.times > 0
            and (self.kind is None or self.kind == kind)
            and (self.file is None or self.file == file)
            and (self.method is None or self.method == method)
        )


def default_commit(repo_id: str) -> str:
    return hashlib.sha1(f"fake-hub commit of {repo_id}".encode()).hexdigest()


class FakeHub:
    """The server's state and knobs; see the module docstring."""

    def __init__(
        self, *, lfs_threshold: int = LFS_THRESHOLD, token: str = DEFAULT_TOKEN, cdn: bool = False, prefix: str = ""
    ):
        self.repos: dict[str, FakeRepo] = {}
        self.lfs_threshold = lfs_threshold
        self.token = token
        self.gated: set[str] = set()
        self.gate_api = False
        self.not_found_status = 404
        self.corrupt_in_transit: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.drop_times: dict[str, int] = {}
        self.throttle: dict[str, float] = {}
        self.faults: list[Fault] = []
        self.log: list[Hit] = []
        self._lock = threading.Lock()
        self.in_flight = 0  # requests whose handler has not recorded them yet
        self._servers: list[tuple[ThreadingHTTPServer, threading.Thread]] = []
        self.url = ""
        self.cdn = cdn
        self.prefix = prefix.rstrip("/")  # a mirror's path ("/mirror"), or "" (served at the root)
        self.cdn_url = ""  # the CDN's http://127.0.0.1:<port>, once started with cdn=True

    # ------------------------------------------------------------------ repos

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        lfs: set[str] | None = None,
        *,
        sha: str | None = None,
        branches: tuple[str, ...] = ("main",),
    ) -> FakeRepo:
        """Serve ``files`` as ``repo_id`` at commit ``sha`` (default: a fixed sha derived from the id).

        A file is LFS if it is listed in ``lfs`` or is at least ``lfs_threshold`` bytes long.
        """
        lfs = set(lfs or ())
        specs = {p: RepoFileSpec(p, bytes(d), p in lfs or len(d) >= self.lfs_threshold) for p, d in files.items()}
        repo = FakeRepo(repo_id, sha or default_commit(repo_id), specs, tuple(branches))
        with self._lock:
            self.repos[repo_id] = repo
        return repo

    def commit(self, repo_id: str) -> str:
        return self.repos[repo_id].sha

    def file(self, repo_id: str, path: str) -> RepoFileSpec:
        return self.repos[repo_id].files[path]

    # ------------------------------------------------------------------ log

    def record(self, hit: Hit) -> None:
        with self._lock:
            self.log.append(hit)
            self.in_flight -= 1

    def started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def hits(self) -> list[Hit]:
        """Every request so far. A handler records its request after the answer is sent, so a client can
        hold the answer before the server logged it: wait (up to 2 s) until no handler is still running."""
        deadline = time.monotonic() + 2
        while True:
            with self._lock:
                if self.in_flight == 0 or time.monotonic() > deadline:
                    return list(self.log)
            time.sleep(0.001)

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def requests_for(self, path: str, repo: str | None = None, method: str | None = None) -> list[Hit]:
        """Requests of the resolve or lfs URL of repo file ``path`` (optionally one method only)."""
        return [
            h
            for h in self.hits()
            if h.file == path and (repo is None or h.repo == repo) and (method is None or h.method == method)
        ]

    def gets(self, path: str, repo: str | None = None) -> list[Hit]:
        """GETs of the resolve or lfs URL of repo file ``path``: each one is a transfer of its bytes."""
        return self.requests_for(path, repo, "GET")

    def byte_gets(self, server: str | None = None) -> list[Hit]:
        """Every GET of any file's bytes (resolve or lfs), optionally of one server (hub | cdn) only."""
        return [
            h
            for h in self.hits()
            if h.method == "GET" and h.kind in ("resolve", "lfs") and (server is None or h.server == server)
        ]

    def bytes_asked(self, server: str | None = None) -> dict[str, int]:
        """Bytes of each file that answered GETs asked for: its ranges, or the whole file (redirects aside)."""
        out: dict[str, int] = {}
        for h in self.byte_gets(server):
            if h.status >= 300 or h.file is None or h.repo is None:
                continue
            size = self.file(h.repo, h.file).size
            a, _, b = (h.range or "bytes=0-").removeprefix("bytes=").partition("-")
            n = int(b) if a == "" else (int(b) if b else size - 1) - int(a) + 1  # "-N": the last N bytes
            out[h.file] = out.get(h.file, 0) + n
        return out

    # ------------------------------------------------------------------ lifecycle

    @property
    def endpoint(self) -> str:
        """What a client is pointed at: the server's URL and the mirror's path prefix, if any."""
        return self.url + self.prefix

    def cdn_signature(self, sha256: str, path: str) -> str:
        """The signature the CDN's URL of an LFS file carries (keyed by this hub's token, as a signed URL is)."""
        return hashlib.sha256(f"{self.token}|{sha256}|{path}".encode()).hexdigest()[:32]

    def _serve(self, handler: type[BaseHTTPRequestHandler], name: str) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        host, port = server.server_address[:2]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True)
        thread.start()
        self._servers.append((server, thread))
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self.url = self._serve(_make_handler(self, _HubHandler), "fake-hub")
        if self.cdn:
            self.cdn_url = self._serve(_make_handler(self, _CdnHandler), "fake-cdn")
        return self

    def stop(self) -> None:
        for server, thread in self._servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._servers.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _make_handler(hub: FakeHub, base: type[_HubHandler]) -> type[BaseHTTPRequestHandler]:
    class Handler(base):  # type: ignore[valid-type,misc]  # a fresh class per server, bound to its hub
        pass

    Handler.hub = hub
    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.0"  # one request per connection: a drop cuts exactly one response
    server_version = "fake-hub/1.0"
    server_name = "hub"

    def log_message(self, format, *args):
        pass

    # ------------------------------------------------------------------ dispatch

    def do_HEAD(self):
        self._dispatch(head=True)

    def do_GET(self):
        self._dispatch(head=False)

    def do_POST(self):
        self._start()
        try:
            self._send_error(405, None, "Method not allowed")
        finally:
            self._record()

    def _start(self) -> None:
        self.hub.started()
        split = urlsplit(self.path)
        self._raw_path = split.path
        self._query = split.query
        self._repo: str | None = None
        self._file: str | None = None
        self._kind = "other"
        self._hit_status = 0

    def _dispatch(self, *, head: bool) -> None:
        self._start()
        split = urlsplit(self.path)
        try:
            prefix = self.hub.prefix
            if prefix and not split.path.startswith(prefix + "/"):
                self._send_error(404, None, "Not found", head=head)
                return
            split = split._replace(path=split.path[len(prefix) :])
            parts = split.path.split("/")
            if self._fault(parts, head=head):
                return
            if split.path.startswith("/api/models/"):
                self._api(parts[3:], parse_qs(split.query), head=head)
            elif split.path.startswith("/lfs/") and not self.hub.cdn:  # with a CDN, LFS bytes are there only
                self._lfs(parts[2:], head=head)
            elif len(parts) >= 6 and parts[3] == "resolve":
                self._resolve(parts[1:], head=head)
            else:
                self._send_error(404, None, "Not found")
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self._record()

    def _fault(self, parts: list[str], *, head: bool) -> bool:
        """True (and the fault's answer sent) if a fault of ``hub.faults`` matches this request."""
        path = "/".join(parts)
        if path.startswith("/api/models/"):
            kind, file = ("tree" if len(parts) > 5 and parts[5] == "tree" else "info"), None
        elif path.startswith("/lfs/"):
            kind, file = "lfs", unquote("/".join(parts[5:]))
        elif len(parts) >= 6 and parts[3] == "resolve":
            kind, file = "resolve", unquote("/".join(parts[5:]))
        else:
            return False
        with self.hub._lock:
            fault = next((f for f in self.hub.faults if f.matches(self.command, kind, file)), None)
            if fault is None:
                return False
            fault.times -= 1
        self._kind, self._file = kind, file
        owner = {"info": 3, "tree": 3, "resolve": 1, "lfs": 2}[kind]  # where owner/name sit in the URL path
        if len(parts) > owner + 1:
            self._repo = f"{unquote(parts[owner])}/{unquote(parts[owner + 1])}"
        headers = {"Content-Type": "text/html; charset=utf-8", "X-Request-Id": "Root=1-fake-request-id"}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(fault.retry_after)
        body = (
            f"<html><body><h1>{fault.status}</h1><p>See https://status.example.org for details</p></body></html>"
        ).encode()
        self._send(fault.status, headers, body, head=head)
        return True

    def _record(self) -> None:
        self.hub.record(
            Hit(
                self.command,
                unquote(self._raw_path),
                self._query,
                self._hit_status,
                self._repo,
                self._file,
                self._kind,
                self.headers.get("Range"),
                self.headers.get("Authorization"),
                self.server_name,
            )
        )

    # ------------------------------------------------------------------ helpers

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"", *, head: bool = False) -> None:
        self._hit_status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _send_json(self, obj, *, head: bool, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self._send(200, {"Content-Type": "application/json; charset=utf-8", **(extra or {})}, body, head=head)

    def _send_error(
        self, status: int, code: str | None, message: str, *, head: bool = False, repo: FakeRepo | None = None
    ) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if repo is not None and code == "EntryNotFound":
            headers["X-Repo-Commit"] = repo.sha
        self._send(status, headers, json.dumps({"error": message}).encode(), head=head)

    def _find_repo(self, owner: str, name: str, *, head: bool) -> FakeRepo | None:
        repo_id = f"{unquote(owner)}/{unquote(name)}"
        self._repo = repo_id
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._send_error(self.hub.not_found_status, "RepoNotFound", "Repository not found", head=head)
        return repo

    def _gate(self, repo: FakeRepo, *, head: bool) -> bool:
        """True (and the error sent) if ``repo`` is gated and the request lacks the right token."""
        if repo.repo_id not in self.hub.gated:
            return False
        auth = self.headers.get("Authorization") or ""
        if auth == f"Bearer {self.hub.token}":
            return False
        if not auth:
            self._send_error(
                401,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted. You must have access "
                "to it and be authenticated to access it. Please log in.",
                head=head,
            )
        else:
            self._send_error(
                403,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted and you are not in the "
                "authorized list. Visit "
                f"{self.hub.url}/{repo.repo_id} to ask for access.",
                head=head,
            )
        return True

    def _revision_ok(self, repo: FakeRepo, rev: str, *, head: bool) -> bool:
        if rev == repo.sha or rev in repo.branches:
            return True
        self._send_error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head=head)
        return False

    # ------------------------------------------------------------------ /api/models

    def _api(self, parts: list[str], query: dict[str, list[str]], *, head: bool) -> None:
        # parts: [owner, name] | [owner, name, "revision", rev] | [owner, name, "tree", rev, *path]
        if len(parts) < 2:
            self._send_error(404, None, "Not found", head=head)
            return
        repo = self._find_repo(parts[0], parts[1], head=head)
        if repo is None:
            return
        if self.hub.gate_api and self._gate(repo, head=head):
            return
        rest = parts[2:]
        if not rest or rest == [""] or (rest[0] == "revision" and len(rest) == 2):
            self._kind = "info"
            rev = unquote(rest[1]) if len(rest) == 2 else "main"
            if self._revision_ok(repo, rev, head=head):
                self._send_json(self._info(repo), head=head)
            return
        if rest[0] == "tree" and len(rest) >= 2:
            self._kind = "tree"
            rev = unquote(rest[1])
            if not self._revision_ok(repo, rev, head=head):
                return
            sub = unquote("/".join(rest[2:])).strip("/")
            recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true", "yes")
            self._send_json(self._tree(repo, sub, recursive), head=head)
            return
        self._send_error(404, None, "Not found", head=head)

    def _info(self, repo: FakeRepo) -> dict:
        return {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": repo.sha,
            "private": False,
            "gated": "manual" if repo.repo_id in self.hub.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2023-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": f.path} for f in repo.files.values()],
        }

    def _tree(self, repo: FakeRepo, sub: str, recursive: bool) -> list[dict]:
        prefix = sub + "/" if sub else ""

        def listed(p: str) -> bool:
            rel = p[len(prefix) :] if p.startswith(prefix) else ""
            return bool(rel) and (recursive or "/" not in rel)

        dirs: dict[str, None] = {}
        for f in repo.files.values():
            comps = f.path.split("/")
            for i in range(1, len(comps)):  # the folders a path implies (ordinary components only)
                if all(c not in ("", ".", "..") for c in comps[:i]):
                    dirs.setdefault("/".join(comps[:i]))
        entries: list[dict] = [
            {"type": "directory", "oid": git_blob_sha1(d.encode()), "size": 0, "path": d} for d in dirs if listed(d)
        ]
        for f in repo.files.values():
            if not listed(f.path):
                continue
            e = {"type": "file", "oid": f.blob_sha1, "size": f.size, "path": f.path}
            if f.lfs:
                e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(lfs_pointer(f.data))}
            entries.append(e)
        return entries

    # ------------------------------------------------------------------ /{repo}/resolve/{rev}/{path}

    def _resolve(self, parts: list[str], *, head: bool) -> None:
        # parts: [owner, name, "resolve", rev, *path]
        self._kind = "resolve"
        repo = self._find_repo(parts[0], parts[1], head=head)
        if repo is None:
            return
        path = unquote("/".join(parts[4:]))
        self._file = path
        if self._gate(repo, head=head):
            return
        if not self._revision_ok(repo, unquote(parts[3]), head=head):
            return
        f = repo.files.get(path)
        if f is None:
            self._send_error(
                404, "EntryNotFound", f'{path} does not exist on "{unquote(parts[3])}"', head=head, repo=repo
            )
            return
        if f.lfs:
            location = f"{self.hub.endpoint}/lfs/{quote(repo.repo_id)}/{f.sha256}/{quote(f.path)}"
            if self.hub.cdn:
                signature = self.hub.cdn_signature(f.sha256, f.path)
                location = (
                    f"{self.hub.cdn_url}/lfs/{quote(repo.repo_id)}/{f.sha256}/{quote(f.path)}"
                    f"?X-Amz-Expires=3600&X-Amz-Signature={signature}"
                )
            self._send(
                302,
                {
                    "Location": location,
                    "X-Repo-Commit": repo.sha,
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                    "ETag": f'"{f.blob_sha1}"',
                    "Content-Type": "text/plain; charset=utf-8",
                },
                f"Found. Redirecting to {location}".encode(),
                head=head,
            )
            return
        self._serve_bytes(repo, f, head=head, headers={"ETag": f'"{f.etag}"'})

    # ------------------------------------------------------------------ /lfs/{owner}/{name}/{sha256}/{path}

    def _lfs(self, parts: list[str], *, head: bool) -> None:
        self._kind = "lfs"
        if len(parts) < 4:
            self._send_error(404, None, "Not found", head=head)
            return
        repo = self._find_repo(parts[0], parts[1], head=head)
        if repo is None:
            return
        path = unquote("/".join(parts[3:]))
        self._file = path
        f = repo.files.get(path)
        if f is None or not f.lfs or f.sha256 != parts[2]:
            self._send_error(404, None, "Not found", head=head)
            return
        self._serve_bytes(
            repo,
            f,
            head=head,
            headers={"ETag": f'"{f.sha256}"', "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)},
        )

    # ------------------------------------------------------------------ bytes (Range, corruption, drops)

    def _serve_bytes(
        self, repo: FakeRepo, f: RepoFileSpec, *, head: bool, headers: dict[str, str], hub_headers: bool = True
    ) -> None:
        data = f.data
        if not head and f.path in self.hub.corrupt_in_transit:
            bad = self.hub.corrupt_in_transit[f.path]
            assert len(bad) == len(data), "corrupt_in_transit must keep the length"
            data = bad
        size = len(data)
        start, end = 0, size - 1
        status = 200
        extra = {
            **({"X-Repo-Commit": repo.sha} if hub_headers else {}),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            **headers,
        }
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and "," not in rng:
            a, _, b = rng[len("bytes=") :].partition("-")
            try:
                if a == "":  # suffix range: the last b bytes
                    start, end = max(size - int(b), 0), size - 1
                else:
                    start, end = int(a), (int(b) if b else size - 1)
            except ValueError:
                start, end = 0, size - 1
            else:
                end = min(end, size - 1)
                if start >= size or start > end:
                    if size == 0 and start == 0:
                        pass
                    else:
                        self._send(416, {"Content-Range": f"bytes */{size}", **extra}, b"", head=head)
                        return
                status = 206
                extra["Content-Range"] = f"bytes {start}-{end}/{size}"
        body = data[start : end + 1]
        extra["Content-Length"] = str(len(body))

        cut: int | None = None
        if not head:
            with self.hub._lock:
                if f.path in self.hub.drop_after and self.hub.drop_times.get(f.path, 1) > 0:
                    remaining = self.hub.drop_times.get(f.path, 1) - 1
                    self.hub.drop_times[f.path] = remaining
                    cut = max(self.hub.drop_after[f.path] - start, 0)
                    if remaining <= 0:
                        del self.hub.drop_after[f.path]
                        self.hub.drop_times.pop(f.path, None)
        rate = None if head else self.hub.throttle.get(f.path)
        if rate and (cut is None or cut >= len(body)):
            self._send_slowly(status, extra, body, rate)
            return
        if cut is None or cut >= len(body):
            self._send(status, extra, body, head=head)
            return
        # announce the full length, send `cut` bytes, then close the connection
        self._hit_status = status
        self.send_response(status)
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body[:cut])
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send_slowly(self, status: int, headers: dict[str, str], body: bytes, rate: float) -> None:
        """The whole ``body`` at about ``rate`` bytes per second, in pieces of a twentieth of a second."""
        self._hit_status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()
        piece = max(1, int(rate / 20))
        for i in range(0, len(body), piece):
            self.wfile.write(body[i : i + piece])
            self.wfile.flush()
            time.sleep(piece / rate)


class _CdnHandler(_HubHandler):
    """The CDN of ``FakeHub(cdn=True)``: ``/lfs/...`` at the signed URL the hub's 302 names, nothing else."""

    server_version = "fake-cdn/1.0"
    server_name = "cdn"

    def _dispatch(self, *, head: bool) -> None:
        self._start()
        self._kind = "lfs"
        try:
            parts = self._raw_path.split("/")
            if self._fault(parts, head=head):
                return
            if not self._raw_path.startswith("/lfs/") or len(parts) < 6:
                self._send(
                    404, {"Content-Type": "application/xml"}, b"<Error><Code>NoSuchKey</Code></Error>", head=head
                )
                return
            self._repo = f"{unquote(parts[2])}/{unquote(parts[3])}"
            self._file = unquote("/".join(parts[5:]))
            signature = (parse_qs(self._query).get("X-Amz-Signature") or [""])[0]
            if signature != self.hub.cdn_signature(parts[4], self._file):
                body = (
                    b"<Error><Code>AccessDenied</Code><Message>Request has expired or is not signed</Message></Error>"
                )
                self._send(403, {"Content-Type": "application/xml"}, body, head=head)
                return
            repo = self.hub.repos.get(self._repo)
            f = repo.files.get(self._file) if repo is not None else None
            if repo is None or f is None or not f.lfs or f.sha256 != parts[4]:
                self._send(
                    404, {"Content-Type": "application/xml"}, b"<Error><Code>NoSuchKey</Code></Error>", head=head
                )
                return
            self._serve_bytes(repo, f, head=head, headers={"ETag": f'"{f.md5}"'}, hub_headers=False)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self._record()


@pytest.fixture
def hub_cdn() -> Iterator[FakeHub]:
    """A fake hub whose LFS bytes come from a CDN on another 127.0.0.1 port (``FakeHub(cdn=True)``)."""
    server = FakeHub(cdn=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    """A fake hub on 127.0.0.1 (random port) for one test; always shut down afterwards."""
    server = FakeHub().start()
    try:
        yield server
    finally:
        server.stop()
