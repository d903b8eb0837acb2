"""Errors name the file they are about: a head count that cannot permute the rotary rows names the config.json
it comes from (before any output), a tensor with no place in Meta's layout names the file holding it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from common import only_error_line


def with_heads(src: Path, dst: Path, heads: int) -> Path:
    """A copy of an HF tiny model whose config.json says ``heads`` attention (and key/value) heads."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["num_attention_heads"] = cfg["num_key_value_heads"] = heads
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("command", [["to-meta"], ["to-ckpt", "--rotary", "meta"]], ids=["to-meta", "to-ckpt"])
def test_a_head_count_that_cannot_permute_the_rotary_rows_names_its_config_json(
    run_cli, tmp_path, tiny_factory, command
):
    hidden = json.loads((tiny_factory("safetensors").path / "config.json").read_text())["hidden_size"]
    assert hidden % 6, "3 heads must not split the rows into rotary pairs here"
    model = with_heads(tiny_factory("safetensors").path, tmp_path / "model", 3)
    out = tmp_path / ("out.ckpt" if command[0] == "to-ckpt" else "out")
    r = run_cli(command[0], model, "-o", out, *command[1:])
    assert r.exit_code == 2, r.stderr
    line = only_error_line(r.stderr)
    # the complete-model check meets the contradiction first (the tensors' shapes against config.json's
    # heads); the rotary check behind it names config.json too: either way the config is named
    assert line.startswith(f"error: {model / 'config.json'}: ") or (
        line.startswith(f"error: {model / 'model.safetensors'}: ") and "config.json" in line
    ), line
    assert "_proj.weight" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # refused before any output


def test_a_tensor_with_no_place_in_meta_layout_names_the_shard_holding_it(run_cli, tmp_path, tiny_factory):
    meta = tmp_path / "meta"
    shutil.copytree(tiny_factory("meta").path, meta)
    shard = meta / "consolidated.00.pth"
    state = torch.load(shard, weights_only=True)
    state["foo.weight"] = torch.zeros(3)
    torch.save(state, shard)
    r = run_cli("from-meta", meta, "-o", tmp_path / "out")
    assert r.exit_code == 2, r.stderr
    line = only_error_line(r.stderr)
    assert line.startswith(f"error: {shard}: ") and "foo.weight" in line, line
    assert not (tmp_path / "out").exists()
