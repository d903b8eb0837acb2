"""Remote hub inputs the way the real hub serves them: LFS bytes from a CDN on another host.

The hub answers an LFS file's resolve URL with a 302 to a signed URL on a CDN host; huggingface_hub takes the
file's metadata from that 302 (``X-Linked-Etag``, ``X-Linked-Size``) and follows it with each ranged GET,
without the token. The fake hub's ``cdn=True`` (tests/hub_server.py) is that: a second server on 127.0.0.1
at another port. Jobs run as the console command in a subprocess whose proxies point at a closed port.
"""

# ruff: noqa: F811  (the `hub_cdn` fixture is imported and taken as a test argument)
from __future__ import annotations

import json

import pytest
from common import only_error_line
from hub_server import DEFAULT_TOKEN, FakeHub, hub_cdn  # noqa: F401 (hub_cdn: the fixture)
from s3_server import DEAD_PROXY
from test_remote_sources import _left, _model, _run

from llmkit.tiny import save_tiny_model

REPO = "acme/tiny-llama"


def _lfs_sizes(hub: FakeHub, repo: str) -> dict[str, int]:
    return {p: f.size for p, f in hub.repos[repo].files.items() if f.lfs}


@pytest.mark.slow
def test_lfs_bytes_from_a_cdn_host_are_the_local_bytes_each_fetched_once(hub_cdn: FakeHub, tmp_path):
    hub = hub_cdn
    folder, files = _model(tmp_path)
    hub.add_repo(REPO, files)
    work = tmp_path / "work"
    work.mkdir()
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": DEFAULT_TOKEN}
    assert hub.cdn_url != hub.url and hub.cdn_url.startswith("http://127.0.0.1:")
    lfs = _lfs_sizes(hub, REPO)
    assert lfs and set(lfs) != set(files)  # shards on the CDN, small files (config, index) on the hub

    r = _run(["checksum", "--tensors", f"hf://{REPO}", "--json"], env, work)
    assert r.returncode == 0, r.stderr
    local = _run(["checksum", "--tensors", str(folder), "--json"], {}, work)
    assert json.loads(r.stdout)["tensors"] == json.loads(local.stdout)["tensors"]
    assert hub.bytes_asked("cdn") == lfs  # every LFS byte from the CDN, once
    assert hub.bytes_asked("hub") == {n: len(d) for n, d in files.items() if n not in lfs}
    cdn = [h for h in hub.hits() if h.server == "cdn"]
    assert cdn and all(h.status in (200, 206) for h in cdn)  # each at the signed URL the 302 named
    assert all(h.auth is None for h in cdn)  # the token never leaves the hub
    resolves = [h for h in hub.hits() if h.kind == "resolve" and h.file in lfs]
    assert resolves and all(h.status == 302 and h.auth == f"Bearer {DEFAULT_TOKEN}" for h in resolves)

    # recover --diff hf://: the diff's shards from the CDN, the output as from the local diff
    base, target, diff = tmp_path / "base", tmp_path / "target", tmp_path / "diff"
    save_tiny_model(base, "safetensors", seed=0)
    save_tiny_model(target, "safetensors", seed=1)
    made = _run(["make-diff", "--base", str(base), "--target", str(target), "-o", str(diff)], {}, work)
    assert made.returncode == 0, made.stderr
    hub.add_repo("zjunlp/tiny-diff", {p.name: p.read_bytes() for p in diff.iterdir()})
    hub.clear_log()
    r = _run(["recover", "--base", str(base), "--diff", "hf://zjunlp/tiny-diff", "-o", str(work / "remote")], env, work)
    assert r.returncode == 0, r.stderr
    assert (
        _run(["recover", "--base", str(base), "--diff", str(diff), "-o", str(work / "local")], {}, work).returncode == 0
    )
    names = sorted(p.name for p in (work / "local").iterdir())
    assert names == sorted(p.name for p in (work / "remote").iterdir())
    for n in names:
        assert (work / "remote" / n).read_bytes() == (work / "local" / n).read_bytes(), n
    assert hub.bytes_asked("cdn") == _lfs_sizes(hub, "zjunlp/tiny-diff")
    assert _left(work) == ["local", "remote"]


def test_download_takes_the_metadata_from_the_redirect_to_the_cdn(hub_cdn: FakeHub, tmp_path):
    """The CDN sends no hub headers (its ETag is an MD5): ``download`` verifies each file by the sha256 the
    302 announced, so the fake's redirect carries what the client needs from it."""
    hub = hub_cdn
    _folder, files = _model(tmp_path, "safetensors")
    hub.add_repo(REPO, files)
    work = tmp_path / "work"
    work.mkdir()
    r = _run(["download", REPO, "-o", str(work / "got"), "--json"], {"HF_ENDPOINT": hub.url}, work)
    assert r.returncode == 0, r.stderr
    assert {p.name: p.read_bytes() for p in (work / "got").iterdir()} == files
    assert hub.bytes_asked("cdn") == _lfs_sizes(hub, REPO)


def test_corrupt_bytes_from_the_cdn_fail_and_keep_nothing(hub_cdn: FakeHub, tmp_path):
    hub = hub_cdn
    _folder, files = _model(tmp_path)
    hub.add_repo(REPO, files)
    work = tmp_path / "work"
    work.mkdir()
    shard = "model-00003-of-00012.safetensors"
    assert hub.file(REPO, shard).lfs
    data = bytearray(files[shard])
    data[-5] ^= 0xFF  # a byte of tensor data, same length
    hub.corrupt_in_transit[shard] = bytes(data)
    env = {"HF_ENDPOINT": hub.url}
    for args in (["to-ckpt", f"hf://{REPO}", "-o", str(work / "x.ckpt")], ["checksum", "--tensors", f"hf://{REPO}"]):
        r = _run(args, env, work)
        assert r.returncode == 1, r.stderr
        line = only_error_line(r.stderr)
        assert shard in line and "sha256" in line, line
        assert _left(work) == []
    assert {h.file for h in hub.hits() if h.server == "cdn" and h.file == shard}  # the bad bytes came from there


@pytest.mark.slow
def test_endpoint_flag_is_the_hub_before_hf_endpoint_with_a_mirror_path(tmp_path):
    """``--endpoint`` > ``HF_ENDPOINT`` > huggingface.co, as ``download``: the hub at a port (and under a
    mirror's path) only ``--endpoint`` names serves the job while ``HF_ENDPOINT`` points at a closed port."""
    folder, files = _model(tmp_path, "safetensors")
    work = tmp_path / "work"
    work.mkdir()
    with FakeHub(prefix="/hf-mirror") as hub:
        hub.add_repo(REPO, files)
        hub.add_repo("zjunlp/zhixi-13b-diff", files)  # a registry name's repo
        dead = {"HF_ENDPOINT": DEAD_PROXY}
        local = json.loads(_run(["checksum", "--tensors", str(folder), "--json"], {}, work).stdout)["tensors"]
        for model in (f"hf://{REPO}", "zhixi-13b-diff"):
            hub.clear_log()
            r = _run(["checksum", "--tensors", model, "--endpoint", hub.endpoint, "--json"], dead, work)
            assert r.returncode == 0, r.stderr
            assert json.loads(r.stdout)["tensors"] == local
            assert hub.bytes_asked() == {n: len(d) for n, d in files.items()}  # every byte once
            assert {h.path.split("/")[1] for h in hub.hits()} == {"hf-mirror"}  # every request under the prefix

        r = _run(["inspect", f"hf://{REPO}", "--json"], dead, work)  # no flag: HF_ENDPOINT's closed port
        assert r.returncode == 2
        assert DEAD_PROXY in only_error_line(r.stderr)
        r = _run(["inspect", f"hf://{REPO}", "--json"], {"HF_ENDPOINT": hub.endpoint}, work)
        assert r.returncode == 0, r.stderr  # the same mirror path from HF_ENDPOINT

        r = _run(["download", REPO, "-o", str(work / "got"), "--endpoint", hub.endpoint, "--json"], dead, work)
        assert r.returncode == 0, r.stderr  # download takes the same --endpoint, path and all
        assert {p.name: p.read_bytes() for p in (work / "got").iterdir()} == files


def test_the_endpoint_without_the_cli_is_a_block_around_the_call(monkeypatch):
    """What ``--endpoint`` sets, for library callers: innermost block, else ``HF_ENDPOINT``, else the hub."""
    from llmkit.io.remote.store import current_endpoint, hub_endpoint

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert current_endpoint() == "https://huggingface.co"
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    assert current_endpoint() == "http://127.0.0.1:9"
    with hub_endpoint("http://127.0.0.1:8/mirror/"):
        assert current_endpoint() == "http://127.0.0.1:8/mirror"
        with hub_endpoint(None):  # a command given no --endpoint inside another's block
            assert current_endpoint() == "http://127.0.0.1:8/mirror"
    assert current_endpoint() == "http://127.0.0.1:9"
