"""`llmkit inspect`: format, tensors, counts, architecture, vocab, adapter settings."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from llmkit.summary import LLAMA_SIZES, guess_architecture, summarize


@pytest.mark.parametrize("layout", ["safetensors", "safetensors-sharded", "bin", "bin-sharded", "meta", "meta-2shards"])
def test_inspect_json_on_every_layout(run_cli, tiny_factory, layout):
    model = tiny_factory(layout)
    r = run_cli("inspect", model.path, "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)  # stdout holds the JSON and nothing else
    assert data["layout"] == ("meta-pth" if layout.startswith("meta") else layout)
    assert data["kind"] == "model"
    assert data["parameters"] == sum(t.numel() for t in model.state.values())
    assert data["total_bytes"] == sum(t.numel() * t.element_size() for t in model.state.values())
    assert data["tensor_count"] == len(model.state) == len(data["tensors"])
    assert data["vocab_size"] == 100 and data["hidden_size"] == 64 and data["num_layers"] == 2
    assert data["dtypes"] == {"F32": len(model.state)}


def test_inspect_human_output_lists_tensors(run_cli, tiny_factory):
    model = tiny_factory("safetensors")
    r = run_cli("inspect", model.path)
    assert r.exit_code == 0
    assert re.search(r"^parameters\s+113,472$", r.stdout, re.M)
    assert "model.layers.1.mlp.down_proj.weight" in r.stdout and "64x176" in r.stdout


def test_inspect_fp16_counts_bytes(tiny_factory):
    model = tiny_factory("safetensors", dtype=torch.float16)
    s = summarize(model.path)
    assert s.dtypes == {"F16": 21} and s.total_bytes == 2 * s.parameters


@pytest.mark.parametrize("hidden,name", sorted(LLAMA_SIZES.items()))
def test_architecture_guess_from_hidden_size(hidden, name):
    assert guess_architecture(hidden) == name
    assert {4096: "7B", 5120: "13B", 6656: "33B", 8192: "65B"}[hidden] in name


def test_inspect_adapter_reports_lora_settings(run_cli, tmp_path):
    from peft import LoraConfig, get_peft_model

    from llmkit.tiny import tiny_model

    model = get_peft_model(
        tiny_model(0), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"])
    )
    model.save_pretrained(tmp_path / "adapter")
    r = run_cli("inspect", tmp_path / "adapter", "--json")
    assert r.exit_code == 0, r.stderr
    data = r.json()
    assert data["kind"] == "adapter"
    a = data["adapter"]
    assert (a["r"], a["lora_alpha"], a["target_modules"]) == (4, 8.0, ["q_proj", "v_proj"])
    assert a["modules_to_save"] == ["lm_head"]
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert a["fan_in_fan_out"] == cfg["fan_in_fan_out"] and a["use_rslora"] == cfg["use_rslora"]
    human = run_cli("inspect", tmp_path / "adapter", "--no-tensors")
    assert "lora r" in human.stdout and "q_proj, v_proj" in human.stdout


def test_inspect_refuses_malicious_pickle_with_one_line(run_cli, tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"w": Evil()}, tmp_path / "pytorch_model.bin")
    r = run_cli("inspect", tmp_path)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith("error: ") and "refused" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "ran").exists()


def test_vocab_mismatch_between_config_and_embedding_is_warned(run_cli, tiny_factory, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_factory("safetensors").path, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vocab_size"] = 32000
    (folder / "config.json").write_text(json.dumps(cfg))
    r = run_cli("inspect", folder, "--json")
    assert r.exit_code == 0 and r.json()["vocab_size"] == 100
    assert "vocab_size 32000" in r.stderr
