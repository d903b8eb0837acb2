"""The model registry and the lookup of the built-in tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmkit import registry
from llmkit.errors import InputError
from llmkit.registry import MODELS, builtin_tables, find_expected, get_model, get_table, parse_table

REPO = Path(__file__).resolve().parents[1]


def test_find_expected_lists_techgpt_decrypted_bin():
    assert ("techgpt-7b", "0d322cb6bde34f7086791ce12fbf2bdc") in find_expected("pytorch_model.bin")


def test_find_expected_lists_every_table_with_that_name():
    # ZhiXi's diff and its recovered base share shard names; both tables are returned.
    assert set(find_expected("pytorch_model-00006-of-00006.bin")) == {
        ("zhixi-13b-diff", "c92a59383e10e2c4c3688a82856f6cba"),
        ("zhixi-13b", "c7c5750106a5724de3f0cb7a7151723a"),
    }


def test_find_expected_uses_only_the_basename():
    assert find_expected("/data/zhixi-lora/adapter_model.bin") == [
        ("zhixi-13b-lora", "308f8424b1b6ac8dff343716dd78cde7")
    ]
    assert find_expected("config.json.e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.enc") == [
        ("techgpt-7b.enc", "6b2b545ff7bacaeec6297198b4b745dd")
    ]


def test_find_expected_unknown_name_or_algorithm_is_empty():
    assert find_expected("model.safetensors") == []
    assert find_expected("pytorch_model.bin", "sha256") == []


def test_every_model_table_reference_exists():
    tables = builtin_tables()
    for m in MODELS:
        for stage, name in m.tables.items():
            assert name in tables, (m.name, stage, name)


def test_every_table_belongs_to_a_model_or_to_the_chinese_llama_alpaca_sha256_list():
    # Chinese-LLaMA-Alpaca's SHA256.md lists models the registry has no entry for (33B, Plus, Pro, merged).
    used = {t for m in MODELS for t in m.tables.values()}
    listed = {n for n, t in builtin_tables().items() if "Chinese-LLaMA-Alpaca's SHA256.md" in t.source}
    assert used <= set(builtin_tables())
    assert used | listed == set(builtin_tables())


def test_registry_names_the_seed_repos():
    # SPEC.md section 7.
    repos = {m.repo_id for m in MODELS}
    for r in (
        "neukg/TechGPT-7B",
        "neukg/TechGPT-2.0-alpaca-hf",
        "neukg/TechGPT-2.0-atom-hf",
        "zjunlp/zhixi-13b-diff",
        "zjunlp/zhixi-13b-diff-fp16",
        "zjunlp/zhixi-13b-lora",
        "XuYipei/kw-cutegpt-13b-base",
        "XuYipei/kw-cutegpt-13b-ift",
        "Abbey4799/kw-cutegpt-13b-ift-lora",
        "ziqingyang/chinese-llama-lora-7b",
        "ziqingyang/chinese-llama-lora-13b",
        "ziqingyang/chinese-alpaca-lora-7b",
        "ziqingyang/chinese-alpaca-lora-13b",
    ):
        assert r in repos


def test_chinese_llama_alpaca_vocab_sizes():
    assert get_model("ziqingyang/chinese-llama-lora-7b").vocab_size == 49953
    assert get_model("chinese-alpaca-lora-13b").vocab_size == 49954


def test_table_for_stage():
    assert registry.table_for("techgpt-7b", "decrypted").name == "techgpt-7b"
    assert registry.table_for("zhixi-13b-diff-fp16", "recovered").name == "zhixi-13b-fp16"
    assert registry.table_for("cutegpt-13b-base", "download") is None


def test_unknown_model_and_table_fail_with_a_hint():
    with pytest.raises(InputError, match="unknown model"):
        get_model("gpt-5")
    with pytest.raises(InputError) as e:
        get_table("no-such-table")
    assert "zhixi-13b" in (e.value.hint or "")


def test_tables_are_found_inside_the_package_in_a_clone():
    assert registry.checksums_dir() == REPO / "llmkit" / "checksums"


def test_tables_are_found_from_a_clean_process_outside_the_repo(tmp_path):
    code = "from llmkit.registry import find_expected; print(find_expected('adapter_model.bin'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "308f8424b1b6ac8dff343716dd78cde7" in out.stdout


def test_wheel_ships_every_table():
    # pyproject's package-data globs must cover every table (tests/test_hardening_packaging.py builds the wheel).
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = cfg["tool"]["setuptools"]["package-data"]["llmkit"]
    shipped = {p.name for g in globs for p in (REPO / "llmkit").glob(g) if p.parent.name == "checksums"}
    tables = REPO / "llmkit" / "checksums"
    assert shipped and shipped == {p.name for p in tables.iterdir() if p.suffix in (".md5", ".sha256")}


def test_llmkit_checksums_env_overrides(tmp_path, monkeypatch):
    (tmp_path / "mine.md5").write_text("# local\n" + "a" * 32 + "  weights.bin\n")
    monkeypatch.setenv("LLMKIT_CHECKSUMS", str(tmp_path))
    assert find_expected("weights.bin") == [("mine", "a" * 32)]


def test_parse_table_accepts_binary_mode_and_bsd_lines():
    t = parse_table(
        "d41d8cd98f00b204e9800998ecf8427e *a.bin\nMD5 (b c.bin) = D41D8CD98F00B204E9800998ECF8427E\n", name="x"
    )
    assert [(e.path, e.digest) for e in t.entries] == [
        ("a.bin", "d41d8cd98f00b204e9800998ecf8427e"),
        ("b c.bin", "d41d8cd98f00b204e9800998ecf8427e"),
    ]


def test_parse_table_rejects_bad_lines_naming_the_line():
    with pytest.raises(InputError, match="line 2"):
        parse_table("d41d8cd98f00b204e9800998ecf8427e  a\nnot a checksum line\n", name="x")
    with pytest.raises(InputError, match="mixes"):
        parse_table("d41d8cd98f00b204e9800998ecf8427e  a\n" + "0" * 64 + "  b\n", name="x")


def test_models_command_json_lists_models_and_tables(run_cli):
    result = run_cli("models", "--json")
    assert result.exit_code == 0
    data = result.json()
    names = {m["name"] for m in data["models"]}
    assert {"techgpt-7b", "zhixi-13b-diff", "zhixi-13b-lora", "llama-7b-meta"} <= names
    techgpt = next(m for m in data["models"] if m["name"] == "techgpt-7b")
    assert techgpt["repo_id"] == "neukg/TechGPT-7B" and techgpt["tables"]["decrypted"] == "techgpt-7b"
    table = next(t for t in data["tables"] if t["name"] == "zhixi-13b-lora")
    assert table["files"] == [{"path": "adapter_model.bin", "digest": "308f8424b1b6ac8dff343716dd78cde7"}]


def test_models_command_text_lists_every_model(run_cli):
    result = run_cli("models", "--files")
    assert result.exit_code == 0
    for m in MODELS:
        assert m.name in result.stdout
    assert "0d322cb6bde34f7086791ce12fbf2bdc  ./pytorch_model.bin" in result.stdout
