"""Remote outputs (``-o s3://``) against moto's S3 server on 127.0.0.1, through the real s3fs/boto3.

Each job runs as the console command in a subprocess whose proxies point at a closed local port. Outputs are
compared with the same job written to a local path. A failed or killed run leaves nothing under the final
names, two runs on one output never both succeed, and an old output is replaced only at the end. The server
runs in this process, so a test can hold or fail its ``upload_part`` to stop a job at a known point.
"""

# ruff: noqa: F811  (the `s3` fixtures are imported and taken as test arguments)
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from common import only_error_line
from s3_server import BUCKET, s3, s3_auth  # noqa: F401 (s3, s3_auth: the fixtures)
from test_remote_sources import _model, _run

from llmkit.tiny import tiny_model, write_tokenizer


def _objects(s3, prefix: str = "") -> dict[str, bytes]:
    got = s3.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {
        o["Key"][len(prefix) :]: s3.client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        for o in got.get("Contents", [])
    }


def _pending(s3) -> list[str]:
    return [u["Key"] for u in s3.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    """A LLaMA of 4 x 16 MiB parts and more as one .ckpt (hidden 1024): uploads in several parts."""
    folder = tmp_path_factory.mktemp("big") / "model"
    tiny_model(layers=2, hidden=1024, heads=8, intermediate=2048).save_pretrained(folder)
    write_tokenizer(folder)
    return folder


@pytest.fixture
def work(tmp_path: Path) -> Path:
    w = tmp_path / "work"
    w.mkdir()
    return w


class _HeldParts:
    """Hold the server's ``upload_part`` after ``after`` parts until released (or fail them all: ``fail``)."""

    def __init__(self, after: int = 1, fail: bool = False):
        self.after, self.fail = after, fail
        self.reached, self.release = threading.Event(), threading.Event()
        self.count = 0


@pytest.fixture
def held(monkeypatch) -> Iterator[_HeldParts]:
    from moto.s3.models import S3Backend

    state = _HeldParts()
    real = S3Backend.upload_part

    def upload_part(self, *args, **kwargs):
        if state.fail:
            raise RuntimeError("injected failure")
        state.count += 1
        if state.count > state.after:
            state.reached.set()
            state.release.wait(60)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "upload_part", upload_part)
    yield state
    state.release.set()


def _start(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.Popen:
    from test_remote_sources import DEAD_PROXY

    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AWS_"))}
    full.update({"TMPDIR": str(tmp), "HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY, "NO_PROXY": "127.0.0.1"})
    full.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "llmkit", *args], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_sharded_output_matches_the_local_folder(s3, tmp_path, work):
    folder, _ = _model(tmp_path)
    ckpt = tmp_path / "m.ckpt"
    assert _run(["to-ckpt", str(folder), "-o", str(ckpt)], s3.env, work).returncode == 0
    args = ["from-ckpt", str(ckpt), "--config", str(folder / "config.json"), "--shard-size", "100KB"]
    r = _run([*args, "-o", f"s3://{BUCKET}/out/", "--json"], s3.env, work)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["output"] == f"s3://{BUCKET}/out"
    assert _run([*args, "-o", str(tmp_path / "local")], s3.env, work).returncode == 0
    local = _files(tmp_path / "local")
    assert len([n for n in local if n.endswith(".safetensors")]) > 1
    assert _objects(s3, "out/") == local  # no lock object, nothing else
    assert _pending(s3) == []


@pytest.mark.slow
def test_one_object_outputs_match_the_local_files(s3, big_model, tmp_path, work):
    small, _ = _model(tmp_path)
    for cmd, name, model in (("to-ckpt", "m.ckpt", big_model), ("to-gguf", "m.gguf", small)):
        r = _run([cmd, str(model), "-o", f"s3://{BUCKET}/one/{name}"], s3.env, work)
        assert r.returncode == 0, r.stderr
        assert _run([cmd, str(model), "-o", str(tmp_path / name)], s3.env, work).returncode == 0
        assert _objects(s3, f"one/{name}")[""] == (tmp_path / name).read_bytes()
    etag = s3.client.head_object(Bucket=BUCKET, Key="one/m.ckpt")["ETag"]
    assert etag.strip('"').endswith(("-5", "-6"))  # a multipart upload, completed once
    assert sorted(_objects(s3, "one/")) == ["m.ckpt", "m.gguf"] and _pending(s3) == []


@pytest.mark.slow
def test_a_multipart_output_reads_back_as_a_verified_remote_input(s3, big_model, tmp_path, work):
    """The ETag a multipart output gets is the one a remote source checks the bytes against."""
    ckpt = tmp_path / "big.ckpt"
    assert _run(["to-ckpt", str(big_model), "-o", str(ckpt)], s3.env, work).returncode == 0
    r = _run(
        ["from-ckpt", str(ckpt), "--config", str(big_model / "config.json"), "-o", f"s3://{BUCKET}/rb"], s3.env, work
    )
    assert r.returncode == 0, r.stderr
    assert "-" in s3.client.head_object(Bucket=BUCKET, Key="rb/model.safetensors")["ETag"]  # several parts
    remote = _run(["checksum", "--tensors", f"s3://{BUCKET}/rb", "--json"], s3.env, work)
    assert remote.returncode == 0, remote.stderr
    local = _run(["checksum", "--tensors", str(big_model), "--json"], s3.env, work)
    by_name = lambda out: sorted(json.loads(out)["tensors"], key=lambda t: t["name"])  # noqa: E731
    assert by_name(remote.stdout) == by_name(local.stdout)


def test_bin_output_is_refused_before_any_work(s3, tmp_path, work):
    folder, _ = _model(tmp_path)
    r = _run(["to-meta", str(folder), "-o", f"s3://{BUCKET}/meta/"], s3.env, work)
    assert r.returncode == 2
    line = only_error_line(r.stderr)
    assert "s3://weights/meta" in line and "upload" in line
    assert _objects(s3) == {} and _pending(s3) == []


@pytest.mark.slow
def test_existing_output_needs_force_which_replaces_it_at_the_end(s3, tmp_path, work):
    folder, _ = _model(tmp_path)
    ckpt = tmp_path / "m.ckpt"
    assert _run(["to-ckpt", str(folder), "-o", str(ckpt)], s3.env, work).returncode == 0
    args = ["from-ckpt", str(ckpt), "--config", str(folder / "config.json"), "-o", f"s3://{BUCKET}/out/"]
    assert _run([*args, "--shard-size", "100KB"], s3.env, work).returncode == 0
    s3.client.put_object(Bucket=BUCKET, Key="out/NOTES.md", Body=b"mine")
    before = _objects(s3, "out/")
    r = _run(args, s3.env, work)
    assert r.returncode == 2 and "--force" in only_error_line(r.stderr)
    assert _objects(s3, "out/") == before

    r = _run([*args, "--force"], s3.env, work)  # one file now: the old shards and index go
    assert r.returncode == 0, r.stderr
    assert (
        _run(
            ["from-ckpt", str(ckpt), "--config", str(folder / "config.json"), "-o", str(tmp_path / "l")], s3.env, work
        ).returncode
        == 0
    )
    assert _objects(s3, "out/") == {**_files(tmp_path / "l"), "NOTES.md": b"mine"}


@pytest.mark.slow
def test_a_failed_upload_keeps_nothing(s3, held, big_model, work):
    held.fail = True
    r = _run(["to-ckpt", str(big_model), "-o", f"s3://{BUCKET}/f/m.ckpt"], s3.env, work)
    assert r.returncode != 0
    assert "s3://weights/f/m.ckpt" in only_error_line(r.stderr)
    assert _objects(s3) == {} and _pending(s3) == []  # no object, no lock, the upload aborted


@pytest.mark.slow
def test_a_killed_run_leaves_nothing_final_and_a_rerun_succeeds(s3, held, big_model, tmp_path, work):
    out = f"s3://{BUCKET}/k/m.ckpt"
    p = _start(["to-ckpt", str(big_model), "-o", out], s3.env, work)
    try:
        assert held.reached.wait(120), "the job never uploaded a second part"
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        held.release.set()
    assert list(_objects(s3)) == ["k/.m.ckpt.llmkit-lock"]  # nothing under the final name
    assert _pending(s3) == ["k/m.ckpt"]

    held.after = 10**6
    r = _run(["to-ckpt", str(big_model), "-o", out], s3.env, work)  # the dead run's lock is taken over
    assert r.returncode == 0, r.stderr
    assert _run(["to-ckpt", str(big_model), "-o", str(tmp_path / "m.ckpt")], s3.env, work).returncode == 0
    assert _objects(s3) == {"k/m.ckpt": (tmp_path / "m.ckpt").read_bytes()}
    assert _pending(s3) == []  # the killed run's upload was aborted


@pytest.mark.slow
def test_two_runs_on_one_output_never_both_succeed(s3, held, big_model, tmp_path, work):
    out = f"s3://{BUCKET}/two/m.ckpt"
    first = _start(["to-ckpt", str(big_model), "-o", out], s3.env, work)
    try:
        assert held.reached.wait(120)
        t0 = time.monotonic()
        second = _run(["to-ckpt", str(big_model), "-o", out, "--force"], s3.env, work)
        assert second.returncode == 2 and time.monotonic() - t0 < 60
        line = only_error_line(second.stderr)
        assert "another llmkit run is writing" in line and f"pid {first.pid}" in line
    finally:
        held.release.set()
    assert first.wait(120) == 0, first.stderr.read() if first.stderr else ""
    assert _run(["to-ckpt", str(big_model), "-o", str(tmp_path / "m.ckpt")], s3.env, work).returncode == 0
    assert _objects(s3) == {"two/m.ckpt": (tmp_path / "m.ckpt").read_bytes()}


def test_an_output_inside_a_remote_input_is_refused(s3, tmp_path, work):
    folder, _ = _model(tmp_path)
    s3.put_folder(folder, "model")
    before = _objects(s3)
    r = _run(["to-ckpt", f"s3://{BUCKET}/model", "-o", f"s3://{BUCKET}/model/m.ckpt"], s3.env, work)
    assert r.returncode == 2 and "input" in only_error_line(r.stderr)
    assert _objects(s3) == before


def test_dry_run_writes_nothing(s3, tmp_path, work):
    folder, _ = _model(tmp_path)
    r = _run(["to-ckpt", str(folder), "-o", f"s3://{BUCKET}/d/m.ckpt", "--dry-run"], s3.env, work)
    assert r.returncode == 0, r.stderr
    assert _objects(s3) == {} and _pending(s3) == []


def test_wrong_credentials_for_an_output_are_one_line(s3_auth, tmp_path, work):
    folder, _ = _model(tmp_path)
    env = {**s3_auth.env, "AWS_SECRET_ACCESS_KEY": "wrong-secret-123"}
    r = _run(["to-ckpt", str(folder), "-o", f"s3://{BUCKET}/c/m.ckpt"], env, work)
    assert r.returncode == 2
    line = only_error_line(r.stderr)
    assert "AWS_SECRET_ACCESS_KEY" in line and "wrong-secret-123" not in r.stderr


@pytest.mark.parametrize(
    ("out", "inp"),
    [
        ("hf://acme/m@dev/out", "hf://acme/m"),  # another revision of the same repo is the same place
        ("hf://acme/m", "hf://acme/m@main/sub"),  # an output holding the input
        ("s3://weights/model/x.ckpt", "s3://weights/model/"),
    ],
)
def test_an_output_at_an_input_is_refused_whatever_the_revision(out, inp):
    from llmkit.errors import InputError
    from llmkit.io.remote.sink import check_remote_output

    with pytest.raises(InputError, match="would overwrite the input"):
        check_remote_output(out, [Path("/local/base"), inp])
    check_remote_output("hf://acme/other", [inp])  # a neighbour is fine
