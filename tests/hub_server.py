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

The write API, as ``HfApi.create_repo``/``create_branch``/``preupload_lfs_files``/``create_commit`` use it
with ``HF_HUB_DISABLE_XET=1`` (every call needs ``Authorization: Bearer <token>``: 401 without, 403 with
another): ``POST /api/repos/create`` (a new repo holds ``.gitattributes``; 409 if it exists);
``POST /api/models/{repo}/branch/{branch}`` (``startingPoint``); ``POST /api/models/{repo}/preupload/{rev}``
(``lfs`` for files of at least ``lfs_threshold`` bytes, and the ``oid`` of a file already there);
``POST /{repo}.git/info/lfs/objects/batch`` (basic transfer: an upload href on this server and a verify action,
none for an object already stored); ``PUT /lfs-upload/{repo}/{sha256}`` (the bytes, refused with 400 unless
they hash to the sha256); ``POST /lfs-verify/{repo}``; ``POST /api/models/{repo}/commit/{rev}`` (ndjson:
header with ``parentCommit``, ``file`` inline base64, ``lfsFile`` of an uploaded object, ``deletedFile``;
412 when ``parentCommit`` is not the branch head). Commits move the branch: every read endpoint serves the
branch or commit it is asked for (``FakeRepo.commits``/``heads``), and ``FakeHub.commits`` records each.

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
- ``on_lfs_upload(repo, sha256)``: called once an uploaded LFS object is stored, before the answer (a test
  commits meanwhile, or kills the uploading process); ``make_commit``: a commit as another writer makes it;
- ``log``: every request as a :class:`Hit` (method, path, query, status, repo, file, range, auth);
  :meth:`FakeHub.gets` / :meth:`FakeHub.requests_for` filter it.

``hub`` is the pytest fixture: a fresh server per test, always shut down afterwards.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
    """A repo: ``sha``/``files`` are the head of ``main``; ``commits`` every commit's files, ``heads`` each
    branch's commit (the write API moves them)."""

    repo_id: str
    sha: str
    files: dict[str, RepoFileSpec]
    branches: tuple[str, ...] = ("main",)
    commits: dict[str, dict[str, RepoFileSpec]] = field(default_factory=dict)
    heads: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.commits.setdefault(self.sha, self.files)
        for b in self.branches:
            self.heads.setdefault(b, self.sha)

    def snapshot(self, rev: str) -> tuple[str, dict[str, RepoFileSpec]] | None:
        """(commit, files) of a branch or commit, or None."""
        sha = self.heads.get(rev, rev)
        files = self.commits.get(sha)
        return None if files is None else (sha, files)


@dataclass(frozen=True)
class CommitRecord:
    """One commit made through the write API (or :meth:`FakeHub.make_commit`)."""

    repo: str
    branch: str
    sha: str
    parent: str
    summary: str
    added: tuple[str, ...]
    deleted: tuple[str, ...]


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
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> bytes, as PUT by LFS uploads
        self.commits: list[CommitRecord] = []  # commits made through the write API or make_commit
        self.on_lfs_upload: Callable[[str, str], None] | None = None  # (repo, sha256) after an upload is stored
        self.verify_lfs = True  # the LFS batch answer offers a verify action
        self._lock = threading.RLock()
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

    def commit(self, repo_id: str, branch: str = "main") -> str:
        return self.repos[repo_id].heads[branch]

    def files_at(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        """Every file of ``repo_id`` at a branch or commit: path -> bytes."""
        snap = self.repos[repo_id].snapshot(rev)
        assert snap is not None, rev
        return {p: f.data for p, f in snap[1].items()}

    def make_commit(
        self,
        repo_id: str,
        add: dict[str, bytes] | None = None,
        delete: tuple[str, ...] = (),
        *,
        branch: str = "main",
        summary: str = "a commit",
        parent: str | None = None,
        lfs: set[str] | None = None,
    ) -> str:
        """Commit ``add`` and ``delete`` on ``branch``; ValueError("parent") if its head is not ``parent``,
        KeyError(path) for a deleted file that does not exist. Returns the new commit."""
        with self._lock:
            repo = self.repos[repo_id]
            head = repo.heads[branch]
            if parent is not None and not head.startswith(parent):
                raise ValueError("parent")
            files = dict(repo.commits[head])
            for path in delete:
                if path not in files:
                    raise KeyError(path)
                del files[path]
            lfs = set(lfs or ())
            for path, data in (add or {}).items():
                files[path] = RepoFileSpec(path, bytes(data), path in lfs or len(data) >= self.lfs_threshold)
            sha = hashlib.sha1(f"{head} {sorted((p, f.etag) for p, f in files.items())} {summary}".encode()).hexdigest()
            repo.commits[sha] = files
            repo.heads[branch] = sha
            if branch == "main":
                repo.sha, repo.files = sha, files
            self.commits.append(CommitRecord(repo_id, branch, sha, head, summary, tuple(add or ()), tuple(delete)))
            return sha

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
        self._writing(self._post)

    def do_PUT(self):
        self._writing(self._put)

    def _writing(self, handle) -> None:
        self._start()
        try:
            handle(self._raw_path.split("/"), self._body())
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self._record()

    def _body(self) -> bytes:
        """The request body: ``Content-Length`` bytes, or a chunked body."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _start(self) -> None:
        self.hub.started()
        split = urlsplit(self.path)
        self._raw_path = split.path
        self._query = split.query
        self._repo: str | None = None
        self._file: str | None = None
        self._kind = "other"
        self._hit_status = 0
        self._commit: str | None = None
        self._files: dict[str, RepoFileSpec] = {}

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
            headers["X-Repo-Commit"] = self._commit or repo.sha
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
        """True (and the snapshot kept in ``_commit``/``_files``) if ``rev`` names a branch or commit."""
        with self.hub._lock:
            snap = repo.snapshot(rev)
        if snap is not None:
            self._commit, self._files = snap
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
                self._send_json(self._info(repo, self._commit, self._files), head=head)
            return
        if rest[0] == "tree" and len(rest) >= 2:
            self._kind = "tree"
            rev = unquote(rest[1])
            if not self._revision_ok(repo, rev, head=head):
                return
            sub = unquote("/".join(rest[2:])).strip("/")
            recursive = (query.get("recursive") or ["false"])[0].lower() in ("1", "true", "yes")
            self._send_json(self._tree(self._files, sub, recursive), head=head)
            return
        self._send_error(404, None, "Not found", head=head)

    def _info(self, repo: FakeRepo, sha: str, files: dict[str, RepoFileSpec]) -> dict:
        return {
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": sha,
            "private": False,
            "gated": "manual" if repo.repo_id in self.hub.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2023-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": f.path} for f in files.values()],
        }

    def _tree(self, files: dict[str, RepoFileSpec], sub: str, recursive: bool) -> list[dict]:
        prefix = sub + "/" if sub else ""

        def listed(p: str) -> bool:
            rel = p[len(prefix) :] if p.startswith(prefix) else ""
            return bool(rel) and (recursive or "/" not in rel)

        dirs: dict[str, None] = {}
        for f in files.values():
            comps = f.path.split("/")
            for i in range(1, len(comps)):  # the folders a path implies (ordinary components only)
                if all(c not in ("", ".", "..") for c in comps[:i]):
                    dirs.setdefault("/".join(comps[:i]))
        entries: list[dict] = [
            {"type": "directory", "oid": git_blob_sha1(d.encode()), "size": 0, "path": d} for d in dirs if listed(d)
        ]
        for f in files.values():
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
        f = self._files.get(path)
        if f is None:
            self._send_error(
                404, "EntryNotFound", f'{path} does not exist on "{unquote(parts[3])}"', head=head, repo=repo
            )
            return
        if f.lfs:
            location = f"{self.hub.endpoint}/lfs/{quote(repo.repo_id)}/{f.sha256}/{quote(f.path)}?commit={self._commit}"
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
                    "X-Repo-Commit": self._commit,
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
        commit = (parse_qs(self._query).get("commit") or [repo.sha])[0]
        with self.hub._lock:
            snap = repo.snapshot(commit)
        self._commit, self._files = snap if snap is not None else (repo.sha, repo.files)
        f = self._files.get(path)
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
            **({"X-Repo-Commit": self._commit or repo.sha} if hub_headers else {}),
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

    # ------------------------------------------------------------------ the write API (huggingface_hub's commit API)

    def _authorized(self) -> bool:
        """True if the request carries the hub's token; else a 401 (no token) or 403 (another) is sent."""
        auth = self.headers.get("Authorization") or ""
        if auth == f"Bearer {self.hub.token}":
            return True
        if not auth:
            self._send_error(401, None, "Invalid username or password.")
        else:
            self._send_error(403, None, "You don't have the rights to write to this repo: the token is read-only")
        return False

    def _post(self, parts: list[str], body: bytes) -> None:
        path = "/".join(parts)
        if path == "/api/repos/create":
            self._kind = "create"
            if self._authorized():
                self._create_repo(json.loads(body))
            return
        if path.startswith("/api/models/") and len(parts) >= 7:
            self._kind = parts[5]  # preupload | commit | branch
            repo = self._find_repo(parts[3], parts[4], head=False)
            if repo is None or not self._authorized():
                return
            rev = unquote("/".join(parts[6:]))
            handler = {"preupload": self._preupload, "commit": self._commit_ndjson, "branch": self._create_branch}
            if self._kind in handler:
                handler[self._kind](repo, rev, body)
                return
        if path.endswith(".git/info/lfs/objects/batch") and len(parts) == 7:
            self._kind = "batch"
            repo = self._find_repo(parts[1], parts[2].removesuffix(".git"), head=False)
            if repo is not None and self._authorized():
                self._lfs_batch(repo, json.loads(body))
            return
        if path.startswith("/lfs-verify/") and len(parts) == 4:
            self._kind = "verify"
            self._repo = f"{unquote(parts[2])}/{unquote(parts[3])}"
            asked = json.loads(body)
            with self.hub._lock:
                stored = self.hub.lfs_objects.get(asked.get("oid", ""))
            if stored is None or len(stored) != asked.get("size"):
                self._send_error(404, None, "Object not found")
            else:
                self._send_json({"success": True}, head=False)
            return
        self._send_error(404, None, "Not found")

    def _create_repo(self, asked: dict) -> None:
        repo_id = f"{asked.get('organization')}/{asked.get('name')}"
        self._repo = repo_id
        if repo_id in self.hub.repos:
            self._send_error(409, None, "You already created this model repo")
            return
        attributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
        self.hub.add_repo(
            repo_id, {".gitattributes": attributes}, sha=hashlib.sha1(f"new {repo_id}".encode()).hexdigest()
        )
        self._send_json({"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id}, head=False)

    def _create_branch(self, repo: FakeRepo, branch: str, body: bytes) -> None:
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        with self.hub._lock:
            if branch in repo.heads:
                self._send_error(409, None, "Reference already exists")
                return
            snap = repo.snapshot(start)
            if snap is None:
                self._send_error(404, "RevisionNotFound", f"Invalid rev id: {start}")
                return
            repo.heads[branch] = snap[0]
            repo.branches = (*repo.branches, branch)
        self._send_json({}, head=False)

    def _preupload(self, repo: FakeRepo, rev: str, body: bytes) -> None:
        if not self._revision_ok(repo, rev, head=False):
            return
        answer = []
        for f in json.loads(body)["files"]:
            old = self._files.get(f["path"])
            lfs = f["size"] >= self.hub.lfs_threshold
            oid = None if old is None else (old.sha256 if old.lfs else git_blob_sha1(old.data))
            answer.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._send_json({"files": answer}, head=False)

    def _lfs_batch(self, repo: FakeRepo, asked: dict) -> None:
        objects = []
        for o in asked.get("objects", []):
            oid, size = o["oid"], o["size"]
            entry: dict = {"oid": oid, "size": size, "authenticated": True}
            with self.hub._lock:
                stored = oid in self.hub.lfs_objects
            if not stored:
                actions = {"upload": {"href": f"{self.hub.url}/lfs-upload/{quote(repo.repo_id)}/{oid}?size={size}"}}
                if self.hub.verify_lfs:
                    actions["verify"] = {"href": f"{self.hub.url}/lfs-verify/{quote(repo.repo_id)}"}
                entry["actions"] = actions
            objects.append(entry)
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        self._send(200, {"Content-Type": "application/vnd.git-lfs+json"}, body)

    def _put(self, parts: list[str], body: bytes) -> None:
        # /lfs-upload/{owner}/{name}/{sha256}: the bytes of one LFS object, checked against their sha256
        if len(parts) != 5 or parts[1] != "lfs-upload":
            self._send_error(404, None, "Not found")
            return
        self._kind, self._repo, oid = "lfs-upload", f"{unquote(parts[2])}/{unquote(parts[3])}", parts[4]
        if sha256_hex(body) != oid:
            self._send_error(400, None, f"the bytes hash to {sha256_hex(body)}, not {oid}")
            return
        with self.hub._lock:
            self.hub.lfs_objects[oid] = body
        if self.hub.on_lfs_upload is not None:
            self.hub.on_lfs_upload(self._repo, oid)
        self._send(200, {"Content-Type": "text/plain"}, b"")

    def _commit_ndjson(self, repo: FakeRepo, rev: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        add: dict[str, bytes] = {}
        lfs: set[str] = set()
        deleted: list[str] = []
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                add[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                with self.hub._lock:
                    data = self.hub.lfs_objects.get(value["oid"])
                if data is None or ("size" in value and value["size"] != len(data)):
                    self._send_error(422, None, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                    return
                add[value["path"]], _ = data, lfs.add(value["path"])
            elif key == "deletedFile":
                deleted.append(value["path"])
            elif key != "header":
                self._send_error(400, None, f"unknown commit operation {key}")
                return
        if rev not in repo.heads:
            self._send_error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return
        try:
            sha = self.hub.make_commit(
                repo.repo_id,
                add,
                tuple(deleted),
                branch=rev,
                summary=header.get("summary", ""),
                parent=header.get("parentCommit"),
                lfs=lfs,
            )
        except ValueError:
            self._send_error(412, None, "A commit has happened since. Please refresh and try again.")
            return
        except KeyError as e:
            self._send_error(404, "EntryNotFound", f"A file with this name doesn't exist: {e.args[0]}")
            return
        self._send_json(
            {"success": True, "commitOid": sha, "commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{sha}"}, head=False
        )


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
