"""Recipes whose inputs stream from ``hf://`` or ``s3://``: no download step, no local copy, recorded by commit
and published digests so that a re-run knows whether the input changed.

CuteGPT (base + LoRA -> merge-lora -> to-ckpt) against the project's fake hub (tests/hub_server.py) and moto's
S3 server (tests/s3_server.py), each recipe run as the console command in a subprocess whose proxies point at
a closed port (``test_remote_sources._run``). Every result is compared with the same recipe on local copies
(``--keep-intermediate`` downloads the inputs first) or with the commands run by hand on the local folders;
digests are computed here with hashlib and boto3, not by llmkit.
"""

# ruff: noqa: F811  (the `hub`, `s3` and `hf_env` fixtures are imported and taken as test arguments)
from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from common import write_lora
from hub_server import FakeHub, hub  # noqa: F401 (hub: the fixture)
from s3_server import BUCKET, s3  # noqa: F401 (s3: the fixture)
from safetensors.torch import load_file, save_file
from test_download import hf_env  # noqa: F401 (hf_env: the fixture)
from test_recipes import files_of
from test_remote_sources import _run

from llmkit.tiny import save_tiny_model

BASE_REPO, LORA_REPO = "XuYipei/kw-cutegpt-13b-base", "Abbey4799/kw-cutegpt-13b-ift-lora"
BASE_URL, LORA_URL = f"hf://{BASE_REPO}", f"hf://{LORA_REPO}"
STEP = "merge-lora+to-ckpt"


def _inputs(tmp_path: Path) -> tuple[Path, Path]:
    base = tmp_path / "base"
    save_tiny_model(base, "safetensors")
    return base, write_lora(tmp_path / "lora")


def _other_lora(lora: Path, folder: Path) -> Path:
    """The same adapter with every tensor doubled (a new upload of it)."""
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes((lora / "adapter_config.json").read_bytes())
    tensors = {k: v * 2 for k, v in load_file(lora / "adapter_model.safetensors").items()}
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    return folder


def _by_hand(base: Path, lora: Path, out: Path, env: dict[str, str], tmp: Path) -> bytes:
    """merge-lora then to-ckpt on local folders, the commands one after the other."""
    merged = out.with_suffix("")
    assert _run(["merge-lora", "--base", str(base), "--lora", str(lora), "-o", str(merged)], env, tmp).returncode == 0
    assert _run(["to-ckpt", str(merged), "-o", str(out)], env, tmp).returncode == 0
    return out.read_bytes()


def _published(hub: FakeHub, repo: str) -> dict[str, dict]:
    """Each file's size and the digest the hub publishes: an LFS file's sha256, else the git blob sha1."""
    out = {}
    for name, f in hub.repos[repo].files.items():
        blob = hashlib.sha1(b"blob %d\0" % len(f.data) + f.data).hexdigest()
        digest = ["sha256", hashlib.sha256(f.data).hexdigest()] if f.lfs else ["git-sha1", blob]
        out[name] = {"size": len(f.data), "digest": digest}
    return out


def _recipe(work: Path, env: dict[str, str], tmp: Path, *flags: str) -> dict:
    r = _run(["recipe", "run", "cutegpt-13b", "--workdir", str(work), "--to-ckpt", "--json", *flags], env, tmp)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


class _Watch:
    """Every file seen under ``folder`` (TMPDIR, HF_HOME and the work folder) with its size, every 10 ms."""

    def __init__(self, folder: Path):
        self.folder, self.seen, self._done = folder, [], threading.Event()
        self._thread = threading.Thread(target=self._watch)

    def _watch(self) -> None:
        while not self._done.is_set():
            for p in self.folder.rglob("*"):
                try:
                    if p.is_file():
                        self.seen.append((p, p.stat().st_size))
                except OSError:
                    pass
            time.sleep(0.01)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


@pytest.mark.slow
def test_a_recipe_streams_its_hub_inputs_records_their_commit_and_notices_a_new_one(hub: FakeHub, tmp_path):
    base, lora = _inputs(tmp_path)
    hub.add_repo(BASE_REPO, files_of(base))
    hub.add_repo(LORA_REPO, files_of(lora))
    run = tmp_path / "run"
    run.mkdir()
    env, work = {"HF_ENDPOINT": hub.url}, run / "work"
    hub.throttle["model.safetensors"] = 400_000  # bytes/s: the watcher sees the run while the base streams
    with _Watch(run) as watch:
        res = _recipe(work, env, run)
    assert [(s["id"], s["status"]) for s in res["steps"]] == [(STEP, "ran")]  # no download step
    assert res["streamed"] == {"cutegpt-13b-base": BASE_URL, "cutegpt-13b-ift-lora": LORA_URL}
    asked: dict[str, int] = {}
    for repo in (BASE_REPO, LORA_REPO):
        for name, f in hub.repos[repo].files.items():
            asked[name] = asked.get(name, 0) + len(f.data)
    assert hub.bytes_asked() == asked  # every byte of both inputs once
    weight = (base / "model.safetensors").stat().st_size
    big = {p.name for p, size in watch.seen if size >= weight and "model.ckpt" not in p.name}
    assert watch.seen and not big, big  # no local copy of the input (the output .ckpt aside)
    assert sorted(p.name for p in work.iterdir()) == ["llmkit-recipe.json", "model.ckpt"]

    # The same recipe on local copies (--keep-intermediate downloads both first), and by hand: the same bytes.
    local = _recipe(run / "local", env, run, "--keep-intermediate")
    assert [s["id"] for s in local["steps"]] == ["download-base", "download-lora", STEP] and not local["streamed"]
    assert files_of(run / "local" / "cutegpt-13b-base") == files_of(base)
    ckpt = (work / "model.ckpt").read_bytes()
    assert ckpt == (run / "local" / "model.ckpt").read_bytes() == _by_hand(base, lora, run / "hand.ckpt", env, run)

    record = json.loads((work / "llmkit-recipe.json").read_text())["steps"][STEP]
    assert record["remote"] == {
        BASE_URL: {"revision": hub.commit(BASE_REPO), "files": _published(hub, BASE_REPO)},
        LORA_URL: {"revision": hub.commit(LORA_REPO), "files": _published(hub, LORA_REPO)},
    }
    assert not [p for p in record["inputs"] if "://" in p or ":/" in p]  # the URLs are no local fingerprints

    # Unchanged on the hub: the re-run lists the repos (metadata) and fetches no byte of any file.
    hub.clear_log()
    again = _recipe(work, env, run)
    assert [s["status"] for s in again["steps"]] == ["skipped"] and hub.bytes_asked() == {}
    assert hub.hits() and (work / "model.ckpt").read_bytes() == ckpt

    # A new commit changes the LoRA: the re-run names it, runs again and records the new commit.
    new_lora = _other_lora(lora, tmp_path / "lora2")
    new_sha = hashlib.sha1(b"a new commit").hexdigest()
    hub.add_repo(LORA_REPO, files_of(new_lora), sha=new_sha)
    third = _recipe(work, env, run)
    assert [s["status"] for s in third["steps"]] == ["ran"]
    told = [n["text"] for n in third["notices"] if "changed since recipe step" in n["text"]]
    assert len(told) == 1 and f"{LORA_URL}/adapter_model.safetensors" in told[0] and new_sha[:12] in told[0]
    assert (work / "model.ckpt").read_bytes() == _by_hand(base, new_lora, run / "hand2.ckpt", env, run) != ckpt
    record = json.loads((work / "llmkit-recipe.json").read_text())["steps"][STEP]
    assert record["remote"][LORA_URL] == {"revision": new_sha, "files": _published(hub, LORA_REPO)}


@pytest.mark.slow
def test_a_recipe_streams_inputs_given_as_s3_urls_and_records_their_etags(s3, tmp_path):
    base, lora = _inputs(tmp_path)
    s3.put_folder(base, "cutegpt-base")
    s3.put_folder(lora, "cutegpt-lora")
    run = tmp_path / "run"
    run.mkdir()
    work = run / "work"
    urls = {"cutegpt-13b-base": f"s3://{BUCKET}/cutegpt-base", "cutegpt-13b-ift-lora": f"s3://{BUCKET}/cutegpt-lora"}
    given = [w for name, url in urls.items() for w in ("--input", f"{name}={url}")]
    with _Watch(run) as watch:
        res = _recipe(work, s3.env, run, *given)
    assert [(s["id"], s["status"]) for s in res["steps"]] == [(STEP, "ran")] and res["streamed"] == urls
    weight = (base / "model.safetensors").stat().st_size
    assert not {p.name for p, size in watch.seen if size >= weight and "model.ckpt" not in p.name}
    ckpt = (work / "model.ckpt").read_bytes()
    assert ckpt == _by_hand(base, lora, run / "hand.ckpt", {}, run)

    def etags(prefix: str, folder: Path) -> dict[str, dict]:
        heads = {p.name: s3.client.head_object(Bucket=BUCKET, Key=f"{prefix}/{p.name}") for p in folder.iterdir()}
        return {n: {"size": h["ContentLength"], "digest": ["md5", h["ETag"].strip('"')]} for n, h in heads.items()}

    record = json.loads((work / "llmkit-recipe.json").read_text())["steps"][STEP]
    assert record["remote"] == {
        urls["cutegpt-13b-base"]: {"revision": None, "files": etags("cutegpt-base", base)},
        urls["cutegpt-13b-ift-lora"]: {"revision": None, "files": etags("cutegpt-lora", lora)},
    }
    assert [s["status"] for s in _recipe(work, s3.env, run, *given)["steps"]] == ["skipped"]

    new_lora = _other_lora(lora, tmp_path / "lora2")
    s3.put_folder(new_lora, "cutegpt-lora")  # a new upload: a new ETag
    third = _recipe(work, s3.env, run, *given)
    assert [s["status"] for s in third["steps"]] == ["ran"]
    assert any(f"{urls['cutegpt-13b-ift-lora']}/adapter_model.safetensors" in n["text"] for n in third["notices"])
    assert (work / "model.ckpt").read_bytes() == _by_hand(base, new_lora, run / "hand2.ckpt", {}, run) != ckpt


@pytest.mark.slow
def test_show_and_dry_run_name_the_url_and_that_it_streams(run_cli, hub, hf_env, tmp_path):
    base, lora = _inputs(tmp_path)
    hub.add_repo(BASE_REPO, files_of(base))
    hub.add_repo(LORA_REPO, files_of(lora))
    shown = run_cli("recipe", "show", "cutegpt-13b", "--to-ckpt")
    assert shown.exit_code == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"# cutegpt-13b-base: streamed from {BASE_URL} (no download step, no local copy)" in lines
    assert not [line for line in lines if line.startswith("llmkit download")]
    assert f"llmkit merge-lora --base {BASE_URL} --lora {LORA_URL} -o - | llmkit to-ckpt -" in shown.stdout
    given = run_cli("recipe", "show", "cutegpt-13b", "--input", "cutegpt-13b-base=s3://b/base", "--json").json()
    assert given["streamed"] == {"cutegpt-13b-base": "s3://b/base", "cutegpt-13b-ift-lora": LORA_URL}

    work = tmp_path / "work"
    dry = run_cli("recipe", "run", "cutegpt-13b", "--workdir", work, "--to-ckpt", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert f"streams     cutegpt-13b-base from {BASE_URL} (no download step)" in dry.stdout
    assert f"would run   {STEP}" in dry.stdout and BASE_URL in dry.stdout
    res = run_cli("recipe", "run", "cutegpt-13b", "--workdir", work, "--to-ckpt", "--dry-run", "--json").json()
    assert res["needed_disk_bytes"] == sum(f.size for f in hub.repos[BASE_REPO].files.values())  # about the base
    assert any("no download step and no local copy" in n["text"] for n in res["notices"])
    assert not work.exists() and not hub.bytes_asked()  # listed only
    kept = run_cli("recipe", "run", "cutegpt-13b", "--workdir", work, "--dry-run", "--keep-intermediate", "--json")
    assert [s["id"] for s in kept.json()["steps"]] == ["download-base", "download-lora", "merge-lora"]


@pytest.mark.parametrize(
    "recipe,value,words",
    [
        ("cutegpt-13b", "nothing-here=hf://a/b", ["downloads no nothing-here", "cutegpt-13b-base"]),
        ("cutegpt-13b", "cutegpt-13b-base=/data/base", ["not a URL", "hf://"]),
        ("cutegpt-13b", "cutegpt-13b-base", ["not NAME=URL"]),
        ("zhixi-13b", "zhixi-13b-diff=hf://a/b", ["cannot stream zhixi-13b-diff", "verify-diff", "drop --input"]),
        ("techgpt-2.0-atom", "techgpt-2.0-atom=hf://a/b", ["cannot stream", "result of the recipe"]),
    ],
)
def test_an_input_that_cannot_stream_is_one_line(run_cli, tmp_path, recipe, value, words):
    r = run_cli("recipe", "show", recipe, "--input", value)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
    assert all(w in r.stderr for w in words), r.stderr


def test_merge_lora_reads_an_adapter_from_the_hub_as_the_local_one(hub: FakeHub, tmp_path):
    base, lora = _inputs(tmp_path)
    hub.add_repo(LORA_REPO, files_of(lora))
    run = tmp_path / "run"
    run.mkdir()
    env = {"HF_ENDPOINT": hub.url}
    remote = _run(["merge-lora", "--base", str(base), "--lora", LORA_URL, "-o", str(run / "r"), "--json"], env, run)
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout)["adapters"][0]["path"] == LORA_URL
    assert _run(["merge-lora", "--base", str(base), "--lora", str(lora), "-o", str(run / "l")], {}, run).returncode == 0
    assert files_of(run / "r") == files_of(run / "l")
    assert hub.bytes_asked() == {n: len(d) for n, d in files_of(lora).items()}


def test_a_remote_file_without_a_published_digest_always_counts_as_changed():
    """A plain HTTP server publishes no digest: a same-size file may hold other bytes, so the step runs again."""
    from llmkit.recipes.remote import RemotePrints

    url = "https://example.test/model/"
    record = {"revision": None, "files": {"model.safetensors": {"size": 10, "digest": None}}}
    prints = RemotePrints()
    prints._seen[url] = (record, url)  # the listing, as the store would give it
    change = prints.check(url, record)
    assert change is not None and "publishes no digest" in change.detail
    hashed = {"revision": None, "files": {"model.safetensors": {"size": 10, "digest": ["md5", "ab"]}}}
    prints._seen[url] = (hashed, url)
    assert prints.check(url, hashed) is None
