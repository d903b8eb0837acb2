"""A recipe re-run reuses a recorded step only if what it wrote still has the content it had.

The manifest records the sha256 of every file a step of the recipe wrote, with a seal (inode and ctime,
which no program can set back). A file corrupted in place with its size and modification time restored
(``os.utime``) breaks the seal, is read again, and its step runs again, with one line naming the file.
A file whose seal holds is not read again (a no-op re-run costs one ``stat`` per file); ``--rehash``
reads every one. Against the local test hub.
"""

# ruff: noqa: F811  (fixtures imported from hub_server / test_download / test_recipes are taken as arguments)
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hub_server import hub  # noqa: F401
from test_download import hf_env  # noqa: F401
from test_recipes import files_of, techgpt  # noqa: F401

import llmkit.recipes.fingerprint as fingerprint
from llmkit.recipes.manifest import MANIFEST


def corrupt_in_place(path: Path) -> None:
    """Flip one byte in the middle of ``path``; size and modification time stay exactly as they were."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def lines_naming(stderr: str, path: Path) -> list[str]:
    return [line for line in stderr.splitlines() if str(path) in line]


def test_an_output_corrupted_in_place_with_its_mtime_restored_is_detected_and_made_again(
    run_cli, techgpt, hub, tmp_path
):
    plain, key = techgpt
    work = tmp_path / "work"
    args = ("recipe", "run", "techgpt-1.0", "--workdir", work, "--key", key, "--endpoint", hub.url)
    assert run_cli(*args).exit_code == 0
    weights = work / "techgpt-7b" / "pytorch_model.bin"
    corrupt_in_place(weights)
    assert files_of(work / "techgpt-7b") != files_of(plain)

    r = run_cli(*args, "--json")
    assert r.exit_code == 0, r.stderr
    [line] = lines_naming(r.stderr, weights)  # one line, naming the file
    assert line.startswith("warning: ") and "changed in place" in line and "decrypt" in line, line
    assert any("changed in place" in n["text"] for n in r.json()["notices"])
    # decrypt runs again (which needs the deleted download back), then verify checks the new output
    assert [s["status"] for s in r.json()["steps"]] == ["ran"] * 4
    assert files_of(work / "techgpt-7b") == files_of(plain)

    again = run_cli(*args, "--json")
    assert [s["status"] for s in again.json()["steps"]] == ["skipped"] * 4 and not lines_naming(again.stderr, weights)


def test_an_intermediate_a_later_step_reads_is_checked_by_content(
    run_cli, tiny_factory, lora_work, hub, hf_env, tmp_path
):
    base = tiny_factory("safetensors").path
    hub.add_repo("XuYipei/kw-cutegpt-13b-base", files_of(base))
    hub.add_repo("Abbey4799/kw-cutegpt-13b-ift-lora", files_of(lora_work / "cute"))
    work = tmp_path / "work"
    args = ("recipe", "run", "cutegpt-13b", "--workdir", work, "--endpoint", hub.url, "--keep-intermediate", "--json")
    assert run_cli(*args).exit_code == 0
    shard = work / "cutegpt-13b-base" / "model.safetensors"
    corrupt_in_place(shard)

    dry = run_cli(*args, "--dry-run")  # the plan already says so, and reads without writing
    assert dry.exit_code == 0 and len(lines_naming(dry.stderr, shard)) == 1
    assert [s["status"] for s in dry.json()["steps"]] == ["would run", "would skip", "would run"]
    assert files_of(work / "cutegpt-13b-base") != files_of(base)

    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    assert len(lines_naming(r.stderr, shard)) == 1
    assert [s["status"] for s in r.json()["steps"]] == ["ran", "skipped", "ran"]
    assert files_of(work / "cutegpt-13b-base") == files_of(base)  # the download fetched the damaged file again
    direct = tmp_path / "direct"
    assert run_cli("merge-lora", "--base", base, "--lora", lora_work / "cute", "-o", direct).exit_code == 0
    assert files_of(work / "cutegpt-13b-ift") == files_of(direct)


def test_a_sealed_file_is_not_read_again_and_rehash_reads_every_one(run_cli, techgpt, hub, tmp_path, monkeypatch):
    plain, key = techgpt
    monkeypatch.setattr(fingerprint, "SEAL_MARGIN_NS", 50_000_000)  # the tiny files are seconds old, not minutes
    read: list[Path] = []
    real = fingerprint.hash_file
    monkeypatch.setattr(fingerprint, "hash_file", lambda p, *a, **k: (read.append(Path(p)), real(p, *a, **k))[1])
    work = tmp_path / "work"
    args = ("recipe", "run", "techgpt-1.0", "--workdir", work, "--key", key, "--endpoint", hub.url, "--json")
    assert run_cli(*args).exit_code == 0
    outputs = sorted(p for p in (work / "techgpt-7b").iterdir())
    assert set(outputs) <= set(read)  # every output file was hashed once it was written
    time.sleep(0.1)
    run_cli(*args)  # files sealed while younger than the margin are read once more, then sealed
    read.clear()
    r = run_cli(*args)
    assert [s["status"] for s in r.json()["steps"]] == ["skipped"] * 4 and read == []  # one stat per file
    manifest = json.loads((work / MANIFEST).read_text())
    del manifest["steps"]["verify"]  # verify runs again; recording its (sealed) input reads nothing more
    (work / MANIFEST).write_text(json.dumps(manifest))
    r = run_cli(*args)
    assert [s["status"] for s in r.json()["steps"]] == ["skipped"] * 3 + ["ran"] and read == []

    touched = work / "techgpt-7b" / "config.json"
    os.utime(touched, ns=(time.time_ns(), time.time_ns()))  # a new time, the same content: reused
    r = run_cli(*args)
    assert [s["status"] for s in r.json()["steps"]] == ["skipped"] * 4 and read == [touched]
    assert not lines_naming(r.stderr, touched)

    read.clear()
    r = run_cli(*args, "--rehash")
    assert [s["status"] for s in r.json()["steps"]] == ["skipped"] * 4 and sorted(set(read)) == outputs
    assert len(read) == len(outputs)  # the output and the verify step's input: one file, one read

    weights = work / "techgpt-7b" / "pytorch_model.bin"
    corrupt_in_place(weights)
    r = run_cli(*args)
    assert r.exit_code == 0 and len(lines_naming(r.stderr, weights)) == 1
    assert files_of(work / "techgpt-7b") == files_of(plain)


def test_a_manifest_of_an_earlier_llmkit_makes_its_steps_run_once_more(run_cli, techgpt, hub, tmp_path):
    _, key = techgpt
    work = tmp_path / "work"
    args = ("recipe", "run", "techgpt-1.0", "--workdir", work, "--key", key, "--endpoint", hub.url, "--json")
    assert run_cli(*args).exit_code == 0
    manifest = json.loads((work / MANIFEST).read_text())
    for record in manifest["steps"].values():  # what an earlier llmkit wrote: one digest of sizes and times
        record["output"] = dict.fromkeys(record["output"], "0" * 64)
    (work / MANIFEST).write_text(json.dumps(manifest))
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    texts = [n["text"] for n in r.json()["notices"]]
    assert any("recorded by an earlier llmkit without content hashes" in t for t in texts), texts
    assert [s["status"] for s in r.json()["steps"]] == ["ran"] * 4
    assert [s["status"] for s in run_cli(*args).json()["steps"]] == ["skipped"] * 4
