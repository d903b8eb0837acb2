"""``llmkit download`` against a fake hub on 127.0.0.1 (tests/hub_server.py), through the real huggingface_hub client.

Every test talks to the local server only: the endpoint is the server (``--endpoint`` and ``HF_ENDPOINT``),
proxies point at a closed local port (so a request that ignores the endpoint cannot leave the machine), and
an in-process socket guard refuses and records any connection other than to the server.

What is checked (SPEC.md section 7): content verification (sha256 for LFS files, git blob sha1 for small
files, the registry's published table), skipping verified files without transferring a byte, a same-size
local corruption fetched again, corruption in transit and dropped connections refused with nothing under the
final name, repo errors (404, gated) reported as errors even into a non-empty folder, hostile repo file names
refused, include/exclude filters, a dry run that writes nothing, and the registry model case (TechGPT-7B).
"""

# ruff: noqa: F811  (the `hub` fixture is imported from hub_server and taken as a test argument)
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from common import only_error_line
from hub_server import DEFAULT_TOKEN, FakeHub, git_blob_sha1, hub, sha256_hex  # noqa: F401 (hub: the fixture)

LLMKIT = Path(sys.executable).parent / "llmkit"  # the console script
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens there: a request that ignores the endpoint fails locally
REPO = "acme/tiny-llama"


# ---------------------------------------------------------------- repos


def tiny_files(seed: int = 0) -> dict[str, bytes]:
    """A few small JSON files, a small tokenizer.model-like file, three ~100 KB "LFS" weight files."""
    rnd = random.Random(seed)
    return {
        ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n",
        "config.json": json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "vocab_size": 32000,
                "seed": seed,
            }
        ).encode(),
        "generation_config.json": json.dumps({"bos_token_id": 1, "eos_token_id": 2}).encode(),
        "tokenizer_config.json": json.dumps({"tokenizer_class": "LlamaTokenizer"}).encode(),
        "special_tokens_map.json": json.dumps({"bos_token": "<s>", "eos_token": "</s>"}).encode(),
        "tokenizer.model": b"\n\x0e\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02" + rnd.randbytes(600),
        "pytorch_model-00001-of-00002.bin": rnd.randbytes(100_000),
        "pytorch_model-00002-of-00002.bin": rnd.randbytes(90_000),
        "extra/adapter_model.bin": rnd.randbytes(50_000),
    }


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- environment


class NetworkGuard:
    """Refuses (and records) every connection and name lookup other than the fake hub's address."""

    def __init__(self, allowed: tuple[str, int]):
        self.allowed = allowed
        self.violations: list[str] = []

    def check(self, address) -> None:
        if isinstance(address, (str, bytes)):  # AF_UNIX
            return
        host, port = address[0], address[1]
        if (host, port) != self.allowed:
            self.violations.append(f"{host}:{port}")
            raise ConnectionRefusedError(111, f"test network guard: connection to {host}:{port} refused")


@pytest.fixture
def hf_env(hub, tmp_path, monkeypatch):
    """The hub's environment for one test: HF_HOME in tmp, no Xet, no telemetry, not offline, endpoint = the
    fake hub, no token, dead proxies; and a socket guard. Returns the HF_HOME folder."""
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_TOKEN_PATH", str(home / "token"))
    for name in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_XET_CACHE",
        "LLMKIT_CHECKSUMS",
        "no_proxy",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, DEAD_PROXY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    # huggingface_hub reads these when it is first imported (maybe by another test, before this one):
    # set them in-process too, so the in-process CLI sees the same environment as a fresh process would.
    # ENDPOINT is left alone on purpose: a request that ignores --endpoint must fail (and be seen).
    from huggingface_hub import constants

    for attr, value in {
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_XET_CACHE": str(home / "xet"),
    }.items():
        if hasattr(constants, attr):
            monkeypatch.setattr(constants, attr, value)

    guard = NetworkGuard(("127.0.0.1", int(hub.url.rsplit(":", 1)[1])))
    real_connect, real_connect_ex, real_getaddrinfo = (
        socket.socket.connect,
        socket.socket.connect_ex,
        socket.getaddrinfo,
    )

    def connect(sock, address):
        guard.check(address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        guard.check(address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", b"127.0.0.1", None):
            guard.violations.append(f"lookup {host!r}")
            raise socket.gaierror(socket.EAI_NONAME, f"test network guard: no lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield home
    assert not guard.violations, f"the download tried to reach something other than the fake hub: {guard.violations}"


@pytest.fixture
def work(tmp_path, monkeypatch, hf_env):
    """The current folder for the test (default output folders land here)."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture
def dl(run_cli, hub, hf_env):
    """``dl(*args)`` runs ``llmkit download *args --endpoint <hub>`` in-process."""

    def run(*args, endpoint: bool = True):
        extra = ["--endpoint", hub.url] if endpoint else []
        return run_cli("download", *args, *extra)

    return run


def by_path(result: dict) -> dict[str, dict]:
    return {f["path"]: f for f in result["files"]}


def expected_verified(hub: FakeHub, repo: str, path: str) -> tuple[str, str]:
    f = hub.file(repo, path)
    return ("sha256", f.sha256) if f.lfs else ("git-sha1", git_blob_sha1(f.data))


# ---------------------------------------------------------------- the interface


def test_help_lists_the_options_and_no_token_option(run_cli):
    r = run_cli("download", "--help")
    assert r.exit_code == 0
    for opt in (
        "--output",
        "--include",
        "--exclude",
        "--revision",
        "--endpoint",
        "--jobs",
        "--dry-run",
        "--no-verify",
        "--force",
        "--json",
    ):
        assert opt in r.stdout, opt
    assert "--token" not in r.stdout  # a token on the command line ends up in shell history and ps


def test_fake_hub_speaks_the_client_protocol(hub, hf_env, tmp_path):
    """The server itself, through huggingface_hub's own calls (so a failure below is llmkit's, not the fake's)."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.hf_api import RepoFile

    files = tiny_files()
    hub.add_repo(REPO, files)
    api = HfApi(endpoint=hub.url, token=False)
    info = api.model_info(REPO)
    assert info.sha == hub.commit(REPO) and {s.rfilename for s in info.siblings} == set(files)
    tree = {f.path: f for f in api.list_repo_tree(REPO, recursive=True, revision=info.sha) if isinstance(f, RepoFile)}
    assert set(tree) == set(files)
    assert tree["pytorch_model-00001-of-00002.bin"].lfs.sha256 == sha256_hex(files["pytorch_model-00001-of-00002.bin"])
    assert tree["config.json"].lfs is None and tree["config.json"].blob_id == git_blob_sha1(files["config.json"])
    small = get_hf_file_metadata(hf_hub_url(REPO, "config.json", revision=info.sha, endpoint=hub.url), token=False)
    assert small.etag == git_blob_sha1(files["config.json"]) and small.size == len(files["config.json"])
    assert small.commit_hash == hub.commit(REPO)
    big = get_hf_file_metadata(
        hf_hub_url(REPO, "extra/adapter_model.bin", revision=info.sha, endpoint=hub.url), token=False
    )
    assert big.etag == sha256_hex(files["extra/adapter_model.bin"]) and big.size == 50_000
    assert "/lfs/" in big.location


# ---------------------------------------------------------------- a plain download


def test_downloads_a_repo_id_into_its_name_and_verifies_every_file(dl, hub, work):
    files = tiny_files()
    hub.add_repo(REPO, files)
    r = dl(REPO, "--json")
    assert r.exit_code == 0, r.stderr
    res = r.json()
    out = work / "tiny-llama"  # the default folder: ./<name>
    assert res["ok"] is True and res["dry_run"] is False
    assert res["repo"] == REPO and res["revision"] == hub.commit(REPO)
    assert Path(res["output"]).resolve() == out.resolve()
    assert [Path(o).resolve() for o in res["outputs"]] == [out.resolve()]
    assert files_under(out) == files  # every byte, and nothing else (no staging, no .cache, no lock files)
    got = by_path(res)
    assert set(got) == set(files)
    for path, data in files.items():
        algo, digest = expected_verified(hub, REPO, path)
        assert got[path]["status"] == "downloaded", path
        assert got[path]["size"] == len(data), path
        assert got[path]["verified"] == algo, path
        assert got[path]["digest"] == digest, path
    assert res["total_bytes"] == res["bytes_downloaded"] == sum(map(len, files.values()))
    assert isinstance(res["next_step"], str) and res["next_step"]
    assert isinstance(res["checks"], list) and isinstance(res["notices"], list)
    for path in files:  # each file's bytes were fetched once
        assert len(hub.gets(path)) == 1, (path, hub.gets(path))


def test_human_output_and_explicit_output_folder(dl, hub, work, tmp_path):
    files = tiny_files(1)
    hub.add_repo(REPO, files)
    out = tmp_path / "elsewhere" / "model"
    r = dl(REPO, "-o", out, "--jobs", "1")
    assert r.exit_code == 0, r.stderr
    assert files_under(out) == files
    assert "config.json" in r.stdout and "pytorch_model-00001-of-00002.bin" in r.stdout
    assert not (work / "tiny-llama").exists()


def test_a_rerun_skips_verified_files_and_transfers_nothing(dl, hub, work):
    files = tiny_files()
    hub.add_repo(REPO, files)
    assert dl(REPO, "--json").exit_code == 0
    hub.clear_log()
    r = dl(REPO, "--json")
    assert r.exit_code == 0, r.stderr
    res = r.json()
    assert res["ok"] is True
    for path, f in by_path(res).items():
        algo, digest = expected_verified(hub, REPO, path)
        assert f["status"] == "skipped", path
        assert f["verified"] == algo and f["digest"] == digest, path
    assert res["bytes_downloaded"] == 0 and res["total_bytes"] == sum(map(len, files.values()))
    assert hub.byte_gets() == [], "a verified file was transferred again"
    assert files_under(work / "tiny-llama") == files


def test_a_same_size_local_corruption_is_fetched_again(dl, hub, work):
    files = tiny_files()
    hub.add_repo(REPO, files)
    assert dl(REPO).exit_code == 0
    out = work / "tiny-llama"
    bad = ["pytorch_model-00002-of-00002.bin", "tokenizer.model", "config.json"]  # LFS and git-sha1 files
    for p in bad:
        flip_byte(out / p, 7)
        assert (out / p).stat().st_size == len(files[p])
    hub.clear_log()
    r = dl(REPO, "--json")
    assert r.exit_code == 0, r.stderr
    got = by_path(r.json())
    for path in files:
        assert got[path]["status"] == ("downloaded" if path in bad else "skipped"), path
        assert bool(hub.gets(path)) == (path in bad), path
    assert files_under(out) == files
    assert r.json()["bytes_downloaded"] == sum(len(files[p]) for p in bad)


def test_a_truncated_local_file_is_fetched_again(dl, hub, work):
    files = tiny_files()
    hub.add_repo(REPO, files)
    out = work / "tiny-llama"
    assert dl(REPO).exit_code == 0
    p = "pytorch_model-00001-of-00002.bin"
    (out / p).write_bytes(files[p][:1000])
    r = dl(REPO, "--json")
    assert r.exit_code == 0, r.stderr
    assert by_path(r.json())[p]["status"] == "downloaded"
    assert files_under(out) == files


def test_force_fetches_verified_files_again(dl, hub, work):
    files = tiny_files()
    hub.add_repo(REPO, files)
    assert dl(REPO).exit_code == 0
    hub.clear_log()
    r = dl(REPO, "--force", "--json")
    assert r.exit_code == 0, r.stderr
    assert {f["status"] for f in r.json()["files"]} == {"downloaded"}
    assert all(hub.gets(p) for p in files)
    assert files_under(work / "tiny-llama") == files


def test_no_verify_reports_nothing_as_verified(dl, hub, work):
    files = tiny_files()
    hub.add_repo(REPO, files)
    r = dl(REPO, "--no-verify", "--json")
    assert r.exit_code == 0, r.stderr
    assert {f["verified"] for f in r.json()["files"]} == {None}
    assert files_under(work / "tiny-llama") == files


def test_a_commit_revision_and_an_unknown_revision(dl, hub, work):
    files = tiny_files()
    hub.add_repo(REPO, files)
    sha = hub.commit(REPO)
    r = dl(REPO, "--revision", sha, "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["revision"] == sha
    assert all(sha in h.path for h in hub.byte_gets() if h.kind == "resolve")

    r = dl(REPO, "--revision", "no-such-branch", "-o", "other", "--json")
    assert r.exit_code == 2
    assert "no-such-branch" in only_error_line(r.stderr) or "revision" in only_error_line(r.stderr)
    assert r.json()["ok"] is False
    assert not (work / "other").exists()


# ---------------------------------------------------------------- bytes that are wrong or cut


@pytest.mark.parametrize("path", ["pytorch_model-00001-of-00002.bin", "tokenizer.model"], ids=["lfs", "small"])
def test_bytes_corrupted_in_transit_are_refused(dl, hub, work, path):
    files = tiny_files()
    hub.add_repo(REPO, files)
    wrong = bytearray(files[path])
    wrong[len(wrong) // 2] ^= 0x01
    hub.corrupt_in_transit[path] = bytes(wrong)
    r = dl(REPO, "--jobs", "1")
    assert r.exit_code == 1, (r.exit_code, r.stderr)
    line = only_error_line(r.stderr)
    assert path in line
    out = work / "tiny-llama"
    assert not (out / path).exists(), "the corrupted bytes were kept under the final name"
    for p in out.rglob("*") if out.exists() else ():
        if p.is_file():  # whatever else is there is a whole, verified file
            assert p.read_bytes() == files[p.relative_to(out).as_posix()], p

    r = dl(REPO, "--json")  # still corrupted: the JSON error object
    assert r.exit_code == 1
    assert r.json()["ok"] is False
    assert path in only_error_line(r.stderr)
    assert not (out / path).exists()
    assert leftovers(work.parent, work.parent / "hf_home") == []  # no staging, partial or lock file kept

    del hub.corrupt_in_transit[path]
    r = dl(REPO, "--json")
    assert r.exit_code == 0, r.stderr
    assert by_path(r.json())[path]["status"] == "downloaded"
    assert files_under(out) == files


def test_a_connection_dropped_once_never_leaves_a_partial_file(dl, hub, work):
    """One cut response: either the client recovers within the run (and the file verifies), or the run fails
    cleanly (one error line naming the file, nothing under its name) and a re-run completes."""
    files = tiny_files()
    hub.add_repo(REPO, files)
    path = "pytorch_model-00001-of-00002.bin"
    hub.drop_after[path] = 40_000
    out = work / "tiny-llama"
    r = dl(REPO, "--jobs", "1", "--json")
    if r.exit_code == 0:
        assert by_path(r.json())[path]["verified"] == "sha256"
        assert (out / path).read_bytes() == files[path]
    else:
        assert path in only_error_line(r.stderr)
        assert r.json()["ok"] is False
        assert not (out / path).exists()
        r = dl(REPO, "--json")
        assert r.exit_code == 0, r.stderr
    assert files_under(out) == files
    assert len(hub.gets(path)) >= 2


@pytest.mark.parametrize(
    "path,cut", [("pytorch_model-00001-of-00002.bin", 40_000), ("tokenizer.model", 300)], ids=["lfs", "small"]
)
def test_a_retry_within_the_run_does_not_restart_from_byte_zero(dl, hub, work, path, cut):
    """SPEC.md 7: "a retry of a small file after a dropped connection restarts from byte 0" is a client
    behaviour llmkit must not inherit. If the run recovers from the cut by itself, its retry must ask for the
    rest (``Range: bytes=<cut>-``); failing the run instead (and re-running) is also fine. The client resumes
    from what it has written, in chunks of ``llmkit.hub_transfer.RESUME_CHUNK`` (16 KiB): a cut inside the first chunk
    (the 300-byte case) restarts that chunk, which is all of a small file."""
    from llmkit.hub_transfer import RESUME_CHUNK

    files = tiny_files()
    hub.add_repo(REPO, files)
    hub.drop_after[path] = cut
    r = dl(REPO, "--jobs", "1", "--json")
    gets = hub.gets(path)
    if cut < RESUME_CHUNK:  # nothing was written yet: the retry fetches the (small) file whole, and it is exact
        assert r.exit_code == 0 and (work / "tiny-llama" / path).read_bytes() == files[path]
        assert len(files[path]) < RESUME_CHUNK and [h.range for h in gets[1:]] == [None]
        return
    if r.exit_code == 0:
        assert (work / "tiny-llama" / path).read_bytes() == files[path]
        retries = gets[1:]
        assert retries, gets
        assert all(h.range and h.range.startswith("bytes=") and not h.range.startswith("bytes=0-") for h in retries), (
            f"the retry fetched {path} from byte 0 again: {[(h.kind, h.range) for h in gets]}"
        )
    else:
        assert path in only_error_line(r.stderr)
        assert not (work / "tiny-llama" / path).exists()


def test_a_connection_that_keeps_dropping_fails_cleanly_and_a_rerun_completes(hub, hf_env, work, dl):
    """Run as a real process: with --json, stderr is exactly the one error line (no client warnings, no
    progress), stdout the error object; nothing under the file's name; then a re-run completes."""
    files = tiny_files()
    hub.add_repo(REPO, files)
    path = "pytorch_model-00002-of-00002.bin"
    hub.drop_after[path] = 30_000
    hub.drop_times[path] = 1000
    env = {**os.environ}
    proc = subprocess.run(
        [str(LLMKIT), "download", REPO, "--endpoint", hub.url, "--jobs", "1", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=work,
        check=False,
    )
    assert proc.returncode not in (0, 3), (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error:"), proc.stderr
    assert path in proc.stderr
    assert json.loads(proc.stdout)["ok"] is False
    out = work / "tiny-llama"
    assert not (out / path).exists()
    assert not any(p.name.endswith((".incomplete", ".lock")) for p in work.rglob("*")), list(work.rglob("*"))

    hub.drop_after.clear()
    hub.drop_times.clear()
    r = dl(REPO, "--json")
    assert r.exit_code == 0, r.stderr
    assert by_path(r.json())[path]["status"] == "downloaded"
    assert by_path(r.json())[path]["verified"] == "sha256"
    assert files_under(out) == files


# ---------------------------------------------------------------- repo errors


def stale_folder(out: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    """A non-empty output folder from some earlier attempt: the repo's names, stale bytes."""
    out.mkdir(parents=True)
    for p in files:
        (out / p).parent.mkdir(parents=True, exist_ok=True)
        (out / p).write_bytes(b"stale " + p.encode())
    return files_under(out)


@pytest.mark.parametrize(
    "json_flag,status", [(False, 404), (True, 404), (True, 401)], ids=["text-404", "json-404", "json-401"]
)
def test_a_missing_repo_is_an_error_even_into_a_non_empty_folder(dl, hub, work, json_flag, status):
    """The hub answers a missing (or private) repo with ``X-Error-Code: RepoNotFound``: 404, or 401 when the
    request has no token."""
    hub.not_found_status = status
    files = tiny_files()
    out = work / "tiny-llama"
    before = stale_folder(out, files)
    r = dl(REPO, *(["--json"] if json_flag else []))
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    line = only_error_line(r.stderr)
    assert REPO in line
    if json_flag:
        res = r.json()
        assert res["ok"] is False and res["exit_code"] == 2
        assert "files" not in res or not res["files"]
    else:
        assert "downloaded" not in r.stdout
    assert files_under(out) == before
    assert hub.byte_gets() == []


def test_a_missing_repo_creates_no_folder(dl, hub, work, tmp_path, hf_env):
    r = dl("acme/no-such-repo", "--json")
    assert r.exit_code == 2
    assert "acme/no-such-repo" in only_error_line(r.stderr)
    assert not (work / "no-such-repo").exists()
    assert leftovers(tmp_path, hf_env) == []


@pytest.mark.parametrize("gate_api", [False, True], ids=["files-gated", "all-gated"])
def test_a_gated_repo_without_a_token_is_an_error_with_the_hint(dl, hub, work, gate_api):
    """As on the hub, a gated repo's info and tree are public and its files are not (``files-gated``); a
    stricter mirror may refuse everything (``all-gated``)."""
    files = tiny_files()
    hub.add_repo(REPO, files)
    hub.gated.add(REPO)
    hub.gate_api = gate_api
    out = work / "tiny-llama"
    before = stale_folder(out, files)
    r = dl(REPO, "--json")
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    line = only_error_line(r.stderr)
    assert REPO in line, line
    assert "HF_TOKEN" in line or "hf auth login" in line, line
    assert "gated" in line.lower(), line
    res = r.json()
    assert res["ok"] is False and res["exit_code"] == 2
    assert files_under(out) == before  # the stale folder is neither reported as downloaded nor touched
    assert all(h.auth is None for h in hub.hits())  # no token was invented


def test_a_gated_repo_with_a_wrong_token_is_an_error_with_the_hint(dl, hub, work, monkeypatch):
    hub.add_repo(REPO, tiny_files())
    hub.gated.add(REPO)
    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    r = dl(REPO, "--json")
    assert r.exit_code == 2, r.stderr
    line = only_error_line(r.stderr)
    assert REPO in line and ("HF_TOKEN" in line or "hf auth login" in line), line
    assert "hf_not_the_right_one" not in line + r.stdout  # a token is never echoed
    assert not (work / "tiny-llama" / "config.json").exists()


def test_a_gated_repo_with_hf_token_in_the_environment_downloads(dl, hub, work, monkeypatch):
    files = tiny_files()
    hub.add_repo(REPO, files)
    hub.gated.add(REPO)
    monkeypatch.setenv("HF_TOKEN", DEFAULT_TOKEN)
    r = dl(REPO, "--json")
    assert r.exit_code == 0, r.stderr
    assert files_under(work / "tiny-llama") == files
    assert DEFAULT_TOKEN not in r.stdout + r.stderr
    resolves = [h for h in hub.hits() if h.kind == "resolve"]
    assert resolves and all(h.auth == f"Bearer {DEFAULT_TOKEN}" for h in resolves)


# ---------------------------------------------------------------- hostile names


@pytest.mark.parametrize(
    "hostile", ["../../escaped.txt", "sub/../../../escaped.txt", "ABSOLUTE"], ids=["dotdot", "inner-dotdot", "absolute"]
)
def test_a_hostile_repo_file_name_is_refused_and_nothing_lands_outside(dl, hub, work, tmp_path, hostile):
    if hostile == "ABSOLUTE":
        hostile = str(tmp_path / "escaped.txt")
    files = {**tiny_files(), hostile: b"owned\n"}
    hub.add_repo(REPO, files)
    out = work / "nested" / "model"
    r = dl(REPO, "-o", out, "--json")
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    line = only_error_line(r.stderr)
    assert hostile in line, line
    assert r.json()["ok"] is False
    assert hub.gets(hostile) == []
    outside = [
        p for p in tmp_path.rglob("*") if p.is_file() and tmp_path / "hf_home" not in p.parents and out not in p.parents
    ]
    assert outside == [], outside
    assert not (tmp_path / "escaped.txt").exists() and not (work / "escaped.txt").exists()


def test_a_symlink_in_the_output_folder_is_not_written_through(dl, hub, work, tmp_path):
    """DIR/extra is a symlink to a folder outside DIR; the repo has extra/adapter_model.bin. Whatever the
    outcome, nothing may be written through the link."""
    files = tiny_files()
    hub.add_repo(REPO, files)
    outside = tmp_path / "outside"
    outside.mkdir()
    out = work / "tiny-llama"
    out.mkdir()
    (out / "extra").symlink_to(outside, target_is_directory=True)
    r = dl(REPO, "--json")
    assert list(outside.iterdir()) == [], "a file was written through a symlink, outside the output folder"
    if r.exit_code != 0:
        assert "extra" in only_error_line(r.stderr)
    else:
        assert (
            not (out / "extra").is_symlink()
            and (out / "extra/adapter_model.bin").read_bytes() == files["extra/adapter_model.bin"]
        )


# ---------------------------------------------------------------- filters and dry run


def test_include_and_exclude_filter_the_files(dl, hub, work):
    files = tiny_files()
    hub.add_repo(REPO, files)
    r = dl(REPO, "-o", "json-only", "--include", "*.json", "--json")
    assert r.exit_code == 0, r.stderr
    jsons = {p: d for p, d in files.items() if p.endswith(".json")}
    assert files_under(work / "json-only") == jsons
    assert {f["path"] for f in r.json()["files"]} == set(jsons)
    assert r.json()["total_bytes"] == sum(map(len, jsons.values()))

    r = dl(REPO, "-o", "no-bin", "--exclude", "*.bin", "--json")
    assert r.exit_code == 0, r.stderr
    assert files_under(work / "no-bin") == {p: d for p, d in files.items() if not p.endswith(".bin")}

    r = dl(REPO, "-o", "both", "--include", "*.json", "--include", "tokenizer.*", "--exclude", "config.json", "--json")
    assert r.exit_code == 0, r.stderr
    assert set(files_under(work / "both")) == {
        "generation_config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
    }


def leftovers(tmp_path: Path, hf_home: Path) -> list[Path]:
    """Lock files, .cache folders, staging folders (``.llmkit-download`` or ``.NAME.llmkit-download``) and partial
    downloads anywhere under tmp_path, except in HF_HOME."""
    return [
        p
        for p in tmp_path.rglob("*")
        if hf_home not in p.parents
        and p != hf_home
        and (p.name == ".cache" or p.name.endswith(".llmkit-download") or p.suffix in (".lock", ".incomplete"))
    ]


def test_dry_run_lists_files_and_sizes_and_writes_nothing(dl, hub, work, tmp_path, hf_env):
    files = tiny_files()
    hub.add_repo(REPO, files)
    r = dl(REPO, "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    res = r.json()
    assert res["dry_run"] is True and res["ok"] is True
    assert res["revision"] == hub.commit(REPO)
    assert {f["path"]: (f["size"], f["status"]) for f in res["files"]} == {
        p: (len(d), "would download") for p, d in files.items()
    }
    assert res["total_bytes"] == sum(map(len, files.values()))
    assert res["bytes_downloaded"] == 0 and res["outputs"] == []
    assert not (work / "tiny-llama").exists()
    assert leftovers(tmp_path, hf_env) == []
    assert hub.byte_gets() == []

    r = dl(REPO, "--dry-run")  # human output: the files and the total
    assert r.exit_code == 0, r.stderr
    assert "pytorch_model-00001-of-00002.bin" in r.stdout and "would download" in r.stdout
    assert not (work / "tiny-llama").exists()
    assert leftovers(tmp_path, hf_env) == []


def test_dry_run_after_a_partial_download_says_what_is_left(dl, hub, work, tmp_path, hf_env):
    files = tiny_files()
    hub.add_repo(REPO, files)
    assert dl(REPO, "--include", "*.json").exit_code == 0
    out = work / "tiny-llama"
    before = files_under(out)
    hub.clear_log()
    r = dl(REPO, "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    status = {f["path"]: f["status"] for f in r.json()["files"]}
    assert status == {p: ("skipped" if p.endswith(".json") else "would download") for p in files}
    assert files_under(out) == before
    assert leftovers(tmp_path, hf_env) == []
    assert hub.byte_gets() == []


# ---------------------------------------------------------------- the registry model


def registry_model(name_part: str):
    from llmkit.registry import MODELS

    return next(m for m in MODELS if name_part in (m.repo_id or "") and m.tables.get("download"))


def tables_folder(tmp_path: Path, overrides: dict[str, str]) -> Path:
    """A copy of the built-in tables with some replaced (LLMKIT_CHECKSUMS points here)."""
    from llmkit.registry import checksums_dir

    folder = tmp_path / "checksums"
    shutil.copytree(checksums_dir(), folder)
    for name, text in overrides.items():
        (folder / f"{name}.md5").write_text(text)
    return folder


def techgpt_repo(hub: FakeHub) -> tuple[object, dict[str, bytes]]:
    model = registry_model("TechGPT-7B")
    rnd = random.Random(7)
    files = {
        name: (rnd.randbytes(120_000) if "pytorch_model" in name else rnd.randbytes(300 + i * 50))
        for i, name in enumerate(model.files)
    }
    files["README.md"] = b"# TechGPT-7B\n\nEncrypted weights (a test stand-in).\n"
    hub.add_repo(model.repo_id, files)
    return model, files


def test_a_registry_model_downloads_into_its_name_verified_against_its_table(dl, hub, work, tmp_path, monkeypatch):
    model, files = techgpt_repo(hub)
    table = model.tables["download"]
    text = "# test table\n" + "".join(f"{hashlib.md5(files[f]).hexdigest()}  ./{f}\n" for f in model.files)
    monkeypatch.setenv("LLMKIT_CHECKSUMS", str(tables_folder(tmp_path, {table: text})))
    r = dl(model.name, "--json")
    assert r.exit_code == 0, r.stderr
    res = r.json()
    out = work / model.name
    assert res["ok"] is True and res["repo"] == model.repo_id
    assert Path(res["output"]).resolve() == out.resolve()
    assert files_under(out) == files
    got = by_path(res)
    for f in model.files:
        assert got[f]["verified"] == "table", (f, got[f])
        assert got[f]["status"] == "downloaded"
    assert got["README.md"]["verified"] == "git-sha1"  # not in the table: verified against the hub
    assert not any(c["status"] not in ("ok", "info") for c in res["checks"]), res["checks"]
    assert "llmkit decrypt" in res["next_step"] and "--key" in res["next_step"]

    # a re-run: skipped, still table-verified, nothing transferred
    hub.clear_log()
    r = dl(model.name, "--json")
    assert r.exit_code == 0, r.stderr
    got = by_path(r.json())
    assert {f["status"] for f in got.values()} == {"skipped"}
    assert all(got[f]["verified"] == "table" for f in model.files)
    assert hub.byte_gets() == []


def test_a_registry_model_whose_bytes_differ_from_its_published_table_is_flagged(dl, hub, work, tmp_path):
    """The built-in TechGPT table holds the real files' MD5s, which the stand-in bytes cannot match: the files
    verify against the hub, but must not be reported as table-verified, and the mismatch must be visible."""
    model, _files = techgpt_repo(hub)
    r = dl(model.name, "--json")
    res = r.json()
    got = by_path(res)
    for f in model.files:
        assert got[f]["verified"] != "table", (f, got[f])
    bad = [c for c in res["checks"] if c["status"] not in ("ok", "info")]
    assert {c["name"] for c in bad} >= set(model.files), res["checks"]
    assert r.exit_code == 1 or any(n["level"] == "warning" for n in res["notices"]), (r.exit_code, res)
    assert "warning" in r.stderr or r.exit_code == 1, r.stderr


def test_a_registry_models_repo_id_is_verified_against_the_same_table(dl, hub, work, tmp_path, monkeypatch):
    """``llmkit download neukg/TechGPT-7B`` fetches the very files the registry's table describes
    (``llmkit.registry.get_model`` takes a repo id too): they are table-verified, into ./TechGPT-7B."""
    model, files = techgpt_repo(hub)
    text = "".join(f"{hashlib.md5(files[f]).hexdigest()}  ./{f}\n" for f in model.files)
    monkeypatch.setenv("LLMKIT_CHECKSUMS", str(tables_folder(tmp_path, {model.tables["download"]: text})))
    r = dl(model.repo_id, "--json")
    assert r.exit_code == 0, r.stderr
    assert files_under(work / model.repo_id.split("/")[1]) == files
    got = by_path(r.json())
    assert [f for f in model.files if got[f]["verified"] != "table"] == [], r.json()["files"]


def test_a_registry_model_next_step_in_text_output(dl, hub, work, tmp_path, monkeypatch):
    model, files = techgpt_repo(hub)
    text = "".join(f"{hashlib.md5(files[f]).hexdigest()}  ./{f}\n" for f in model.files)
    monkeypatch.setenv("LLMKIT_CHECKSUMS", str(tables_folder(tmp_path, {model.tables["download"]: text})))
    r = dl(model.name, "-o", "tg")
    assert r.exit_code == 0, r.stderr
    assert "llmkit decrypt" in r.stdout and "--key" in r.stdout


# ---------------------------------------------------------------- HF_ENDPOINT in a fresh process


def test_hf_endpoint_selects_the_mirror_in_a_fresh_process(hub, hf_env, work):
    """No --endpoint: HF_ENDPOINT (read by a fresh process, as a user's shell would set it) is the mirror."""
    files = tiny_files()
    hub.add_repo(REPO, files)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(LLMKIT), "download", REPO, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=60,
        cwd=work,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --json: nothing but the result
    res = json.loads(proc.stdout)
    assert res["ok"] is True and res["revision"] == hub.commit(REPO)
    assert files_under(work / "tiny-llama") == files
    assert time.perf_counter() - t0 < 30
