"""An incomplete model never gives an incomplete output with exit 0 (issue #28, items 1-3).

Every job that reads a model knows which weights a complete LLaMA of its config has (config.json,
params.json, or the layer count its names show): a missing weight, one held twice, or an extra tensor whose
name is a damaged copy of an expected one is one error line naming the tensor and the file, before any
output. The damaged inputs are made here with torch, safetensors and plain byte edits (never llmkit's
writers); what a complete LLaMA holds is written out below from transformers' LlamaForCausalLM.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from common import one_error_line, tree
from safetensors.torch import load_file, save_file

IDX = "model.safetensors.index.json"


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def without_lm_head_in_the_index(tiny_factory, dst: Path) -> Path:
    """A sharded model whose index omits lm_head.weight (its shard stays in the folder, named by nothing)."""
    folder = copy(tiny_factory("safetensors-sharded").path, dst)
    index = json.loads((folder / IDX).read_text())
    shard = index["weight_map"].pop("lm_head.weight")
    (folder / IDX).write_text(json.dumps(index))
    rest = {k: v for k, v in load_file(folder / shard).items() if k != "lm_head.weight"}
    if rest:
        save_file(rest, folder / shard, metadata={"format": "pt"})
    else:
        (folder / shard).unlink()
    return folder


def test_every_tiny_model_has_exactly_the_weights_written_out_here(tiny_factory):
    """The reference list: transformers' LlamaForCausalLM state dict (untied), independent of llmkit."""
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(2):
        names |= {
            f"model.layers.{i}.{m}.weight"
            for m in (
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
                "input_layernorm",
                "post_attention_layernorm",
            )
        }
    assert set(tiny_factory("safetensors").state) == names


# ------------------------------------------------------------------ the reported cases


def test_from_meta_refuses_a_consolidated_pth_missing_a_norm_before_any_output(tmp_path, run_cli, tiny_factory):
    meta = copy(tiny_factory("meta").path, tmp_path / "meta")
    state = torch.load(meta / "consolidated.00.pth", weights_only=True)
    del state["layers.1.ffn_norm.weight"]
    torch.save(state, meta / "consolidated.00.pth")
    before = tree(meta)
    r = run_cli("from-meta", meta, "-o", tmp_path / "out")
    one_error_line(r, meta / "consolidated.00.pth", "layers.1.ffn_norm.weight", "lacks")
    assert not (tmp_path / "out").exists() and tree(meta) == before


@pytest.mark.parametrize("command", ["merge-lora", "to-ckpt", "to-meta", "checksum", "verify", "recover", "make-diff"])
def test_an_index_that_omits_lm_head_is_refused_by_every_command(tmp_path, run_cli, tiny_factory, lora_work, command):
    model = without_lm_head_in_the_index(tiny_factory, tmp_path / "model")
    out = tmp_path / "out"
    args = {
        "merge-lora": ["merge-lora", "--base", model, "--lora", lora_work / "cute", "-o", out, "--json"],
        "to-ckpt": ["to-ckpt", model, "-o", tmp_path / "out.ckpt", "--json"],
        "to-meta": ["to-meta", model, "-o", out, "--json"],
        "checksum": ["checksum", "--tensors", model],
        "verify": ["verify", "--tensors", model, model],  # two equally incomplete copies: not a match
        "recover": ["recover", "--base", model, "--diff", model, "-o", out],  # the pairwise checks pass
        "make-diff": ["make-diff", "--base", model, "--target", model, "-o", out],
    }[command]
    r = run_cli(*args)
    line = one_error_line(r, model / IDX, "lm_head.weight")
    assert "lacks 1 tensor" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_from_ckpt_refuses_a_flipped_byte_in_a_tensor_name(tmp_path, run_cli, tiny_factory):
    m = tiny_factory("safetensors")
    assert run_cli("to-ckpt", m.path, "-o", tmp_path / "m.ckpt").exit_code == 0
    data = bytearray((tmp_path / "m.ckpt").read_bytes())
    at = data.index(b"model.layers.1.attention.wq.weight") + len(b"model.layers.1.attention.w")
    data[at] ^= 0x01  # wq -> wp: the record is intact, only its name is damaged
    (tmp_path / "flip.ckpt").write_bytes(bytes(data))
    r = run_cli("from-ckpt", tmp_path / "flip.ckpt", "-o", tmp_path / "out", "--config", m.path)
    line = one_error_line(
        r, tmp_path / "flip.ckpt", "model.layers.1.attention.wq.weight", "model.layers.1.attention.wp.weight"
    )
    assert "training state" not in line and "damaged" in line
    assert not (tmp_path / "out").exists()
    r = run_cli("checksum", "--tensors", tmp_path / "flip.ckpt")
    one_error_line(r, tmp_path / "flip.ckpt", "model.layers.1.attention.wp.weight")


# ------------------------------------------------------------------ typos, duplicates, extra layers


def test_a_renamed_weight_is_named_with_the_one_it_stands_for(tmp_path, run_cli, tiny_factory):
    folder = copy(tiny_factory("safetensors").path, tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    state["model.layers.0.mlp.up_prj.weight"] = state.pop("model.layers.0.mlp.up_proj.weight")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    for args in (
        ["to-ckpt", folder, "-o", tmp_path / "o.ckpt"],
        ["to-meta", folder, "-o", tmp_path / "o"],
        ["checksum", "--tensors", folder],
    ):
        line = one_error_line(
            run_cli(*args),
            folder / "model.safetensors",
            "model.layers.0.mlp.up_prj.weight",
            "model.layers.0.mlp.up_proj.weight",
        )
        assert "lacks" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_damaged_copy_beside_the_weight_is_refused_too(tmp_path, run_cli, tiny_factory):
    folder = copy(tiny_factory("safetensors").path, tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    state["model.layers.1.self_attn.k_proj.weighT"] = state["model.layers.1.self_attn.k_proj.weight"].clone()
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    one_error_line(
        run_cli("to-ckpt", folder, "-o", tmp_path / "o.ckpt"),
        "model.layers.1.self_attn.k_proj.weighT",
        "model.layers.1.self_attn.k_proj.weight",
    )
    assert not (tmp_path / "o.ckpt").exists()


def test_a_weight_under_two_namings_is_refused_as_held_twice(tmp_path, run_cli, tiny_factory, lora_work):
    folder = copy(tiny_factory("safetensors").path, tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    state["model.norm_out.weight"] = state["model.norm.weight"].clone()  # MindFormers' name of model.norm
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    r = run_cli("merge-lora", "--base", folder, "--lora", lora_work / "cute", "-o", tmp_path / "out")
    line = one_error_line(r, folder / "model.safetensors", "model.norm.weight", "model.norm_out.weight")
    assert "twice" in line and not (tmp_path / "out").exists()


def test_a_tensor_in_two_shards_is_refused_naming_both(tmp_path, run_cli, tiny_factory):
    folder = copy(tiny_factory("safetensors-sharded").path, tmp_path / "m")
    index = json.loads((folder / IDX).read_text())
    home, other = index["weight_map"]["lm_head.weight"], index["weight_map"]["model.norm.weight"]
    assert home != other
    state = load_file(folder / other)
    state["lm_head.weight"] = load_file(folder / home)["lm_head.weight"]
    save_file(state, folder / other, metadata={"format": "pt"})
    for args in (["checksum", "--tensors", folder], ["to-ckpt", folder, "-o", tmp_path / "o.ckpt"]):
        line = one_error_line(run_cli(*args), folder / other, "lm_head.weight", home)
        assert "two shards" in line


def test_layers_the_config_does_not_describe_are_refused(tmp_path, run_cli, tiny_factory):
    folder = copy(tiny_factory("safetensors").path, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 1}))
    line = one_error_line(
        run_cli("to-meta", folder, "-o", tmp_path / "o"), folder / "model.safetensors", "model.layers.1."
    )
    assert "num_hidden_layers=1" in line
    (folder / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    line = one_error_line(
        run_cli("to-meta", folder, "-o", tmp_path / "o"), folder / "model.safetensors", "model.layers.2."
    )
    assert "lacks 9 tensor(s)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_config_that_disagrees_with_a_shape_is_refused(tmp_path, run_cli, tiny_factory):
    folder = copy(tiny_factory("safetensors").path, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 172}))
    one_error_line(
        run_cli("to-ckpt", folder, "-o", tmp_path / "o.ckpt"),
        folder / "model.safetensors",
        "model.layers.0.mlp.gate_proj.weight",
        "[176, 64]",
        "[172, 64]",
    )


def test_recover_refuses_a_base_and_diff_that_lack_the_same_weight(tmp_path, run_cli, tiny_factory):
    """The pairwise checks pass (same names on both sides); each side is still not a complete LLaMA."""
    pair = []
    for role, seed in (("base", 0), ("diff", 1)):
        folder = copy(tiny_factory("safetensors", seed=seed).path, tmp_path / role)
        state = load_file(folder / "model.safetensors")
        del state["model.layers.0.input_layernorm.weight"]
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        pair.append(folder)
    r = run_cli("recover", "--base", pair[0], "--diff", pair[1], "-o", tmp_path / "out")
    one_error_line(r, "model.layers.0.input_layernorm.weight", "lacks")
    assert not (tmp_path / "out").exists()


def test_inspect_describes_an_incomplete_model_and_exits_1(tmp_path, run_cli, tiny_factory):
    model = without_lm_head_in_the_index(tiny_factory, tmp_path / "model")
    r = run_cli("inspect", model, "--json", "--no-tensors")
    assert r.exit_code == 1
    data = r.json()
    assert data["ok"] is False and data["tensor_count"] == 20 and data["exit_code"] == 1
    check = next(c for c in data["checks"] if c["name"] == "complete")
    assert check["status"] == "failed" and "lm_head.weight" in check["detail"]
    assert "incomplete model" in r.stderr and "lm_head.weight" in r.stderr
    r = run_cli("inspect", model)
    assert r.exit_code == 1 and "model.layers.1.self_attn.q_proj.weight" in r.stdout  # still described


# ------------------------------------------------------------------ what keeps working


@pytest.mark.parametrize("layout", ["safetensors", "safetensors-sharded", "bin", "bin-sharded", "meta", "meta-2shards"])
def test_complete_tiny_models_in_every_layout_still_pass(tmp_path, run_cli, tiny_factory, layout):
    m = tiny_factory(layout)
    r = run_cli("inspect", m.path, "--json", "--no-tensors")
    assert r.exit_code == 0, r.stderr
    assert [c["status"] for c in r.json()["checks"] if c["name"] == "complete"] == ["ok"]
    assert run_cli("checksum", "--tensors", m.path).exit_code == 0
    assert run_cli("to-ckpt", m.path, "-o", tmp_path / "m.ckpt").exit_code == 0
    r = run_cli(
        "from-ckpt",
        tmp_path / "m.ckpt",
        "-o",
        tmp_path / "back",
        "--config",
        tiny_factory("safetensors").path,
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert set(back) == set(m.state) and all(torch.equal(back[k], v) for k, v in m.state.items())
    assert run_cli("verify", "--tensors", tmp_path / "back", tiny_factory("safetensors").path).exit_code == 0
    if layout.startswith("meta"):
        assert run_cli("from-meta", m.path, "-o", tmp_path / "hf").exit_code == 0
    else:
        assert run_cli("to-meta", m.path, "-o", tmp_path / "meta").exit_code == 0


def test_a_tied_lm_head_is_complete_only_where_the_config_says_so(tmp_path, run_cli, tiny_factory):
    folder = copy(tiny_factory("safetensors").path, tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    assert run_cli("checksum", "--tensors", folder).exit_code == 0
    assert run_cli("to-ckpt", folder, "-o", tmp_path / "t.ckpt").exit_code == 0
    (folder / "config.json").unlink()  # nothing says it is tied any more
    line = one_error_line(run_cli("checksum", "--tensors", folder), folder / "model.safetensors", "lm_head.weight")
    assert "tie_word_embeddings" in line


def test_models_that_are_not_a_llama_and_parts_of_one_are_not_judged(tmp_path, run_cli, tiny_factory, lora_work):
    other = tmp_path / "other"
    other.mkdir()
    save_file({"big": torch.arange(6.0), "small": torch.zeros(2)}, other / "model.safetensors")
    mistral = copy(tiny_factory("safetensors").path, tmp_path / "mistral")  # the config names another model
    state = load_file(mistral / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, mistral / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((mistral / "config.json").read_text())
    (mistral / "config.json").write_text(
        json.dumps({**cfg, "model_type": "mistral", "architectures": ["MistralForCausalLM"]})
    )
    sharded = tiny_factory("safetensors-sharded").path
    one_shard = sorted(sharded.glob("model-*.safetensors"))[0]  # a part of a model, on its own
    for path in (other, mistral, one_shard, lora_work / "cute"):
        r = run_cli("checksum", "--tensors", path)
        assert r.exit_code == 0, (path, r.stderr)
        assert run_cli("inspect", path).exit_code == 0
