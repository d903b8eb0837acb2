"""merge-lora checks: wrong inputs are refused before any output exists, with the file and the fix named."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from common import one_error_line
from safetensors.torch import save_file

from llmkit.errors import InputError, OutputExistsError
from llmkit.lora import MergePlan, merge_lora, plan_merge
from llmkit.tiny import tiny_model, write_tokenizer
from llmkit.tiny_lora import save_tiny_adapter, save_tiny_gpt2_adapter


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_llama_lora_after_alpaca_lora_is_refused_before_any_output(lora_work, tmp_path):
    with pytest.raises(InputError) as err:
        merge_lora(lora_work / "base", [lora_work / "alpaca", lora_work / "llama"], tmp_path / "out")
    text = str(err.value)
    assert str(lora_work / "llama") in text and "101" in text and "100" in text
    assert "Chinese-LLaMA(-Plus) LoRA (49953) first, then Chinese-Alpaca(-Plus) LoRA (49954)" in text
    assert not (tmp_path / "out").exists()


def test_mixed_up_tokenizer_is_named_with_the_fix(lora_work, tmp_path):
    # Alpaca-like weights (101 rows) beside the LLaMA-like tokenizer (100 tokens).
    folder = tmp_path / "alpaca-wrong-tokenizer"
    shutil.copytree(lora_work / "alpaca", folder)
    (folder / "added_tokens.json").unlink()
    write_tokenizer(folder, pad_token=False)
    with pytest.raises(InputError) as err:
        merge_lora(lora_work / "base", [folder], tmp_path / "out")
    assert err.value.path == str(folder)
    assert "embed_tokens/lm_head with 101 rows" in err.value.message and "100 tokens" in err.value.message
    assert "tokenizer files that came with this adapter" in err.value.hint
    assert not (tmp_path / "out").exists()


def test_mixed_up_49953_49954_tokenizers_name_the_chinese_alpaca_fix(lora_work, tmp_path):
    # An adapter with Chinese-Alpaca's 49954-row embeddings next to Chinese-LLaMA's 49953-token tokenizer.
    folder = tmp_path / "chinese-alpaca-lora"
    folder.mkdir()
    shutil.copy(lora_work / "alpaca" / "adapter_config.json", folder)
    rows = torch.zeros(49954, 64, dtype=torch.float16)
    save_file(
        {"base_model.model.model.embed_tokens.weight": rows, "base_model.model.lm_head.weight": rows.clone()},
        folder / "adapter_model.safetensors",
    )
    vocab = {f"piece{i}": i for i in range(49953)}
    (folder / "tokenizer.json").write_text(
        json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": []}, "added_tokens": []})
    )
    with pytest.raises(InputError) as err:
        merge_lora(lora_work / "base", [folder], tmp_path / "out")
    assert "49954 rows (the Chinese-Alpaca LoRA size)" in err.value.message
    assert "49953 tokens (the Chinese-LLaMA LoRA size)" in err.value.message
    assert "that came with the Chinese-Alpaca LoRA" in err.value.hint


def test_adapter_for_another_model_is_refused(lora_work, tmp_path):
    small = tiny_model(0, hidden=32, intermediate=96)  # same names, other shapes
    small.save_pretrained(tmp_path / "base32")
    with pytest.raises(InputError, match="belongs to another model"):
        merge_lora(tmp_path / "base32", [lora_work / "cute"], tmp_path / "out")
    save_tiny_gpt2_adapter(tmp_path / "gpt2-lora")  # names the LLaMA base does not have
    with pytest.raises(InputError, match="belongs to another model") as err:
        merge_lora(lora_work / "base", [tmp_path / "gpt2-lora"], tmp_path / "out")
    assert "transformer.h.0" in err.value.message
    assert not (tmp_path / "out").exists()


def test_config_rank_that_disagrees_with_the_weights_is_refused(lora_work, tmp_path):
    folder = tmp_path / "ad"
    shutil.copytree(lora_work / "cute", folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["r"] = 16
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="r=16"):
        merge_lora(lora_work / "base", [folder], tmp_path / "out")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"use_dora": True}, "DoRA"),
        ({"peft_type": "IA3"}, "IA3"),
        ({"trainable_token_indices": [3]}, "trainable_token_indices"),
    ],
)
def test_adapters_llmkit_cannot_merge_exactly_are_refused(lora_work, tmp_path, change, message):
    folder = tmp_path / "ad"
    shutil.copytree(lora_work / "cute", folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(InputError, match=message):
        merge_lora(lora_work / "base", [folder], tmp_path / "out")


def test_base_that_is_an_adapter_is_refused(lora_work, tmp_path):
    with pytest.raises(InputError, match="--base is a LoRA adapter folder"):
        merge_lora(lora_work / "cute", [lora_work / "llama"], tmp_path / "out")


def test_resized_model_with_a_tokenizer_of_another_size_is_refused_unless_tokenizer_given(lora_work, tmp_path):
    folder = tmp_path / "alpaca-no-tokenizer"
    shutil.copytree(lora_work / "alpaca", folder)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        (folder / name).unlink()
    with pytest.raises(InputError, match="101 embedding rows but the output tokenizer") as err:
        merge_lora(lora_work / "base", [folder], tmp_path / "out")
    assert "--tokenizer" in err.value.hint
    result = merge_lora(lora_work / "base", [folder], tmp_path / "out", tokenizer=lora_work / "alpaca")
    assert result.vocab_after == 101 and result.tokenizer_from == str(lora_work / "alpaca")
    with pytest.raises(InputError, match="tokenizer has 100 tokens but the merged model has 101"):
        merge_lora(lora_work / "base", [folder], tmp_path / "out2", tokenizer=lora_work / "llama")


def test_targeted_layers_without_weights_are_reported(lora_work, tmp_path):
    folder = tmp_path / "ad"
    shutil.copytree(lora_work / "cute", folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj", "v_proj", "k_proj"]
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    result = merge_lora(lora_work / "base", [folder], tmp_path / "out")
    assert any("2 layer(s) matched by target_modules have no LoRA weights" in w for w in result.warnings)


def test_dry_run_checks_everything_and_writes_nothing(lora_work, tmp_path):
    result = merge_lora(lora_work / "base", [lora_work / "llama", lora_work / "alpaca"], tmp_path / "out", dry_run=True)
    assert result.dry_run and result.files[0] == "model.safetensors" and result.vocab_after == 101
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError):
        merge_lora(lora_work / "base", [lora_work / "alpaca", lora_work / "llama"], tmp_path / "out", dry_run=True)


def test_existing_output_is_refused_without_force(lora_work, tmp_path):
    merge_lora(lora_work / "base", [lora_work / "cute"], tmp_path / "out")
    before = folder_digest(tmp_path / "out")
    with pytest.raises(OutputExistsError, match="--force"):
        merge_lora(lora_work / "base", [lora_work / "alpaca"], tmp_path / "out")
    assert folder_digest(tmp_path / "out") == before
    merge_lora(lora_work / "base", [lora_work / "alpaca"], tmp_path / "out", force=True)
    assert folder_digest(tmp_path / "out") != before


def test_output_inside_an_input_folder_is_refused(lora_work, tmp_path):
    with pytest.raises(InputError, match="output folder is an input folder"):
        merge_lora(lora_work / "base", [lora_work / "cute"], lora_work / "cute")


def test_inputs_are_never_modified(lora_work, tmp_path):
    before = {n: folder_digest(lora_work / n) for n in ("base", "llama", "alpaca")}
    merge_lora(lora_work / "base", [lora_work / "llama", lora_work / "alpaca"], tmp_path / "out", dtype="bf16")
    assert {n: folder_digest(lora_work / n) for n in ("base", "llama", "alpaca")} == before


def test_a_failed_merge_leaves_no_output(lora_work, tmp_path, monkeypatch):
    calls = []
    original = MergePlan.merged

    def failing(self, name):
        calls.append(name)
        if len(calls) == 5:
            raise RuntimeError("disk went away")
        return original(self, name)

    monkeypatch.setattr(MergePlan, "merged", failing)
    with pytest.raises(RuntimeError):
        merge_lora(lora_work / "base", [lora_work / "cute"], tmp_path / "out", shard_size=20_000)
    assert not (tmp_path / "out").exists()  # not even the folder the run created


def test_each_base_tensor_is_read_once_and_replaced_ones_never(lora_work, tmp_path):
    with plan_merge(lora_work / "base", [lora_work / "cute", lora_work / "llama", lora_work / "alpaca"]) as plan:
        reads: list[str] = []
        get = plan.base.get
        plan.base.get = lambda name: (reads.append(name), get(name))[1]  # type: ignore[method-assign]
        plan.run(tmp_path / "out")
        replaced = {"model.embed_tokens.weight", "lm_head.weight"}  # modules_to_save of llama and alpaca
        assert sorted(reads) == sorted(set(plan.base.keys()) - replaced)


def test_lora_layers_outside_target_modules_are_ignored_like_peft(lora_work, tmp_path):
    # weights for q/v but target_modules says q only: peft never builds the v layers, so their weights are unused
    save_tiny_adapter(tmp_path / "ad", target_modules=("q_proj", "v_proj"))
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    cfg["target_modules"] = ["q_proj"]
    (tmp_path / "ad" / "adapter_config.json").write_text(json.dumps(cfg))
    from llmkit.tiny_lora import peft_merged_state

    result = merge_lora(lora_work / "base", [tmp_path / "ad"], tmp_path / "out")
    assert result.adapters[0].lora_modules == 2 and any("ignored" in w for w in result.warnings)
    from llmkit.io import open_source

    ref = peft_merged_state(lora_work / "base", [tmp_path / "ad"])
    with open_source(tmp_path / "out") as src:
        assert all(torch.equal(t, ref[k]) for k, t in src)


def assert_one_error_line(res, path: Path) -> None:
    """Exit 2 and exactly one ``error:`` line on stderr that names ``path`` (no internal error, no traceback),
    nothing on stdout."""
    one_error_line(res, path)
    assert res.stdout == "", res.stdout


@pytest.mark.parametrize("text", ["[1, 2]", '"LORA"', "null"])
@pytest.mark.parametrize("which", ["adapter_config.json", "base config.json"])
def test_cli_config_that_is_json_but_not_an_object_exits_2_naming_the_file(lora_work, tmp_path, run_cli, which, text):
    base, adapter = tmp_path / "base", tmp_path / "ad"
    shutil.copytree(lora_work / "base", base)
    shutil.copytree(lora_work / "cute", adapter)
    bad = adapter / "adapter_config.json" if which == "adapter_config.json" else base / "config.json"
    bad.write_text(text)
    res = run_cli("merge-lora", "--base", base, "--lora", adapter, "-o", tmp_path / "out")
    assert_one_error_line(res, bad)
    assert "JSON object" in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "field,value",
    [
        ("rank_pattern", [1, 2]),
        ("alpha_pattern", "q_proj"),
        ("target_modules", 5),
        ("modules_to_save", "lm_head"),
        ("rank_pattern", {"q_proj": "four"}),
    ],
)
def test_cli_adapter_config_field_of_the_wrong_kind_exits_2_naming_the_file(lora_work, tmp_path, run_cli, field, value):
    adapter = tmp_path / "ad"
    shutil.copytree(lora_work / "cute", adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, field: value}))
    res = run_cli("merge-lora", "--base", lora_work / "base", "--lora", adapter, "-o", tmp_path / "out")
    assert_one_error_line(res, adapter / "adapter_config.json")
    assert field in res.stderr


def without_r(folder: Path) -> Path:
    cfg = json.loads((folder / "adapter_config.json").read_text())
    del cfg["r"]
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def test_cli_missing_r_says_so_and_is_refused_like_peft(lora_work, tmp_path, run_cli):
    # peft's LoraConfig defaults to r=8 and then refuses rank-4 weights (a size mismatch); llmkit refuses too,
    # without claiming the file said r=8.
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    adapter = without_r(save_tiny_adapter(tmp_path / "ad", r=4, lora_alpha=8))
    assert LoraConfig().r == 8
    with pytest.raises(RuntimeError, match="size mismatch"):
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lora_work / "base"), adapter)
    res = run_cli("merge-lora", "--base", lora_work / "base", "--lora", adapter, "-o", tmp_path / "out")
    assert_one_error_line(res, adapter / "adapter_config.json")
    assert "has no r" in res.stderr and "has 4 rows" in res.stderr and "says r=" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_missing_r_with_rank_8_weights_merges_like_peft_with_its_default(lora_work, tmp_path):
    from llmkit.io import open_source
    from llmkit.tiny_lora import peft_merged_state

    adapter = without_r(save_tiny_adapter(tmp_path / "ad", r=8, lora_alpha=32))
    result = merge_lora(lora_work / "base", [adapter], tmp_path / "out")
    assert result.adapters[0].r == 8 and result.adapters[0].scaling == 32 / 8
    ref = peft_merged_state(lora_work / "base", [adapter])
    with open_source(tmp_path / "out") as src:
        assert set(src.keys()) == set(ref) and all(torch.equal(t, ref[k]) for k, t in src)
