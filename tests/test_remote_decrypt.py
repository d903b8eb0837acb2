"""``llmkit decrypt hf://...`` / ``s3://...``: remote ``.enc`` files streamed into the XOR, no local copy.

Against the project's fake hub (tests/hub_server.py) and moto's S3 server (tests/s3_server.py), as the console
command in subprocesses whose proxies point at a closed port (``_run`` of test_remote_sources.py). The ``.enc``
files are made with the upstream key-stream loop (tests/spec_reference.py); the outputs must be the plaintexts
and the bytes of the same decrypt of a local copy; the servers' logs show what was fetched.
"""

# ruff: noqa: F811  (the `hub` and `s3` fixtures are imported and taken as test arguments)
from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from pathlib import Path

import pytest
import torch
from common import EMPTY, enc_name, only_error_line
from hub_server import FakeHub, hub  # noqa: F401 (hub: the fixture)
from s3_server import BUCKET, s3  # noqa: F401 (s3: the fixture)
from safetensors.torch import save_file
from spec_reference import C, upstream_xor
from test_remote_sources import _left, _run

from llmkit.tiny import save_tiny_model

REPO = "acme/tiny-enc"
BIG = enc_name("big.safetensors")  # over one 10 MiB key chunk: the key wraps; a multipart object in S3


def _plain_files(tmp: Path) -> dict[str, bytes]:
    """The plaintexts: a tiny model's weights, a 10 MiB+ safetensors file, a JSON file under 1 KB (a git
    blob on the hub, not LFS). None of their names is in a published table."""
    model = tmp / "model"
    save_tiny_model(model, "safetensors")
    g = torch.Generator().manual_seed(1)
    save_file(
        {"a": torch.randn(1536, 1024, generator=g), "b": torch.randn(1024, 1024, generator=g)},
        tmp / "big.safetensors",
    )
    small = json.dumps({"note": "a small side file, encrypted too"}).encode()
    return {
        "model.safetensors": (model / "model.safetensors").read_bytes(),
        "big.safetensors": (tmp / "big.safetensors").read_bytes(),
        "extra.json": small,
    }


@pytest.fixture
def published(tmp_path: Path):
    """(key, plaintexts by output name, the published folder's files by name, a local copy of that folder)."""
    key = tmp_path / "key.pth"
    key.write_bytes(random.Random(1).randbytes(C + 1_234))  # shorter than the data: the wrap path
    plain = _plain_files(tmp_path / "plain")
    files = {enc_name(n): upstream_xor(d, key) for n, d in plain.items() if n != "model.safetensors"}
    weights = plain["model.safetensors"]
    digest = hashlib.sha256(weights).digest()
    files[f"model.safetensors.{digest.hex()}.enc"] = digest + upstream_xor(weights, key)  # BELLE
    files["README.md"] = b"# tiny-enc\n"
    files[".gitattributes"] = b"*.enc filter=lfs\n"
    local = tmp_path / "local-copy"
    local.mkdir()
    for n, d in files.items():
        (local / n).write_bytes(d)
    work = tmp_path / "work"
    (work / "tmp").mkdir(parents=True)
    assert len(files[BIG]) > C and EMPTY in BIG
    return key, plain, files, local, work


def _decrypt(src: str, out: Path, key: Path, env: dict[str, str], work: Path, *extra: str):
    """``llmkit decrypt`` in a subprocess; its TMPDIR is ``work/tmp`` (the folder the watcher reads)."""
    return _run(["decrypt", src, "--key", str(key), "--no-key-check", "-o", str(out), *extra], env, work / "tmp")


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _enc_sizes(files: dict[str, bytes]) -> dict[str, int]:
    return {n: len(d) for n, d in files.items() if n.endswith(".enc")}


def test_hub_decrypt_equals_the_local_one_and_fetches_each_byte_once(hub: FakeHub, published):
    key, plain, files, local, work = published
    hub.add_repo(REPO, files)
    env = {"HF_ENDPOINT": hub.url}
    r = _decrypt(f"hf://{REPO}", work / "remote", key, env, work)
    assert r.returncode == 0, r.stderr
    assert hub.bytes_asked() == _enc_sizes(files)  # every .enc once, whole; README never fetched
    assert f"hf://{REPO}/README.md" in r.stderr and "ignored" in r.stderr
    assert _decrypt(str(local), work / "local", key, {}, work).returncode == 0
    assert _outputs(work / "remote") == _outputs(work / "local") == plain  # bit-identical, and the plaintexts
    assert _left(work / "tmp") == []  # no temp folder left

    hub.clear_log()  # one file at a pinned commit, as JSON
    commit = hub.commit(REPO)
    r = _decrypt(f"hf://{REPO}@{commit}/{BIG}", work / "one", key, env, work, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(f["input"], f["fetched"], f["bytes"]) for f in doc["files"]] == [
        (f"hf://{REPO}@{commit}/{BIG}", len(files[BIG]), len(plain["big.safetensors"]))
    ]
    assert _outputs(work / "one") == {"big.safetensors": plain["big.safetensors"]}
    assert hub.bytes_asked() == {BIG: len(files[BIG])}
    resolved = {h.path for h in hub.log if "/resolve/" in h.path}
    assert resolved and all(f"/resolve/{commit}/" in p for p in resolved)  # every byte from the pinned commit


def test_s3_decrypt_with_a_multipart_object_equals_the_local_one(s3, published):
    key, plain, _files, local, work = published
    s3.put_folder(local, "enc", multipart={BIG})
    etag = s3.client.head_object(Bucket=BUCKET, Key=f"enc/{BIG}")["ETag"]
    assert "-" in etag  # a multipart upload: its ETag is the MD5 of the parts' MD5s
    r = _decrypt(f"s3://{BUCKET}/enc/", work / "remote", key, s3.env, work, "--jobs", "2")
    assert r.returncode == 0, r.stderr
    assert _decrypt(str(local), work / "local", key, {}, work).returncode == 0
    assert _outputs(work / "remote") == _outputs(work / "local") == plain


def test_bytes_corrupted_in_transit_exit_1_and_keep_nothing(hub: FakeHub, published):
    key, _plain, files, _local, work = published
    hub.add_repo(REPO, files)
    data = bytearray(files[BIG])
    data[-5] ^= 0xFF  # a byte of tensor data: the content check cannot see it, the digest must
    hub.corrupt_in_transit[BIG] = bytes(data)
    r = _decrypt(f"hf://{REPO}", work / "out", key, {"HF_ENDPOINT": hub.url}, work)
    assert r.returncode == 1, r.stderr
    line = only_error_line(r.stderr)
    assert f"hf://{REPO}/{BIG}" in line and "sha256" in line and "nothing was kept" in line, line
    assert sorted(p.name for p in work.iterdir()) == ["tmp"]  # no output, no staged folder
    assert _left(work / "tmp") == []


def test_dry_run_lists_files_and_bytes_and_fetches_no_data(hub: FakeHub, published):
    key, plain, files, _local, work = published
    hub.add_repo(REPO, files)
    r = _decrypt(f"hf://{REPO}", work / "out", key, {"HF_ENDPOINT": hub.url}, work, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["dry_run"] is True and doc["outputs"] == []
    listed = {Path(f["input"]).name: (f["fetched"], f["bytes"], f["format"]) for f in doc["files"]}
    belle = next(n for n in files if n.startswith("model.safetensors."))
    assert listed == {
        BIG: (len(files[BIG]), len(plain["big.safetensors"]), "techgpt"),
        enc_name("extra.json"): (len(files[enc_name("extra.json")]), len(plain["extra.json"]), "techgpt"),
        belle: (len(files[belle]), len(plain["model.safetensors"]), "belle"),
    }
    assert hub.bytes_asked() == {belle: 32}  # the BELLE header that tells the format; no TechGPT byte
    assert not (work / "out").exists()
    r = _decrypt(f"hf://{REPO}", work / "out", key, {"HF_ENDPOINT": hub.url}, work, "--dry-run")
    assert r.returncode == 0 and f"would decrypt  hf://{REPO}/{BIG}" in r.stdout and "to fetch" in r.stdout


def test_the_local_checks_come_before_any_data_is_fetched(hub: FakeHub, published):
    key, _plain, files, _local, work = published
    hub.add_repo(REPO, files)
    env = {"HF_ENDPOINT": hub.url}
    belle = next(n for n in files if n.startswith("model.safetensors."))
    r = _run(["decrypt", f"hf://{REPO}", "--key", str(key), "-o", str(work / "out")], env, work / "tmp")
    assert r.returncode == 2 and "the key file is" in only_error_line(r.stderr)  # the key check: its size
    assert hub.bytes_asked() == {belle: 32}  # the BELLE header that tells the format, no other byte
    hub.clear_log()
    (work / "taken").mkdir()
    (work / "taken" / "big.safetensors").write_bytes(b"mine")
    r = _decrypt(f"hf://{REPO}", work / "taken", key, env, work)
    assert r.returncode == 2 and "--force" in only_error_line(r.stderr)
    assert (work / "taken" / "big.safetensors").read_bytes() == b"mine"
    assert hub.bytes_asked() == {belle: 32}
    r = _decrypt("hf://acme/nothing-here", work / "out", key, env, work)
    assert r.returncode == 2 and "acme/nothing-here" in only_error_line(r.stderr)
    hub.add_repo("acme/plain", {"README.md": b"# no .enc here\n"})
    r = _decrypt("hf://acme/plain", work / "out", key, env, work)
    assert r.returncode == 2 and "no .enc files" in only_error_line(r.stderr) and "hf://acme/plain" in r.stderr


def test_a_registry_name_decrypts_its_hub_repo(hub: FakeHub, published):
    key, plain, files, _local, work = published
    hub.add_repo("neukg/TechGPT-7B", files)  # techgpt-7b of llmkit models
    r = _decrypt("techgpt-7b", work / "out", key, {"HF_ENDPOINT": hub.url}, work)
    assert r.returncode == 0, r.stderr
    assert _outputs(work / "out") == plain
    assert {h.repo for h in hub.log} == {"neukg/TechGPT-7B"}


def test_no_enc_file_lands_on_local_disk(hub: FakeHub, published):
    """While the job runs, no file in the temp or hub cache folders grows to an .enc file's size."""
    key, plain, files, _local, work = published
    hub.add_repo(REPO, files)
    hub.throttle[BIG] = 4_000_000  # about 3 s for the big file
    smallest = min(size for size in _enc_sizes(files).values() if size > 2**16)  # the weight files
    seen: list[tuple[str, int]] = []
    looks = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            looks.append(time.monotonic())
            for p in (work / "tmp").rglob("*"):
                try:
                    if p.is_file():
                        seen.append((str(p), p.stat().st_size))
                except OSError:
                    pass
            time.sleep(0.01)

    t = threading.Thread(target=watch)
    t.start()
    try:
        r = _decrypt(f"hf://{REPO}", work / "out", key, {"HF_ENDPOINT": hub.url}, work)
    finally:
        done.set()
        t.join()
    assert r.returncode == 0, r.stderr
    assert _outputs(work / "out") == plain
    assert len(looks) > 50  # the watcher looked all through the run
    assert not [(p, size) for p, size in seen if size >= smallest]


def test_a_local_dry_run_lists_the_files_and_writes_nothing(published):
    key, plain, _files, local, work = published
    r = _decrypt(str(local), work / "out", key, {}, work, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["dry_run"] is True and doc["outputs"] == [] and not (work / "out").exists()
    assert sorted((Path(f["output"]).name, f["bytes"], f["fetched"]) for f in doc["files"]) == sorted(
        (n, len(d), None) for n, d in plain.items()
    )
    assert doc["ignored"] == [str(local / "README.md")]
