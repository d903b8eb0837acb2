"""Remote outputs to the hub (``-o hf://``) against the project's fake hub (tests/hub_server.py: its commit
API) through the real huggingface_hub client.

Each job runs as the console command in a subprocess whose proxies point at a closed local port. Outputs are
compared with the same job written to a local folder; every output is one commit (or none: a failed, killed
or raced run commits nothing).
"""

# ruff: noqa: F811  (the `hub` fixture is imported and taken as a test argument)
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys

import pytest
from common import only_error_line
from hub_server import DEFAULT_TOKEN, hub  # noqa: F401 (hub: the fixture)
from s3_server import DEAD_PROXY
from test_remote_sources import _left, _model, _run


def _ckpt_job(tmp_path):
    """A .ckpt of the tiny model, the from-ckpt arguments that write it back in several shards, a work folder."""
    folder, _files = _model(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    ckpt = tmp_path / "m.ckpt"
    assert _run(["to-ckpt", str(folder), "-o", str(ckpt)], {}, work).returncode == 0
    args = ["from-ckpt", str(ckpt), "--config", str(folder / "config.json"), "--shard-size", "100KB"]
    local = tmp_path / "local"
    assert _run([*args, "-o", str(local)], {}, work).returncode == 0
    return folder, ckpt, args, work, {p.name: p.read_bytes() for p in local.iterdir()}


def _hub_env(hub) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": DEFAULT_TOKEN}


def _under(files: dict[str, bytes], folder: str) -> dict[str, bytes]:
    return {p[len(folder) + 1 :]: d for p, d in files.items() if p.startswith(folder + "/")}


@pytest.mark.slow
def test_hub_output_is_one_commit_equal_to_the_local_folder(hub, tmp_path):
    _folder, _ckpt, args, work, local = _ckpt_job(tmp_path)
    assert len([n for n in local if n.endswith(".safetensors")]) >= 3
    r = _run([*args, "-o", "hf://acme/out/llama"], _hub_env(hub), work)
    assert r.returncode == 0, r.stderr
    assert _under(hub.files_at("acme/out"), "llama") == local
    made = [c for c in hub.commits if c.repo == "acme/out"]
    assert len(made) == 1 and sorted(made[0].added) == sorted(f"llama/{n}" for n in local)
    assert made[0].sha == hub.commit("acme/out")
    uploads = [h.path.rsplit("/", 1)[-1] for h in hub.hits() if h.kind == "lfs-upload"]
    big = {hashlib.sha256(d).hexdigest() for d in local.values() if len(d) >= hub.lfs_threshold}
    assert sorted(uploads) == sorted(big)  # each large file once, by LFS (the index too: the hub's choice)
    assert _left(work) == []  # the private upload folder is gone


def test_hub_one_file_output_on_a_new_branch(hub, tmp_path):
    folder, _files = _model(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    hub.add_repo("acme/ckpts", {"README.md": b"# ckpts\n"})
    main = hub.commit("acme/ckpts")
    r = _run(["to-ckpt", str(folder), "-o", "hf://acme/ckpts@dev/model.ckpt"], _hub_env(hub), work)
    assert r.returncode == 0, r.stderr
    assert _run(["to-ckpt", str(folder), "-o", str(tmp_path / "local.ckpt")], {}, work).returncode == 0
    assert hub.files_at("acme/ckpts", "dev") == {
        "README.md": b"# ckpts\n",
        "model.ckpt": (tmp_path / "local.ckpt").read_bytes(),
    }
    assert hub.commit("acme/ckpts") == main  # main untouched; dev was made from it
    assert [c.parent for c in hub.commits] == [main]
    r = _run(["to-ckpt", str(folder), "-o", "hf://acme/ckpts@dev/model.ckpt"], _hub_env(hub), work)
    assert r.returncode == 2 and "exists" in only_error_line(r.stderr) and len(hub.commits) == 1


@pytest.mark.slow
def test_hub_force_replaces_the_output_in_one_commit(hub, tmp_path):
    _folder, _ckpt, args, work, local = _ckpt_job(tmp_path)
    env = _hub_env(hub)
    assert _run([*args, "-o", "hf://acme/out"], env, work).returncode == 0
    hub.make_commit("acme/out", {"README.md": b"mine\n"})
    before = hub.commit("acme/out")
    r = _run([*args, "-o", "hf://acme/out"], env, work)  # without --force: refused, nothing committed
    assert r.returncode == 2 and "--force" in only_error_line(r.stderr) and hub.commit("acme/out") == before
    bigger = [a if a != "100KB" else "10MB" for a in args]  # one shard now: the old shards and index are stale
    r = _run([*bigger, "-o", "hf://acme/out", "--force"], env, work)
    assert r.returncode == 0, r.stderr
    assert _run([*bigger, "-o", str(tmp_path / "one")], {}, work).returncode == 0
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    files = hub.files_at("acme/out")
    assert {n: d for n, d in files.items() if n not in (".gitattributes", "README.md")} == one
    assert files["README.md"] == b"mine\n"  # the user's file is kept
    last = hub.commits[-1]
    assert last.parent == before and len(hub.commits) == 3  # the first run, README, this one
    stale = {n for n in local if n not in one}
    assert stale and set(last.deleted) == stale  # the stale shards and the index, deleted in the same commit


@pytest.mark.slow
def test_hub_failed_run_commits_nothing(hub, tmp_path):
    folder, ckpt, args, work, _local = _ckpt_job(tmp_path)
    r = _run(["to-ckpt", str(folder), "-o", str(ckpt), "--crc", "--force"], {}, work)
    assert r.returncode == 0, r.stderr
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a byte of tensor data: the CRC trailer, judged at the end, says so
    ckpt.write_bytes(bytes(data))
    hub.add_repo("acme/out", {"README.md": b"x\n"})
    r = _run([*args, "-o", "hf://acme/out"], _hub_env(hub), work)
    assert r.returncode == 2 and "CRC mismatch" in only_error_line(r.stderr)
    assert [h for h in hub.hits() if h.kind == "lfs-upload"]  # shards went up before the check failed
    assert hub.commits == [] and hub.files_at("acme/out") == {"README.md": b"x\n"}
    assert _left(work) == []


def _popen(args: list[str], env: dict[str, str], tmp) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AWS_")) and "proxy" not in k.lower()}
    full.update({"TMPDIR": str(tmp), "HF_HOME": str(tmp / "hf-home"), "HTTP_PROXY": DEAD_PROXY})
    full.update({"HTTPS_PROXY": DEAD_PROXY, "NO_PROXY": "127.0.0.1", "HF_HUB_DISABLE_XET": "1", **env})
    return subprocess.Popen(
        [sys.executable, "-m", "llmkit", *args], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


@pytest.mark.slow
def test_hub_killed_run_commits_nothing_and_a_rerun_succeeds(hub, tmp_path):
    _folder, _ckpt, args, work, local = _ckpt_job(tmp_path)
    proc = _popen([*args, "-o", "hf://acme/out"], _hub_env(hub), work)
    hub.on_lfs_upload = lambda repo, oid: os.kill(proc.pid, signal.SIGKILL)  # once the first shard is stored
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert len(hub.lfs_objects) == 1 and hub.commits == []
    assert hub.files_at("acme/out") == {".gitattributes": hub.files_at("acme/out")[".gitattributes"]}
    assert [p for p in _left(work) if p.startswith("llmkit-upload-")]  # the killed run's local file
    hub.on_lfs_upload = None
    r = _run([*args, "-o", "hf://acme/out"], _hub_env(hub), work)
    assert r.returncode == 0, r.stderr
    assert {n: d for n, d in hub.files_at("acme/out").items() if n != ".gitattributes"} == local
    assert len(hub.commits) == 1 and _left(work) == []  # the re-run removed the dead run's folder


def test_hub_repo_changed_during_the_run_commits_nothing(hub, tmp_path):
    _folder, _ckpt, args, work, _local = _ckpt_job(tmp_path)
    hub.add_repo("acme/out", {"README.md": b"x\n"})
    other = []

    def commit_meanwhile(repo: str, oid: str) -> None:
        if not other:  # another writer commits while this run uploads its first shard
            other.append(hub.make_commit("acme/out", {"notes.txt": b"someone else\n"}))

    hub.on_lfs_upload = commit_meanwhile
    r = _run([*args, "-o", "hf://acme/out"], _hub_env(hub), work)
    assert r.returncode == 2
    assert "the repo changed while this run wrote it; nothing was committed" in only_error_line(r.stderr)
    assert [c.sha for c in hub.commits] == other
    assert hub.files_at("acme/out") == {"README.md": b"x\n", "notes.txt": b"someone else\n"}


def test_hub_output_without_a_token_or_with_a_refused_one(hub, tmp_path):
    folder, _files = _model(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    out = ["to-ckpt", str(folder), "-o", "hf://acme/out/model.ckpt"]
    r = _run(out, {"HF_ENDPOINT": hub.url}, work)
    line = only_error_line(r.stderr)
    assert r.returncode == 2 and "hf://acme/out/model.ckpt" in line and "HF_TOKEN" in line
    r = _run(out, {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_not_the_right_one"}, work)
    line = only_error_line(r.stderr)
    assert r.returncode == 2 and "refused" in line and "HTTP 403" in line and "HF_TOKEN" in line
    assert "hf_not_the_right_one" not in r.stderr
    assert hub.commits == [] and "acme/out" not in hub.repos and _left(work) == []
