"""``llmkit recipe run`` never deletes or overwrites what the user already had in the work folder.

A recipe deletes only the intermediates its own manifest records as created by it in this work folder, and
an existing output it did not create is refused before the first step (``--force`` replaces it). A download
step may still reuse verified files that are already there (that is resume). Against the local test hub
(CuteGPT's base and LoRA stream from it: no download step; TechGPT-1.0 downloads, as decrypt reads files).
"""

# ruff: noqa: F811  (fixtures imported from hub_server / test_download are taken as test arguments)
from __future__ import annotations

import json
import shutil

from common import one_error_line
from hub_server import hub  # noqa: F401
from test_download import hf_env  # noqa: F401
from test_recipes import files_of, techgpt  # noqa: F401 (techgpt: the fixture)

from llmkit.recipes.manifest import MANIFEST


def _cutegpt_hub(hub, tiny_factory, lora_work):
    base = tiny_factory("safetensors").path
    hub.add_repo("XuYipei/kw-cutegpt-13b-base", files_of(base))
    hub.add_repo("Abbey4799/kw-cutegpt-13b-ift-lora", files_of(lora_work / "cute"))
    return base


def test_a_folder_the_user_already_had_is_not_deleted_as_an_intermediate(run_cli, techgpt, hub, tmp_path):
    """TechGPT-1.0's download stays a step (verify and decrypt read it from disk): the user's copy is reused."""
    _plain, key = techgpt
    work = tmp_path / "work"
    mine = work / "techgpt-7b-enc"
    shutil.copytree(tmp_path / "enc", mine)  # the user downloaded the .enc files earlier, and keeps notes beside it
    (mine / "notes.txt").write_text("my notes")
    before = files_of(mine)
    args = ("recipe", "run", "techgpt-1.0", "--workdir", work, "--key", key, "--endpoint", hub.url, "--json")
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    res = r.json()
    assert files_of(mine) == before  # resumed (verified files reused), and kept
    assert res["removed"] == [] and res["streamed"] == {}
    assert [n.get("text", "") for n in res["notices"] if str(mine) in n.get("text", "")], res["notices"]
    manifest = json.loads((work / MANIFEST).read_text())
    assert str(mine) not in manifest["created"] and str(work / "techgpt-7b") in manifest["created"]
    # A re-run does not delete it either.
    again = run_cli(*args)
    assert again.exit_code == 0, again.stderr
    assert files_of(mine) == before and again.json()["removed"] == []


def test_an_existing_output_the_recipe_did_not_make_is_refused_before_any_step(
    run_cli, tiny_factory, lora_work, hub, hf_env, tmp_path
):
    base = _cutegpt_hub(hub, tiny_factory, lora_work)
    work = tmp_path / "work"
    (work / "cutegpt-13b-ift").mkdir(parents=True)
    theirs = work / "cutegpt-13b-ift" / "model.safetensors"
    theirs.write_bytes(b"the user's own model")
    r = run_cli("recipe", "run", "cutegpt-13b", "--workdir", work, "--endpoint", hub.url)
    line = one_error_line(r, work / "cutegpt-13b-ift", "--force")
    assert "merge-lora" in line
    assert theirs.read_bytes() == b"the user's own model"
    assert not hub.log and not (work / "cutegpt-13b-base").exists()  # refused before the first step
    # --dry-run says the same before anything.
    assert run_cli("recipe", "run", "cutegpt-13b", "--workdir", work, "--endpoint", hub.url, "--dry-run").exit_code == 2
    # --force replaces it (and, as it was there before, the recipe still does not count it as its own).
    r = run_cli("recipe", "run", "cutegpt-13b", "--workdir", work, "--endpoint", hub.url, "--force", "--json")
    assert r.exit_code == 0, r.stderr
    direct = tmp_path / "direct"
    assert run_cli("merge-lora", "--base", base, "--lora", lora_work / "cute", "-o", direct).exit_code == 0
    assert run_cli("verify", "--tensors", work / "cutegpt-13b-ift", direct).exit_code == 0
    assert str(work / "cutegpt-13b-ift") not in json.loads((work / MANIFEST).read_text())["created"]


def test_a_stale_output_of_the_recipe_itself_is_replaced_without_force(
    run_cli, tiny_factory, lora_work, hub, hf_env, tmp_path
):
    base = _cutegpt_hub(hub, tiny_factory, lora_work)
    work = tmp_path / "work"
    args = ("recipe", "run", "cutegpt-13b", "--workdir", work, "--endpoint", hub.url, "--json")
    assert run_cli(*args).exit_code == 0
    (work / "cutegpt-13b-ift" / "config.json").write_text("{}")  # the recipe's own output went stale
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    assert r.json()["removed"] == []  # the base and the LoRA stream from the hub: nothing was downloaded
    direct = tmp_path / "direct"
    assert run_cli("merge-lora", "--base", base, "--lora", lora_work / "cute", "-o", direct).exit_code == 0
    assert run_cli("verify", "--tensors", work / "cutegpt-13b-ift", direct).exit_code == 0
