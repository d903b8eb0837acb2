"""Remote inputs (``hf://``, ``s3://``) read without a local copy, against real servers on 127.0.0.1 only.

``hf://``: the project's fake hub (tests/hub_server.py) through the real huggingface_hub client; ``s3://``:
moto's S3 server (tests/s3_server.py) through the real s3fs/boto3. Each job runs as the console command in a
subprocess whose proxies point at a closed local port, so a request to any other address fails. Results
are compared with the same job on the local copy of the files; corrupted bytes and missing objects are
failures with nothing kept; the server's log shows every byte fetched once.
"""

# ruff: noqa: F811  (the `hub` and `s3` fixtures are imported and taken as test arguments)
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from common import only_error_line
from hub_server import DEFAULT_TOKEN, FakeHub, hub  # noqa: F401 (hub: the fixture)
from s3_server import BUCKET, DEAD_PROXY, s3, s3_auth  # noqa: F401 (s3, s3_auth: the fixtures)
from safetensors.torch import save_file

from llmkit.tiny import save_tiny_model

REPO = "acme/tiny-llama"


def _run(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess:
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "AWS_")) and k.lower() not in ("http_proxy", "https_proxy")
    }
    full.update(
        {"TMPDIR": str(tmp), "HF_HOME": str(tmp / "hf-home"), "HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY}
    )
    full.update({"NO_PROXY": "127.0.0.1", "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "llmkit", *args], env=full, capture_output=True, text=True, timeout=300
    )


def _left(work: Path) -> list[str]:
    """What a run left in its working folder (its TMPDIR), the client's cache folder aside."""
    return sorted(p.name for p in work.iterdir() if p.name != "hf-home")


def _model(tmp_path: Path, layout: str = "safetensors-sharded") -> tuple[Path, dict[str, bytes]]:
    folder = tmp_path / "model"
    save_tiny_model(folder, layout)
    return folder, {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def hub_model(hub: FakeHub, tmp_path: Path):
    folder, files = _model(tmp_path)
    hub.add_repo(REPO, files)
    work = tmp_path / "work"
    work.mkdir()
    return hub, folder, files, work, {"HF_ENDPOINT": hub.url}


def test_hub_model_jobs_match_the_local_copy_and_fetch_each_byte_once(hub_model):
    hub, folder, files, work, env = hub_model
    url = f"hf://{REPO}"
    remote = _run(["checksum", "--tensors", url, "--json"], env, work)
    local = _run(["checksum", "--tensors", str(folder), "--json"], env, work)
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout)["tensors"] == json.loads(local.stdout)["tensors"]
    assert hub.bytes_asked() == {n: len(d) for n, d in files.items()}  # every file once, nothing twice

    hub.clear_log()
    r = _run(["to-ckpt", url, "-o", str(work / "remote.ckpt")], env, work)
    assert r.returncode == 0, r.stderr
    assert _run(["to-ckpt", str(folder), "-o", str(work / "local.ckpt")], env, work).returncode == 0
    assert (work / "remote.ckpt").read_bytes() == (work / "local.ckpt").read_bytes()
    assert hub.bytes_asked() == {n: len(d) for n, d in files.items()}
    assert _left(work) == ["local.ckpt", "remote.ckpt"]  # the private temp folder is gone

    r = _run(["inspect", url, "--json"], env, work)
    assert (
        r.returncode == 0
        and json.loads(r.stdout)["tensors"]
        == json.loads(_run(["inspect", str(folder), "--json"], env, work).stdout)["tensors"]
    )


def test_hub_single_file_url_and_a_pinned_revision(hub_model, tmp_path):
    hub, _folder, _files, work, env = hub_model
    single, single_files = _model(tmp_path / "one", "safetensors")
    hub.add_repo("acme/one", single_files)
    commit = hub.commit("acme/one")
    for url in ("hf://acme/one/model.safetensors", f"hf://acme/one@{commit}"):
        r = _run(["checksum", "--tensors", url, "--json"], env, work)
        assert r.returncode == 0, r.stderr
        assert (
            json.loads(r.stdout)["tensors"]
            == json.loads(_run(["checksum", "--tensors", str(single), "--json"], env, work).stdout)["tensors"]
        )
    paths = {h.path for h in hub.log if "/resolve/" in h.path}
    assert paths and all(f"/resolve/{commit}/" in p for p in paths)  # every byte read from the pinned commit


def test_hub_corruption_in_transit_fails_and_keeps_nothing(hub_model):
    hub, _folder, files, work, env = hub_model
    shard = "model-00003-of-00012.safetensors"
    data = bytearray(files[shard])
    data[-5] ^= 0xFF  # a byte of tensor data, same length
    hub.corrupt_in_transit[shard] = bytes(data)
    r = _run(["to-ckpt", f"hf://{REPO}", "-o", str(work / "x.ckpt")], env, work)
    assert r.returncode == 1
    line = only_error_line(r.stderr)
    assert shard in line and "sha256" in line and "nothing was kept" in line
    assert _left(work) == []


def test_hub_dropped_connection_is_retried_with_the_same_result(hub_model):
    hub, folder, files, work, env = hub_model
    shard = "model-00002-of-00012.safetensors"
    hub.drop_after[shard] = len(files[shard]) // 2
    hub.drop_times[shard] = 2
    r = _run(["to-ckpt", f"hf://{REPO}", "-o", str(work / "remote.ckpt")], env, work)
    assert r.returncode == 0, r.stderr
    assert _run(["to-ckpt", str(folder), "-o", str(work / "local.ckpt")], env, work).returncode == 0
    assert (work / "remote.ckpt").read_bytes() == (work / "local.ckpt").read_bytes()


def test_hub_gated_repo_and_missing_repo_are_one_line_errors(hub_model):
    hub, _folder, _files, work, env = hub_model
    hub.gated.add(REPO)
    r = _run(["to-ckpt", f"hf://{REPO}", "-o", str(work / "x.ckpt")], env, work)
    assert r.returncode == 2 and "gated" in only_error_line(r.stderr).lower()
    r = _run(["to-ckpt", f"hf://{REPO}", "-o", str(work / "x.ckpt")], {**env, "HF_TOKEN": DEFAULT_TOKEN}, work)
    assert r.returncode == 0, r.stderr
    r = _run(["inspect", "hf://acme/nothing-here"], env, work)
    assert r.returncode == 2 and "acme/nothing-here" in only_error_line(r.stderr)


def test_hub_dry_run_fetches_no_tensor_data(hub_model):
    hub, _folder, files, work, env = hub_model
    r = _run(["to-ckpt", f"hf://{REPO}", "-o", str(work / "x.ckpt"), "--dry-run"], env, work)
    assert r.returncode == 0, r.stderr
    fetched = hub.bytes_asked()
    for name, data in files.items():
        if name.endswith(".safetensors"):
            header = 8 + int.from_bytes(data[:8], "little")
            assert fetched[name] == header  # the header only
    assert not (work / "x.ckpt").exists()


def test_hub_input_never_lands_on_local_disk(hub_model):
    """While the job runs, no file in the temp or cache folders grows to a weight file's size."""
    hub, _folder, files, work, env = hub_model
    hub.throttle["model-00001-of-00012.safetensors"] = 200_000
    smallest_weight = min(len(d) for n, d in files.items() if n.endswith(".safetensors"))
    seen: list[tuple[str, int]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for p in work.rglob("*"):
                try:
                    if p.is_file() and p.suffix != ".ckpt" and not p.name.startswith(".x.ckpt"):
                        seen.append((str(p), p.stat().st_size))
                except OSError:
                    pass
            time.sleep(0.01)

    t = threading.Thread(target=watch)
    t.start()
    try:
        r = _run(["to-ckpt", f"hf://{REPO}", "-o", str(work / "x.ckpt")], env, work)
    finally:
        done.set()
        t.join()
    assert r.returncode == 0, r.stderr
    assert seen  # the watcher saw the side files in the private temp folder
    big = {Path(p).name for p, size in seen if size >= smallest_weight}
    assert big <= set(files) - {n for n in files if n.endswith(".safetensors")}, big  # side files only


def test_s3_single_and_multipart_objects_match_the_local_copy(s3, tmp_path):
    folder, _ = _model(tmp_path)
    s3.put_folder(folder, "tiny")
    big = tmp_path / "big"
    big.mkdir()
    g = torch.Generator().manual_seed(1)
    save_file(
        {"a": torch.randn(1536, 1024, generator=g), "b": torch.randn(1024, 1024, generator=g)},
        big / "model.safetensors",
    )
    s3.put_folder(big, "big", multipart={"model.safetensors"})
    etag = s3.client.head_object(Bucket=BUCKET, Key="big/model.safetensors")["ETag"]
    assert "-" in etag  # a multipart upload: its ETag is no plain MD5
    work = tmp_path / "work"
    work.mkdir()
    for url, local in ((f"s3://{BUCKET}/tiny", folder), (f"s3://{BUCKET}/big", big)):
        r = _run(["checksum", "--tensors", url, "--json"], s3.env, work)
        assert r.returncode == 0, r.stderr
        assert (
            json.loads(r.stdout)["tensors"]
            == json.loads(_run(["checksum", "--tensors", str(local), "--json"], {}, work).stdout)["tensors"]
        )
    assert _run(["to-ckpt", f"s3://{BUCKET}/tiny/", "-o", str(work / "r.ckpt")], s3.env, work).returncode == 0
    assert _run(["to-ckpt", str(folder), "-o", str(work / "l.ckpt")], {}, work).returncode == 0
    assert (work / "r.ckpt").read_bytes() == (work / "l.ckpt").read_bytes()


def test_s3_missing_object_and_the_multipart_etag_formula(s3, tmp_path):
    folder, _ = _model(tmp_path, "safetensors")
    s3.put_folder(folder, "tiny")
    work = tmp_path / "work"
    work.mkdir()
    r = _run(["inspect", f"s3://{BUCKET}/absent"], s3.env, work)
    assert r.returncode == 2 and "no such object" in only_error_line(r.stderr)
    r = _run(["inspect", "s3://absent-bucket/x"], s3.env, work)
    assert r.returncode == 2 and "absent-bucket" in only_error_line(r.stderr)
    from llmkit.io.remote.store import Hasher

    h = Hasher("s3-multipart:5", 12)
    h.update(b"abcdefghijkl")
    import hashlib

    parts = [hashlib.md5(x).digest() for x in (b"abcde", b"fghij", b"kl")]
    assert h.hexdigest() == hashlib.md5(b"".join(parts)).hexdigest() + "-3"  # the published multipart ETag formula


@pytest.mark.parametrize("layout", ["bin", "bin-sharded"])
def test_hub_pytorch_bin_models_stream_without_a_local_copy(hub: FakeHub, tmp_path, layout):
    """A .bin (torch zip) is listed from its pickle by ranged reads (no code runs), its data read once in order."""
    folder, files = _model(tmp_path, layout)
    hub.add_repo(REPO, files)
    work = tmp_path / "work"
    work.mkdir()
    env = {"HF_ENDPOINT": hub.url}
    r = _run(["checksum", "--tensors", f"hf://{REPO}", "--json"], env, work)
    assert r.returncode == 0, r.stderr
    assert (
        json.loads(r.stdout)["tensors"]
        == json.loads(_run(["checksum", "--tensors", str(folder), "--json"], env, work).stdout)["tensors"]
    )
    assert hub.bytes_asked() == {n: len(d) for n, d in files.items()}  # the pickle's bytes are not fetched twice
    assert _run(["to-ckpt", f"hf://{REPO}", "-o", str(work / "r.ckpt")], env, work).returncode == 0
    assert _run(["to-ckpt", str(folder), "-o", str(work / "l.ckpt")], env, work).returncode == 0
    assert (work / "r.ckpt").read_bytes() == (work / "l.ckpt").read_bytes()


def test_recover_with_the_diff_on_the_hub_and_merge_lora_with_the_base_in_s3(hub: FakeHub, s3, tmp_path):
    """The issue's own commands: ``recover --diff hf://...`` and a job whose base is in S3, each equal to the
    same job on local copies."""
    work = tmp_path / "work"
    work.mkdir()
    base = tmp_path / "base"
    save_tiny_model(base, "safetensors", seed=0)
    target = tmp_path / "target"
    save_tiny_model(target, "safetensors", seed=1)
    diff = tmp_path / "diff"
    assert (
        _run(
            ["make-diff", "--base", str(base), "--target", str(target), "-o", str(diff), "--format", "bin"], {}, work
        ).returncode
        == 0
    )
    hub.add_repo("zjunlp/tiny-diff", {p.name: p.read_bytes() for p in diff.iterdir()})
    env = {"HF_ENDPOINT": hub.url}
    r = _run(["recover", "--base", str(base), "--diff", "hf://zjunlp/tiny-diff", "-o", str(work / "remote")], env, work)
    assert r.returncode == 0, r.stderr
    assert (
        _run(["recover", "--base", str(base), "--diff", str(diff), "-o", str(work / "local")], {}, work).returncode == 0
    )
    for p in (work / "local").iterdir():
        assert (work / "remote" / p.name).read_bytes() == p.read_bytes(), p.name

    s3.put_folder(base, "base")
    from common import write_lora

    lora = write_lora(tmp_path / "lora")
    args = ["merge-lora", "--lora", str(lora), "-o"]
    r = _run([*args[:1], "--base", f"s3://{BUCKET}/base", *args[1:], str(work / "m-remote")], s3.env, work)
    assert r.returncode == 0, r.stderr
    assert _run([*args[:1], "--base", str(base), *args[1:], str(work / "m-local")], {}, work).returncode == 0
    for p in (work / "m-local").iterdir():
        assert (work / "m-remote" / p.name).read_bytes() == p.read_bytes(), p.name


def test_a_registry_name_reads_its_hub_repo(hub: FakeHub, tmp_path):
    folder, files = _model(tmp_path, "safetensors")
    hub.add_repo("zjunlp/zhixi-13b-diff", files)
    work = tmp_path / "work"
    work.mkdir()
    r = _run(["checksum", "--tensors", "zhixi-13b-diff", "--json"], {"HF_ENDPOINT": hub.url}, work)
    assert r.returncode == 0, r.stderr
    assert (
        json.loads(r.stdout)["tensors"]
        == json.loads(_run(["checksum", "--tensors", str(folder), "--json"], {}, work).stdout)["tensors"]
    )
    assert {h.repo for h in hub.log} == {"zjunlp/zhixi-13b-diff"}


def test_to_gguf_to_meta_and_make_diff_read_a_hub_model_as_the_local_one(hub_model, tmp_path):
    _hub, folder, _files, work, env = hub_model
    url = f"hf://{REPO}"
    named = tmp_path / "named" / REPO.split("/")[1]  # the folder name GGUF's general.name comes from: the repo's
    shutil.copytree(folder, named)
    other = tmp_path / "other"
    save_tiny_model(other, "safetensors", seed=3)
    jobs = {
        "gguf": (["to-gguf", "{src}", "-o", "{out}.gguf", "--outtype", "f16"], ".gguf"),
        "meta": (["to-meta", "{src}", "-o", "{out}"], ""),
        "diff": (["make-diff", "--base", "{src}", "--target", str(other), "-o", "{out}"], ""),
    }
    for name, (args, suffix) in jobs.items():
        for tag, src in (("remote", url), ("local", str(named))):
            r = _run([a.format(src=src, out=work / f"{name}-{tag}") for a in args], env, work)
            assert r.returncode == 0, (name, tag, r.stderr)
        remote, local = work / f"{name}-remote{suffix}", work / f"{name}-local{suffix}"
        if suffix:
            assert remote.read_bytes() == local.read_bytes(), name
        else:
            assert sorted(p.name for p in remote.iterdir()) == sorted(p.name for p in local.iterdir())
            for p in local.iterdir():
                assert (remote / p.name).read_bytes() == p.read_bytes(), (name, p.name)


def test_dry_run_memory_counts_what_a_fixed_order_sink_holds(hub_model):
    """A .ckpt asks for tensors in its own order: the remote files hold the ones passed, and --dry-run says so."""
    from llmkit.io.remote.reader import AHEAD, CHUNK

    _hub, folder, _files, work, env = hub_model
    memory = {}
    for tag, src in (("remote", f"hf://{REPO}"), ("local", str(folder))):
        r = _run(["to-ckpt", src, "-o", str(work / "x.ckpt"), "--dry-run", "--json"], env, work)
        assert r.returncode == 0, r.stderr
        memory[tag] = json.loads(r.stdout)["plan"]["memory_estimate_bytes"]
    assert memory["remote"] - memory["local"] >= 2 * AHEAD * CHUNK  # read-ahead (RSS of the two runs aside)


def test_s3_wrong_credentials_are_one_line_that_echoes_no_secret(s3_auth, tmp_path):
    folder, _ = _model(tmp_path, "safetensors")
    s3_auth.put_folder(folder, "tiny")
    work = tmp_path / "work"
    work.mkdir()
    r = _run(["checksum", "--tensors", f"s3://{BUCKET}/tiny", "--json"], s3_auth.env, work)
    assert r.returncode == 0, r.stderr  # the right key reads it
    wrong = "not-the-secret-0123456789"
    r = _run(["inspect", f"s3://{BUCKET}/tiny"], {**s3_auth.env, "AWS_SECRET_ACCESS_KEY": wrong}, work)
    assert r.returncode == 2
    line = only_error_line(r.stderr)
    assert "access denied" in line and "AWS_SECRET_ACCESS_KEY" in line, line  # the fix: which credentials to set
    assert wrong not in r.stderr and s3_auth.env["AWS_SECRET_ACCESS_KEY"] not in r.stderr
