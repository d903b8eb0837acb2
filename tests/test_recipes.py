"""``llmkit recipe``: recipes are data whose steps are real commands; ``run`` goes end to end against the
local test hub (tests/hub_server.py, 127.0.0.1 only), records each step, resumes, and cleans up.

- TechGPT-1.0: download -> verify -> decrypt -> verify, with tiny .enc files made by ``llmkit encrypt``,
  published tables given through ``LLMKIT_CHECKSUMS`` and the key check pointed at a tiny key;
- ZhiXi (fp16): from-meta (a tiny Meta folder) -> download the diff -> verify -> recover -> download the
  LoRA -> verify -> merge-lora;
- CuteGPT: merge-lora of the base and LoRA streamed from the hub (no download step).
"""

# ruff: noqa: F811  (fixtures imported from hub_server / test_download are taken as test arguments)
from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import typer
from common import md5
from hub_server import hub  # noqa: F401
from test_download import hf_env  # noqa: F401

from llmkit.recipes import RECIPES
from llmkit.recipes.manifest import MANIFEST
from llmkit.registry.tables import _tables_in

ENC_LABEL = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}


def write_table(folder: Path, name: str, files: dict[str, Path]) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.md5").write_text("".join(f"{md5(p)}  {n}\n" for n, p in files.items()))


# ------------------------------------------------------------------ list / show


def test_every_recipe_shows_commands_the_cli_accepts(run_cli):
    from llmkit.cli import app

    group = typer.main.get_command(app)
    for name in RECIPES:
        lora = ["--with-lora"] if name.startswith("zhixi") else []
        r = run_cli("recipe", "show", name, "--to-ckpt", "--to-meta", *lora, "--json")
        assert r.exit_code == 0, r.stderr
        script = r.json()
        assert script["commands"] and all(c.startswith("llmkit ") for c in script["commands"])
        for command in (c for line in script["commands"] for c in line.split(" | ")):  # tensor pipes: each side
            words = shlex.split(command.replace("$", ""))[1:]
            with group.make_context("llmkit", list(words), resilient_parsing=False) as ctx:
                sub = group.get_command(ctx, words[0])
                sub.make_context(words[0], words[1:], parent=ctx)  # raises on an unknown option or a bad value
    text = run_cli("recipe", "show", "techgpt-1.0", "--key", "/k/consolidated.00.pth", "--workdir", "/w").stdout
    assert "KEY=/k/consolidated.00.pth" in text and "WORKDIR=/w" in text
    assert 'llmkit decrypt "$WORKDIR/techgpt-7b-enc" --key "$KEY" -o "$WORKDIR/techgpt-7b"' in text
    listing = run_cli("recipe", "list", "--json").json()["recipes"]
    assert {r["name"] for r in listing} == set(RECIPES)
    assert next(r for r in listing if r["name"] == "zhixi-13b")["needs"] == ["--llama-dir"]


def test_missing_inputs_are_named_before_any_step(run_cli, tmp_path):
    r = run_cli("recipe", "run", "techgpt-1.0", "--workdir", tmp_path / "w")
    assert r.exit_code == 2 and "needs --key" in r.stderr
    r = run_cli("recipe", "run", "zhixi-13b", "--workdir", tmp_path / "w", "--llama-dir", tmp_path)
    assert r.exit_code == 2 and "consolidated.NN.pth and params.json" in r.stderr
    r = run_cli("recipe", "run", "gpt-5", "--workdir", tmp_path / "w")
    assert r.exit_code == 2 and "unknown recipe" in r.stderr and "techgpt-1.0" in r.stderr
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------ TechGPT-1.0 end to end


@pytest.fixture
def techgpt(tmp_path, tiny_factory, hub, hf_env, monkeypatch):
    """A fake neukg/TechGPT-7B on the test hub, its published tables, and the tiny key it was made with."""
    import llmkit.crypto.keycheck as keycheck
    from llmkit.crypto import EncryptOptions, encrypt

    plain = tmp_path / "plain"
    src = tiny_factory("bin").path
    plain.mkdir()
    for name in (
        "config.json",
        "generation_config.json",
        "pytorch_model.bin",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "tokenizer.model",
    ):
        if (src / name).is_file():
            shutil.copy(src / name, plain / name)
    if not (plain / "generation_config.json").exists():
        (plain / "generation_config.json").write_text('{"bos_token_id": 1, "eos_token_id": 2}\n')
    key = tmp_path / "keys" / "consolidated.00.pth"
    key.parent.mkdir()
    key.write_bytes(
        torch.randint(0, 256, (3 << 20,), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
        .numpy()
        .tobytes()
    )
    enc = tmp_path / "enc"
    encrypt(EncryptOptions(inputs=(plain,), key=key, output=enc, key_check=False))
    hub.add_repo("neukg/TechGPT-7B", files_of(enc))
    tables = tmp_path / "tables"
    write_table(tables, "techgpt-7b.enc", {p.name: p for p in enc.iterdir()})
    write_table(tables, "techgpt-7b", {p.name: p for p in plain.iterdir()})
    monkeypatch.setenv("LLMKIT_CHECKSUMS", str(tables))
    monkeypatch.setenv("LLMKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(keycheck, "KEY_SIZE", key.stat().st_size)
    monkeypatch.setattr(keycheck, "KEY_MD5", md5(key))
    return plain, key


def test_techgpt_recipe_runs_records_resumes_and_cleans_up(run_cli, techgpt, hub, tmp_path):
    plain, key = techgpt
    work = tmp_path / "work"
    args = ("recipe", "run", "techgpt-1.0", "--workdir", work, "--key", key, "--endpoint", hub.url, "--json")
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    res = r.json()
    assert [s["status"] for s in res["steps"]] == ["ran"] * 4
    assert res["final"] == [str(work / "techgpt-7b")] and files_of(work / "techgpt-7b") == files_of(plain)
    assert res["removed"] == [str(work / "techgpt-7b-enc")] and not (work / "techgpt-7b-enc").exists()
    statuses = {c["name"]: c["status"] for c in res["checks"]}
    assert statuses[f"verify: {work / 'techgpt-7b' / 'pytorch_model.bin'}"] == "ok"  # the published table
    assert (
        statuses[f"decrypt: {work / 'techgpt-7b-enc' / ('pytorch_model.bin.' + ENC_LABEL + '.enc')}: output md5"]
        == "ok"
    )
    manifest = json.loads((work / MANIFEST).read_text())
    assert list(manifest["steps"]) == ["download", "verify-download", "decrypt", "verify"]
    assert manifest["steps"]["decrypt"]["options"]["key"] == str(key)

    # A re-run finds every step recorded and unchanged: nothing runs, the hub is not even asked.
    hits = len(hub.log)
    again = run_cli(*args).json()
    assert [s["status"] for s in again["steps"]] == ["skipped"] * 4 and len(hub.log) == hits
    # Where the files come from (HF_ENDPOINT instead of --endpoint) does not make a step stale.
    without = run_cli(*[a for a in args if a not in ("--endpoint", hub.url)]).json()
    assert [s["status"] for s in without["steps"]] == ["skipped"] * 4 and len(hub.log) == hits

    # The output changed: decrypt runs again, which needs the deleted download back; then verify again.
    (work / "techgpt-7b" / "config.json").write_text("{}")
    third = run_cli(*args)
    assert third.exit_code == 0, third.stderr
    assert [s["status"] for s in third.json()["steps"]] == ["ran"] * 4
    assert files_of(work / "techgpt-7b") == files_of(plain)


def test_techgpt_recipe_checks_the_key_before_downloading_and_resumes_at_the_failed_step(
    run_cli, techgpt, hub, tmp_path
):
    plain, key = techgpt
    wrong = tmp_path / "wrong" / "consolidated.00.pth"
    wrong.parent.mkdir()
    wrong.write_bytes(bytes(key.stat().st_size))  # the right size, the wrong bytes
    work = tmp_path / "work"
    r = run_cli("recipe", "run", "techgpt-1.0", "--workdir", work, "--key", wrong, "--endpoint", hub.url)
    assert r.exit_code == 2 and "consolidated.00.pth" in r.stderr
    assert not work.exists() and not hub.log  # refused before the first step: nothing fetched
    # A step that fails: the published table of the decrypted files disagrees, so decrypt keeps nothing.
    tables = Path(__import__("os").environ["LLMKIT_CHECKSUMS"])
    good = (tables / "techgpt-7b.md5").read_text()
    (tables / "techgpt-7b.md5").write_text(good.replace(md5(plain / "config.json"), "0" * 32))
    _tables_in.cache_clear()  # tables are read once per process; these in-process runs share one
    r = run_cli("recipe", "run", "techgpt-1.0", "--workdir", work, "--key", key, "--endpoint", hub.url)
    assert r.exit_code == 1, r.stderr
    manifest = json.loads((work / MANIFEST).read_text())
    assert list(manifest["steps"]) == ["download", "verify-download"] and "decrypt" in manifest["failed"]
    assert not (work / "techgpt-7b").exists()
    (tables / "techgpt-7b.md5").write_text(good)
    _tables_in.cache_clear()
    hits = len(hub.log)
    r = run_cli("recipe", "run", "techgpt-1.0", "--workdir", work, "--key", key, "--endpoint", hub.url, "--json")
    assert r.exit_code == 0, r.stderr
    assert [s["status"] for s in r.json()["steps"]] == ["skipped", "skipped", "ran", "ran"]
    assert len(hub.log) == hits  # the download was not repeated
    assert files_of(work / "techgpt-7b") == files_of(plain)


def test_a_llama_folder_of_the_wrong_size_is_refused(run_cli, tiny_factory, tmp_path):
    r = run_cli("recipe", "run", "zhixi-13b", "--workdir", tmp_path / "w", "--llama-dir", tiny_factory("meta").path)
    assert r.exit_code == 2 and "recipe zhixi-13b needs LLaMA-13B (dim 5120)" in r.stderr
    assert not (tmp_path / "w").exists()


def test_dry_run_asks_the_hub_and_plans_without_writing(run_cli, techgpt, hub, tmp_path):
    _plain, key = techgpt
    work = tmp_path / "work"
    r = run_cli(
        "recipe", "run", "techgpt-1.0", "--workdir", work, "--key", key, "--endpoint", hub.url, "--dry-run", "--json"
    )
    assert r.exit_code == 0, r.stderr
    res = r.json()
    assert [s["status"] for s in res["steps"]] == ["would run"] * 4
    enc_bytes = sum(f.size for f in hub.repos["neukg/TechGPT-7B"].files.values())
    assert res["needed_disk_bytes"] == 2 * enc_bytes  # the .enc files and the decrypted ones, at once
    assert not work.exists()


# ------------------------------------------------------------------ ZhiXi (fp16) and CuteGPT end to end


def test_zhixi_fp16_recipe_from_meta_download_verify_recover_merge(
    run_cli, tiny_factory, lora_work, hub, hf_env, tmp_path, monkeypatch
):
    meta = tiny_factory("meta").path
    tuned = tiny_factory("safetensors", seed=1, dtype=torch.float16).path
    diff = tmp_path / "diff"
    r = run_cli("make-diff", "--base", meta, "--target", tuned, "-o", diff, "--dtype", "fp16", "--format", "bin")
    assert r.exit_code == 0, r.stderr
    hub.add_repo("zjunlp/zhixi-13b-diff-fp16", files_of(diff))
    tables = tmp_path / "tables"
    write_table(tables, "zhixi-13b-diff-fp16", {n: diff / n for n in files_of(diff) if n.endswith(".bin")})
    lora = lora_work / "cute"  # stands in for zjunlp/zhixi-13b-lora (same tiny shapes)
    hub.add_repo("zjunlp/zhixi-13b-lora", files_of(lora))
    write_table(tables, "zhixi-13b-lora", {n: lora / n for n in files_of(lora)})
    monkeypatch.setenv("LLMKIT_CHECKSUMS", str(tables))
    import dataclasses

    # The tiny Meta folder (dim 64) stands in for LLaMA-13B (dim 5120).
    monkeypatch.setitem(RECIPES, "zhixi-13b-fp16", dataclasses.replace(RECIPES["zhixi-13b-fp16"], llama_dim=None))
    work = tmp_path / "work"
    r = run_cli(
        "recipe",
        "run",
        "zhixi-13b-fp16",
        "--workdir",
        work,
        "--llama-dir",
        meta,
        "--endpoint",
        hub.url,
        "--with-lora",
        "--keep-intermediate",
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    assert [s["id"] for s in r.json()["steps"]] == [
        "download-diff",
        "verify-diff",
        "download-lora",
        "verify-lora",
        "from-meta+recover+merge-lora",  # one pass; --keep-intermediate writes the inner models from it too
    ]
    assert r.json()["removed"] == [] and (work / "llama-13b-hf").is_dir() and (work / "zhixi-13b-fp16").is_dir()
    assert r.json()["final"] == [str(work / "zhixi-13b-fp16-lora-merged")]
    # The same library calls by hand give the same models.
    direct = tmp_path / "direct"
    assert run_cli("recover", "--base", meta, "--diff", diff, "-o", direct).exit_code == 0
    assert run_cli("verify", "--tensors", work / "zhixi-13b-fp16", direct).exit_code == 0
    merged = tmp_path / "merged"
    assert run_cli("merge-lora", "--base", direct, "--lora", lora, "-o", merged).exit_code == 0
    assert run_cli("verify", "--tensors", work / "zhixi-13b-fp16-lora-merged", merged).exit_code == 0


def test_cutegpt_recipe_streams_its_base_and_lora_into_one_pass(
    run_cli, tiny_factory, lora_work, hub, hf_env, tmp_path
):
    base = tiny_factory("safetensors").path
    hub.add_repo("XuYipei/kw-cutegpt-13b-base", files_of(base))
    hub.add_repo("Abbey4799/kw-cutegpt-13b-ift-lora", files_of(lora_work / "cute"))
    work = tmp_path / "work"
    r = run_cli("recipe", "run", "cutegpt-13b", "--workdir", work, "--endpoint", hub.url, "--to-ckpt", "--json")
    assert r.exit_code == 0, r.stderr
    res = r.json()
    assert res["final"] == [str(work / "model.ckpt")] and not (work / "cutegpt-13b-ift").exists()  # one pass
    assert res["output"] == str(work / "model.ckpt")
    assert [s["id"] for s in res["steps"]] == ["merge-lora+to-ckpt"]  # no download step: both inputs stream
    assert res["streamed"] == {
        "cutegpt-13b-base": "hf://XuYipei/kw-cutegpt-13b-base",
        "cutegpt-13b-ift-lora": "hf://Abbey4799/kw-cutegpt-13b-ift-lora",
    }
    assert res["removed"] == [] and sorted(p.name for p in work.iterdir()) == ["llmkit-recipe.json", "model.ckpt"]
    direct = tmp_path / "direct"
    assert run_cli("merge-lora", "--base", base, "--lora", lora_work / "cute", "-o", direct).exit_code == 0
    assert run_cli("verify", "--tensors", work / "model.ckpt", direct).exit_code == 0
