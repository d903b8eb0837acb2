"""merge-lora and numbers that make a model wrong: non-finite or absurd settings, NaN/Inf in the weights.

A setting of ``adapter_config.json`` that no trained adapter has (NaN, Infinity, a string, 1e308, a rank
of 0 or 2.5, ...) is refused before any output with one line naming the file and the field. A merge that
puts NaN or Inf into a tensor where the base had finite values is refused and nothing is kept (peft's
``merge_and_unload(safe_merge=True)`` refuses the same adapters, and is the reference here). Non-finite
values the base already had (an unused row) are not a reason to refuse: they stay where they are, and
the rest of the merge equals peft's.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from common import one_error_line
from safetensors.torch import load_file, save_file

from llmkit.tiny_lora import peft_merged_state

ADAPTER_FILE = "adapter_model.safetensors"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_WEIGHT = "model.layers.0.self_attn.q_proj.weight"


def adapter_copy(src: Path, dst: Path, **config) -> Path:
    """A copy of the adapter ``src`` with ``config`` fields replaced (written as Python's json writes NaN)."""
    shutil.copytree(src, dst)
    cfg_path = dst / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(config)
    cfg_path.write_text(json.dumps(cfg))
    return dst


def edit_tensors(folder: Path, name: str, **changes: torch.Tensor) -> None:
    """Replace tensors of ``folder/name`` (a safetensors file)."""
    tensors = load_file(folder / name)
    for key, value in changes.items():
        assert key in tensors, key
        tensors[key] = value
    save_file(tensors, folder / name, metadata={"format": "pt"})


def merge_cli(run_cli, base: Path, adapter: Path, out: Path, *extra: str):
    return run_cli("merge-lora", "--base", base, "--lora", adapter, "-o", out, "--quiet", *extra)


def peft_refuses_safe_merge(base: Path, adapter: Path) -> bool:
    """Whether peft's own ``merge_and_unload(safe_merge=True)`` refuses this adapter on this base."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
        try:
            PeftModel.from_pretrained(model, adapter).merge_and_unload(safe_merge=True)
        except ValueError as e:
            return "NaNs detected" in str(e)
    return False


def same_with_nans(got: torch.Tensor, ref: torch.Tensor) -> bool:
    """Equal dtype, shape and values, NaN where the other has NaN."""
    return (
        got.dtype == ref.dtype
        and got.shape == ref.shape
        and torch.equal(torch.isnan(got), torch.isnan(ref))
        and torch.equal(got.nan_to_num(0.0), ref.nan_to_num(0.0))
    )


# ------------------------------------------------------------------ settings of adapter_config.json

BAD_SETTINGS = [
    ("alpha-nan", {"lora_alpha": float("nan")}, "lora_alpha"),
    ("alpha-inf", {"lora_alpha": float("inf")}, "lora_alpha"),
    ("alpha-minus-inf", {"lora_alpha": float("-inf")}, "lora_alpha"),
    ("alpha-string-nan", {"lora_alpha": "nan"}, "lora_alpha"),
    ("alpha-string-number", {"lora_alpha": "16"}, "lora_alpha"),
    ("alpha-1e308", {"lora_alpha": 1e308}, "lora_alpha"),
    ("alpha-1e30", {"lora_alpha": 1e30}, "lora_alpha"),
    ("alpha-true", {"lora_alpha": True}, "lora_alpha"),
    ("alpha-null", {"lora_alpha": None}, "lora_alpha"),
    ("alpha-pattern-nan", {"alpha_pattern": {"q_proj": float("nan")}}, "alpha_pattern"),
    ("alpha-pattern-1e308", {"alpha_pattern": {"q_proj": 1e308}}, "alpha_pattern"),
    ("alpha-pattern-string", {"alpha_pattern": {"q_proj": "32"}}, "alpha_pattern"),
    ("r-zero", {"r": 0}, "r"),
    ("r-negative", {"r": -8}, "r"),
    ("r-fraction", {"r": 8.5}, "r"),
    ("r-float", {"r": 8.0}, "r"),
    ("r-huge", {"r": 10**30}, "r"),
    ("r-inf", {"r": float("inf")}, "r"),
    ("r-nan", {"r": float("nan")}, "r"),
    ("r-string", {"r": "8"}, "r"),
    ("r-true", {"r": True}, "r"),
    ("rank-pattern-fraction", {"rank_pattern": {"q_proj": 2.5}}, "rank_pattern"),
    ("rank-pattern-inf", {"rank_pattern": {"q_proj": float("inf")}}, "rank_pattern"),
    ("rank-pattern-zero", {"rank_pattern": {"q_proj": 0}}, "rank_pattern"),
    ("dropout-above-one", {"lora_dropout": 2}, "lora_dropout"),
    ("dropout-negative", {"lora_dropout": -0.5}, "lora_dropout"),
    ("dropout-nan", {"lora_dropout": float("nan")}, "lora_dropout"),
    ("dropout-string", {"lora_dropout": "0.1"}, "lora_dropout"),
]


@pytest.mark.parametrize("case,config,field", BAD_SETTINGS, ids=[c[0] for c in BAD_SETTINGS])
def test_non_finite_or_absurd_setting_is_refused_before_any_output(lora_work, tmp_path, run_cli, case, config, field):
    adapter = adapter_copy(lora_work / "cute", tmp_path / case, **config)
    out = tmp_path / "out"
    r = merge_cli(run_cli, lora_work / "base", adapter, out)
    line = one_error_line(r, adapter / "adapter_config.json")
    assert re.search(rf"\b{field}\b", line.split("adapter_config.json", 1)[1]), line
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_inspect_refuses_a_non_finite_lora_alpha_too(lora_work, tmp_path, run_cli):
    adapter = adapter_copy(lora_work / "cute", tmp_path / "ad", lora_alpha=float("nan"))
    one_error_line(run_cli("inspect", adapter), adapter / "adapter_config.json", "lora_alpha")


@pytest.mark.parametrize(
    "config",
    [
        {"lora_alpha": -16},
        {"lora_alpha": 0},
        {"lora_dropout": 1.0},
        {"lora_dropout": 0.05},
        {"lora_alpha": 4096, "r": 8},
    ],
    ids=["negative-alpha", "zero-alpha", "dropout-one", "dropout-usual", "large-alpha"],
)
def test_settings_peft_merges_finitely_still_merge_exactly_as_peft(lora_work, tmp_path, config):
    from llmkit.lora import merge_lora

    adapter = adapter_copy(lora_work / "cute", tmp_path / "ad", **config)
    merge_lora(lora_work / "base", [adapter], tmp_path / "out")
    got = load_file(tmp_path / "out" / "model.safetensors")
    ref = peft_merged_state(lora_work / "base", [adapter])
    for name, t in got.items():
        assert torch.equal(t, ref[name]), name


# ------------------------------------------------------------------ non-finite values made by the merge


@pytest.mark.parametrize("where,value", [("lora_B", float("nan")), ("lora_B", float("inf")), ("lora_A", float("-inf"))])
def test_nan_or_inf_inside_the_adapter_is_refused_with_no_output(lora_work, tmp_path, run_cli, where, value):
    adapter = adapter_copy(lora_work / "cute", tmp_path / "ad")
    key = Q_B if where == "lora_B" else Q_A
    t = load_file(adapter / ADAPTER_FILE)[key].clone()
    t[3, 1] = value
    edit_tensors(adapter, ADAPTER_FILE, **{key: t})
    assert peft_refuses_safe_merge(lora_work / "base", adapter)  # the reference refuses it too
    out = tmp_path / "out"
    r = merge_cli(run_cli, lora_work / "base", adapter, out)
    line = one_error_line(r, adapter / ADAPTER_FILE, Q_WEIGHT, where)
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir()), line


def test_merge_that_overflows_half_precision_is_refused_like_peft_safe_merge(lora_work, tmp_path, run_cli):
    adapter = adapter_copy(lora_work / "cute", tmp_path / "ad")
    b = load_file(adapter / ADAPTER_FILE)[Q_B]
    edit_tensors(adapter, ADAPTER_FILE, **{Q_B: b * 1e8})  # finite numbers; W + delta exceeds fp16's 65504
    assert peft_refuses_safe_merge(lora_work / "base-fp16", adapter)
    out = tmp_path / "out"
    r = merge_cli(run_cli, lora_work / "base-fp16", adapter, out)
    one_error_line(r, adapter / ADAPTER_FILE, Q_WEIGHT)
    assert not out.exists()


def test_dtype_cast_that_overflows_is_refused_and_names_the_dtype(lora_work, tmp_path, run_cli):
    adapter = adapter_copy(lora_work / "cute", tmp_path / "ad")
    b = load_file(adapter / ADAPTER_FILE)[Q_B]
    edit_tensors(adapter, ADAPTER_FILE, **{Q_B: b * 1e8})  # fits fp32; does not fit fp16
    out = tmp_path / "out"
    r = merge_cli(run_cli, lora_work / "base", adapter, out, "--dtype", "fp16")
    line = one_error_line(r, Q_WEIGHT)
    assert "--dtype" in line and ("float16" in line or "fp16" in line)
    assert not out.exists()
    r = merge_cli(run_cli, lora_work / "base", adapter, out)  # in fp32 the same merge is finite
    assert r.exit_code == 0, r.stderr


# ------------------------------------------------------------------ non-finite values the base already had


@pytest.fixture
def base_with_nan_row(lora_work, tmp_path) -> Path:
    """The tiny fp32 base with a NaN row in layer 0's q_proj and an Inf in an embedding row."""
    base = tmp_path / "base-nan"
    shutil.copytree(lora_work / "base", base)
    tensors = load_file(base / "model.safetensors")
    tensors[Q_WEIGHT][5] = float("nan")
    tensors["model.embed_tokens.weight"][7, 2] = float("inf")
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    return base


def test_base_with_a_nan_row_merges_and_matches_peft(base_with_nan_row, lora_work, tmp_path, run_cli):
    out = tmp_path / "out"
    r = merge_cli(run_cli, base_with_nan_row, lora_work / "cute", out)
    assert r.exit_code == 0, r.stderr
    got = load_file(out / "model.safetensors")
    ref = peft_merged_state(base_with_nan_row, [lora_work / "cute"])
    assert torch.isnan(got[Q_WEIGHT][5]).all() and torch.isfinite(got[Q_WEIGHT][torch.arange(64) != 5]).all()
    for name, t in got.items():
        assert same_with_nans(t, ref[name]), name


def test_base_with_a_nan_row_and_an_adapter_with_nan_elsewhere_is_refused(
    base_with_nan_row, lora_work, tmp_path, run_cli
):
    adapter = adapter_copy(lora_work / "cute", tmp_path / "ad")
    b = load_file(adapter / ADAPTER_FILE)[Q_B].clone()
    b[9, 0] = float("nan")  # row 9 of the delta: finite in the base
    edit_tensors(adapter, ADAPTER_FILE, **{Q_B: b})
    out = tmp_path / "out"
    one_error_line(merge_cli(run_cli, base_with_nan_row, adapter, out), adapter / ADAPTER_FILE, Q_WEIGHT)
    assert not out.exists()


def test_base_nan_row_where_the_adapter_also_has_nan_is_not_new(base_with_nan_row, lora_work, tmp_path):
    from llmkit.lora import merge_lora

    adapter = adapter_copy(lora_work / "cute", tmp_path / "ad")
    b = load_file(adapter / ADAPTER_FILE)[Q_B].clone()
    b[5, 0] = float("nan")  # the very row that is NaN in the base: nothing new
    edit_tensors(adapter, ADAPTER_FILE, **{Q_B: b})
    merge_lora(base_with_nan_row, [adapter], tmp_path / "out")
    got = load_file(tmp_path / "out" / "model.safetensors")
    ref = peft_merged_state(base_with_nan_row, [adapter])
    assert same_with_nans(got[Q_WEIGHT], ref[Q_WEIGHT])
