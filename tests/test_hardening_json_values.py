"""Small JSON files with values of the wrong type or non-finite numbers: one line naming the file and the
field, exit 2; never exit 3, and never a merge that counts a damaged tokenizer as if it were whole.

Python's ``json`` module reads ``NaN``, ``Infinity`` and ``1e400`` (as infinity) although JSON has no such
numbers; transformers would then fail far from the cause, or a size would be "infinite". Adapter tokenizer
files (``added_tokens.json``, ``special_tokens_map.json``, ``tokenizer_config.json``) with ids that are not
integers or entries of the wrong type used to crash the merge (exit 3) or be counted silently.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from common import one_error_line

from llmkit.errors import InputError
from llmkit.io.core.jsonfile import read_json

# ------------------------------------------------------------------ adapter tokenizer files

TOKENIZER_VARIANTS = {  # name: (file, its text, the field the message must name)
    "added-string-id": ("added_tokens.json", '{"[PAD]": "100"}', "[PAD]"),
    "added-float-id": ("added_tokens.json", '{"[PAD]": 100.5}', "[PAD]"),
    "added-negative-id": ("added_tokens.json", '{"[PAD]": -1}', "[PAD]"),
    "added-bool-id": ("added_tokens.json", '{"[PAD]": true}', "[PAD]"),
    "added-duplicate-id": ("added_tokens.json", '{"[PAD]": 100, "[X]": 100}', "both have id 100"),
    "added-list": ("added_tokens.json", '["[PAD]"]', "JSON object"),
    "special-token-list": ("special_tokens_map.json", '{"pad_token": ["[PAD]"]}', "pad_token"),
    "special-token-number": ("special_tokens_map.json", '{"pad_token": 5}', "pad_token"),
    "special-additional-string": (
        "special_tokens_map.json",
        '{"additional_special_tokens": "[X]"}',
        "additional_special_tokens",
    ),
    "config-decoder-key": (
        "tokenizer_config.json",
        '{"added_tokens_decoder": {"x": {"content": "[PAD]"}}}',
        "added_tokens_decoder",
    ),
    "config-decoder-list": ("tokenizer_config.json", '{"added_tokens_decoder": ["[PAD]"]}', "added_tokens_decoder"),
    "config-decoder-value": ("tokenizer_config.json", '{"added_tokens_decoder": {"100": 7}}', "added_tokens_decoder"),
    "config-additional-string": (
        "tokenizer_config.json",
        '{"additional_special_tokens": "[PAD]"}',
        "additional_special_tokens",
    ),
    "config-bos-object": ("tokenizer_config.json", '{"bos_token": {"text": "<s>"}}', "bos_token"),
}


@pytest.mark.parametrize("variant", list(TOKENIZER_VARIANTS))
def test_an_adapter_tokenizer_file_of_the_wrong_type_is_one_line_naming_file_and_field(
    tmp_path, run_cli, lora_work, variant
):
    name, text, field = TOKENIZER_VARIANTS[variant]
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_work / "alpaca", adapter)  # a Chinese-Alpaca-like adapter: 101 rows, [PAD] = 100
    (adapter / name).write_text(text)
    out = tmp_path / "out"
    r = run_cli("merge-lora", "--base", lora_work / "base", "--lora", adapter, "-o", out)
    line = one_error_line(r, adapter / name)
    assert field in line, line
    assert not out.exists()


def test_the_untouched_adapter_tokenizer_still_merges(tmp_path, run_cli, lora_work):
    r = run_cli(
        "merge-lora", "--base", lora_work / "base", "--lora", lora_work / "alpaca", "-o", tmp_path / "out", "--quiet"
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads((tmp_path / "out" / "added_tokens.json").read_text()) == {"[PAD]": 100}


# ------------------------------------------------------------------ non-finite numbers


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e400", "-1e999"])
def test_read_json_refuses_non_finite_numbers_naming_the_file_and_key(tmp_path, literal):
    p = tmp_path / "config.json"
    p.write_text(f'{{"model_type": "llama", "rope_scaling": {{"factor": {literal}}}, "hidden_size": 64}}')
    with pytest.raises(InputError) as err:
        read_json(p)
    assert err.value.path == str(p)
    assert f"factor is {literal}" in err.value.message and "finite" in err.value.message
    (tmp_path / "list.json").write_text(f'{{"sizes": [1, 2, {literal}]}}')
    with pytest.raises(InputError, match="sizes is"):
        read_json(tmp_path / "list.json")


def test_read_json_keeps_finite_numbers_exactly(tmp_path):
    p = tmp_path / "config.json"
    p.write_text('{"rms_norm_eps": 1e-06, "rope_theta": 10000.0, "big": 1e308, "n": 12345678901234567890}')
    assert read_json(p) == {"rms_norm_eps": 1e-06, "rope_theta": 10000.0, "big": 1e308, "n": 12345678901234567890}


def _with_config(src: Path, dst: Path, file: str, key: str, literal: str) -> Path:
    shutil.copytree(src, dst)
    text = (dst / file).read_text()
    text, n = re.subn(rf'("{key}":\s*)[^,}}\n]+', rf"\g<1>{literal}", text)
    assert n == 1, text
    (dst / file).write_text(text)
    return dst


HF_COMMANDS = {
    "inspect": lambda m, o, w: ["inspect", m],
    "to-meta": lambda m, o, w: ["to-meta", m, "-o", o],
    "recover": lambda m, o, w: ["recover", "--base", w / "base", "--diff", m, "-o", o],
    "merge-lora": lambda m, o, w: ["merge-lora", "--base", m, "--lora", w / "cute", "-o", o],
}


@pytest.mark.parametrize("command", list(HF_COMMANDS))
@pytest.mark.parametrize("literal", ["Infinity", "NaN", "1e400"])
def test_a_config_json_with_a_non_finite_hidden_size_is_refused(tmp_path, run_cli, lora_work, command, literal):
    model = _with_config(lora_work / "base", tmp_path / "m", "config.json", "hidden_size", literal)
    out = tmp_path / "out"
    line = one_error_line(run_cli(*HF_COMMANDS[command](model, out, lora_work)), model / "config.json", "hidden_size")
    assert literal in line
    assert not out.exists()


@pytest.mark.parametrize(
    "key,literal",
    [
        ("rms_norm_eps", '"x"'),
        ("num_key_value_heads", '"x"'),
        ("num_hidden_layers", '"2"'),
        ("intermediate_size", "172.5"),
        ("hidden_size", "true"),
    ],
)
def test_to_meta_refuses_a_config_setting_of_the_wrong_type_naming_it(tmp_path, run_cli, lora_work, key, literal):
    if key == "num_key_value_heads":
        shutil.copytree(lora_work / "base", tmp_path / "m")
        cfg = json.loads((tmp_path / "m" / "config.json").read_text())
        (tmp_path / "m" / "config.json").write_text(json.dumps({**cfg, key: "x"}))
        model = tmp_path / "m"
    else:
        model = _with_config(lora_work / "base", tmp_path / "m", "config.json", key, literal)
    out = tmp_path / "out"
    one_error_line(run_cli("to-meta", model, "-o", out), model / "config.json", key)
    assert not out.exists()


META_COMMANDS = {
    "inspect": lambda m, o: ["inspect", m],
    "from-meta": lambda m, o: ["from-meta", m, "-o", o],
    "checksum --tensors": lambda m, o: ["checksum", "--tensors", m],
}


@pytest.mark.parametrize("command", list(META_COMMANDS))
@pytest.mark.parametrize("literal", ['"x"', "Infinity", "NaN", "1e400"])
def test_a_params_json_norm_eps_that_is_no_number_is_refused(tmp_path, run_cli, tiny_factory, command, literal):
    model = _with_config(tiny_factory("meta").path, tmp_path / "m", "params.json", "norm_eps", literal)
    out = tmp_path / "out"
    one_error_line(run_cli(*META_COMMANDS[command](model, out)), model / "params.json", "norm_eps")
    assert not out.exists()


def test_to_ckpt_rotary_meta_names_a_key_value_head_count_of_the_wrong_type(run_cli, tiny_factory, tmp_path):
    """``num_key_value_heads: "x"`` under ``--rotary meta`` is one line naming config.json, not exit 3."""
    import json as _json
    import shutil as _shutil

    model = tmp_path / "model"
    _shutil.copytree(tiny_factory("safetensors").path, model)
    cfg = _json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(_json.dumps({**cfg, "num_key_value_heads": "x"}))
    r = run_cli("to-ckpt", model, "-o", tmp_path / "out.ckpt", "--rotary", "meta")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "num_key_value_heads" in lines[0], r.stderr
    assert str(model / "config.json") in lines[0] and not (tmp_path / "out.ckpt").exists()
