"""``verify --tensors A B`` on two folders: the verdict line, the exit code and the JSON agree when the
tensors are identical but a side file (tokenizer config) differs: the line says both, exit 1."""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture
def pair(tiny_factory, tmp_path):
    src = tiny_factory("safetensors").path
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(src, a)
    shutil.copytree(src, b)
    return a, b


def test_identical_tensors_with_a_differing_tokenizer_config_say_both_and_exit_1(pair, run_cli):
    a, b = pair
    cfg = json.loads((b / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 4096
    (b / "tokenizer_config.json").write_text(json.dumps(cfg))
    r = run_cli("verify", "--tensors", a, b)
    assert r.exit_code == 1
    verdict = r.stdout.splitlines()[0]
    assert verdict.startswith("tensors identical, other files DIFFER") and "tokenizer_config.json" in verdict
    data = run_cli("verify", "--tensors", a, b, "--json").json()
    assert (data["ok"], data["identical"], data["files_identical"]) == (False, True, False)
    assert data["error"].startswith("tensors identical, but 1 of ") and "tokenizer_config.json" in data["error"]


def test_identical_folders_print_tensors_identical_and_exit_0(pair, run_cli):
    a, b = pair
    r = run_cli("verify", "--tensors", a, b)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith("tensors identical: ")
    data = run_cli("verify", "--tensors", a, b, "--json").json()
    assert (data["ok"], data["identical"], data["files_identical"]) == (True, True, True)
