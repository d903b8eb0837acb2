"""merge-lora against peft: every result is compared with peft's own merge_and_unload on the same inputs.

The reference (``peft_merged_state``) loads the base with transformers, resizes the embeddings to each
adapter's tokenizer as the Chinese-LLaMA-Alpaca recipe does, and calls
``PeftModel.from_pretrained(...).merge_and_unload()`` per adapter in order; llmkit's merge code is not used.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from common import merged_state
from safetensors.torch import load_file, save_file

from llmkit.lora import merge_lora, tokenizer_size
from llmkit.tiny import write_tokenizer
from llmkit.tiny_lora import (
    LLAMA_LINEAR,
    peft_merged_state,
    save_tiny_adapter,
    save_tiny_base,
    save_tiny_gpt2,
    save_tiny_gpt2_adapter,
)


def assert_equal_to_peft(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """Same names (a tied GPT-2 head is not stored), dtypes, shapes and bits."""
    assert set(got) <= set(ref), sorted(set(got) - set(ref))
    assert set(ref) - set(got) <= {"lm_head.weight"}
    for name, t in got.items():
        r = ref[name]
        assert t.dtype == r.dtype and t.shape == r.shape, name
        assert torch.equal(t, r), name


def ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of x's dtype at |x|, as fp32."""
    return (torch.nextafter(x.abs(), torch.tensor(float("inf"), dtype=x.dtype)) - x.abs()).float()


def assert_within_one_ulp(
    got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], base: dict[str, torch.Tensor]
) -> None:
    """|got - ref| <= 1 ulp of the weight dtype at the operands' magnitude: max(|W|, |delta|, |results|).

    (Where W + delta cancels towards zero the result's own ulp is far smaller than the operands'.)
    """
    for name, t in got.items():
        r, w = ref[name], base[name]
        delta = (t.float() - w.float()).to(t.dtype)
        spacing = torch.stack([ulp(t), ulp(r), ulp(w), ulp(delta)]).amax(dim=0)
        assert ((t.float() - r.float()).abs() <= spacing).all(), name


def test_single_qv_adapter_matches_peft(lora_work, tmp_path):
    merge_lora(lora_work / "base", [lora_work / "cute"], tmp_path / "out")
    assert_equal_to_peft(merged_state(tmp_path / "out"), peft_merged_state(lora_work / "base", [lora_work / "cute"]))


def test_all_linear_adapter_matches_peft(lora_work, tmp_path):
    save_tiny_adapter(tmp_path / "ad", target_modules="all-linear", r=4, lora_alpha=16)
    assert len(json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["target_modules"]) == 14
    merge_lora(lora_work / "base", [tmp_path / "ad"], tmp_path / "out")
    assert_equal_to_peft(merged_state(tmp_path / "out"), peft_merged_state(lora_work / "base", [tmp_path / "ad"]))


def test_fan_in_fan_out_conv1d_adapter_matches_peft(tmp_path):
    save_tiny_gpt2(tmp_path / "gpt2")
    save_tiny_gpt2_adapter(tmp_path / "ad")  # c_attn [64, 192], c_fc [64, 256], c_proj [64, 64] and [256, 64]
    result = merge_lora(tmp_path / "gpt2", [tmp_path / "ad"], tmp_path / "out")
    assert result.adapters[0].fan_in_fan_out and result.adapters[0].lora_modules == 8
    assert_equal_to_peft(merged_state(tmp_path / "out"), peft_merged_state(tmp_path / "gpt2", [tmp_path / "ad"]))


def test_fan_in_fan_out_flag_on_linear_layers_is_overridden_like_peft(lora_work, tmp_path):
    save_tiny_adapter(tmp_path / "ad", target_modules=LLAMA_LINEAR)
    cfg_path = tmp_path / "ad" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["fan_in_fan_out"] = True  # as older peft saved it; peft switches it off for nn.Linear
    cfg_path.write_text(json.dumps(cfg))
    result = merge_lora(lora_work / "base", [tmp_path / "ad"], tmp_path / "out")
    assert any("fan_in_fan_out" in w for w in result.warnings)
    assert_equal_to_peft(merged_state(tmp_path / "out"), peft_merged_state(lora_work / "base", [tmp_path / "ad"]))


def test_rslora_scaling_matches_peft(lora_work, tmp_path):
    save_tiny_adapter(tmp_path / "ad", use_rslora=True, r=16, lora_alpha=8)
    result = merge_lora(lora_work / "base", [tmp_path / "ad"], tmp_path / "out")
    assert result.adapters[0].scaling == 8 / 16**0.5
    assert_equal_to_peft(merged_state(tmp_path / "out"), peft_merged_state(lora_work / "base", [tmp_path / "ad"]))


def test_rank_and_alpha_patterns_match_peft(lora_work, tmp_path):
    save_tiny_adapter(
        tmp_path / "ad",
        target_modules=LLAMA_LINEAR,
        r=4,
        lora_alpha=8,
        rank_pattern={"v_proj": 2, "layers.1.mlp.down_proj": 6},
        alpha_pattern={"q_proj": 3},
    )
    merge_lora(lora_work / "base", [tmp_path / "ad"], tmp_path / "out")
    assert_equal_to_peft(merged_state(tmp_path / "out"), peft_merged_state(lora_work / "base", [tmp_path / "ad"]))


def test_embedding_and_lm_head_lora_match_peft(lora_work, tmp_path):
    save_tiny_adapter(tmp_path / "ad", target_modules=("embed_tokens", "q_proj", "lm_head"))
    merge_lora(lora_work / "base", [tmp_path / "ad"], tmp_path / "out")
    assert_equal_to_peft(merged_state(tmp_path / "out"), peft_merged_state(lora_work / "base", [tmp_path / "ad"]))


def test_lora_bias_matches_peft(tmp_path):
    save_tiny_gpt2(tmp_path / "gpt2")
    save_tiny_gpt2_adapter(tmp_path / "ad", lora_bias=True)
    merge_lora(tmp_path / "gpt2", [tmp_path / "ad"], tmp_path / "out")
    assert_equal_to_peft(merged_state(tmp_path / "out"), peft_merged_state(tmp_path / "gpt2", [tmp_path / "ad"]))


def test_modules_to_save_with_vocab_resize_matches_peft(lora_work, tmp_path):
    result = merge_lora(lora_work / "base", [lora_work / "alpaca"], tmp_path / "out")
    assert (result.vocab_before, result.vocab_after) == (100, 101)
    got = merged_state(tmp_path / "out")
    saved = load_file(lora_work / "alpaca" / "adapter_model.safetensors")
    assert torch.equal(got["model.embed_tokens.weight"], saved["base_model.model.model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], saved["base_model.model.lm_head.weight"])
    assert_equal_to_peft(got, peft_merged_state(lora_work / "base", [lora_work / "alpaca"]))


def test_two_adapters_in_order_match_peft(tmp_path, lora_work):
    # LLaMA 90 tokens -> "Chinese-LLaMA" LoRA 100 -> "Chinese-Alpaca" LoRA 101, like 32000 -> 49953 -> 49954.
    save_tiny_base(tmp_path / "base90", vocab_size=90)
    adapters = [lora_work / "llama", lora_work / "alpaca"]
    result = merge_lora(tmp_path / "base90", adapters, tmp_path / "out")
    assert [a.vocab_size for a in result.adapters] == [100, 101]
    assert_equal_to_peft(merged_state(tmp_path / "out"), peft_merged_state(tmp_path / "base90", adapters))


def test_three_adapters_deltas_add_up_in_order_like_peft(lora_work, tmp_path):
    adapters = [lora_work / "cute", lora_work / "llama", lora_work / "alpaca"]
    merge_lora(lora_work / "base", adapters, tmp_path / "out")
    assert_equal_to_peft(merged_state(tmp_path / "out"), peft_merged_state(lora_work / "base", adapters))


def test_bin_adapter_matches_peft_and_the_safetensors_one(lora_work, tmp_path):
    save_tiny_adapter(tmp_path / "st", target_modules=LLAMA_LINEAR, seed=5)
    save_tiny_adapter(tmp_path / "bin", target_modules=LLAMA_LINEAR, seed=5, safe_serialization=False)
    assert (tmp_path / "bin" / "adapter_model.bin").is_file()
    merge_lora(lora_work / "base", [tmp_path / "bin"], tmp_path / "out-bin")
    merge_lora(lora_work / "base", [tmp_path / "st"], tmp_path / "out-st")
    got = merged_state(tmp_path / "out-bin")
    assert_equal_to_peft(got, peft_merged_state(lora_work / "base", [tmp_path / "bin"]))
    assert all(torch.equal(got[k], v) for k, v in merged_state(tmp_path / "out-st").items())


@pytest.mark.parametrize("base_name,dtype", [("base-fp16", torch.float16), ("base-bf16-bin", torch.bfloat16)])
def test_half_precision_base_equals_peft_and_is_within_one_ulp_of_legacy_peft(lora_work, tmp_path, base_name, dtype):
    adapters = [lora_work / "cute", lora_work / "alpaca"]
    merge_lora(lora_work / base_name, adapters, tmp_path / "out")
    got = merged_state(tmp_path / "out")
    assert got["model.layers.0.self_attn.q_proj.weight"].dtype == dtype
    assert_equal_to_peft(got, peft_merged_state(lora_work / base_name, adapters, dtype=dtype))
    # peft without adapter upcasting (older peft) rounds the delta to the weight dtype first: two roundings.
    # Same adapter values for both (saved in the half dtype, as old adapters were).
    save_tiny_adapter(tmp_path / "half", target_modules=LLAMA_LINEAR, r=8, lora_alpha=16, dtype=dtype)
    legacy = peft_merged_state(lora_work / base_name, [tmp_path / "half"], dtype=dtype, autocast_adapter_dtype=False)
    merge_lora(lora_work / base_name, [tmp_path / "half"], tmp_path / "one")
    one = merged_state(tmp_path / "one")
    assert not all(torch.equal(one[k], legacy[k]) for k in one)  # the two rules do differ ...
    assert_within_one_ulp(one, legacy, merged_state(lora_work / base_name))  # ... by at most one ulp


def test_dtype_option_rounds_once_like_peft_merging_in_fp32_then_casting(lora_work, tmp_path):
    # peft_merged_state(dtype=fp16) on the fp32 base: peft merges in fp32, the merged model is cast once
    adapters = [lora_work / "cute", lora_work / "alpaca"]
    merge_lora(lora_work / "base", adapters, tmp_path / "out", dtype="fp16")
    got = merged_state(tmp_path / "out")
    assert_equal_to_peft(got, peft_merged_state(lora_work / "base", adapters, dtype=torch.float16))
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["vocab_size"] == 101 and config.get("dtype", config.get("torch_dtype")) == "float16"


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """A tiny base or adapter read with safetensors / torch directly (not llmkit)."""
    for name in ("model.safetensors", "adapter_model.safetensors"):
        if (folder / name).is_file():
            return load_file(folder / name)
    name = "pytorch_model.bin" if (folder / "pytorch_model.bin").is_file() else "adapter_model.bin"
    return torch.load(folder / name, weights_only=True)


@pytest.mark.parametrize(
    "base_name,dtype,out_dtype",
    [
        ("base", "fp16", torch.float16),
        ("base", "bf16", torch.bfloat16),
        ("base-bf16-bin", "fp16", torch.float16),
        ("base-fp16", "fp32", torch.float32),
    ],
)
def test_dtype_conversion_rounds_once_per_the_published_formula(
    lora_work, tmp_path, run_cli, base_name, dtype, out_dtype
):
    # SPEC.md section 3: W' = cast(float32(W) + (B @ A) * lora_alpha / r), one rounding to the output dtype;
    # saved modules and untouched tensors: one cast. Never cast(cast(W) + delta) (two roundings).
    adapter = tmp_path / "ad"
    save_tiny_adapter(adapter, target_modules=LLAMA_LINEAR, r=4, lora_alpha=16, modules_to_save=("lm_head",))
    res = run_cli(
        "merge-lora", "--base", lora_work / base_name, "--lora", adapter, "-o", tmp_path / "out", "--dtype", dtype
    )
    assert res.exit_code == 0, res.stderr
    got = merged_state(tmp_path / "out")
    base, ad = read_weights(lora_work / base_name), read_weights(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    scaling = cfg["lora_alpha"] / cfg["r"]
    lora_tensors = double_rounding_differs = 0
    for name, w in base.items():
        module = f"base_model.model.{name.removesuffix('.weight')}"
        if f"base_model.model.{name}" in ad:  # modules_to_save: the saved tensor, cast once
            expected = ad[f"base_model.model.{name}"].to(out_dtype)
        elif f"{module}.lora_A.weight" in ad:
            delta = (ad[f"{module}.lora_B.weight"].float() @ ad[f"{module}.lora_A.weight"].float()) * scaling
            expected = (w.float() + delta).to(out_dtype)
            lora_tensors += 1
            double_rounding_differs += int(not torch.equal(got[name], (w.to(out_dtype).float() + delta).to(out_dtype)))
        else:
            expected = w.to(out_dtype)
        assert got[name].dtype == out_dtype and torch.equal(got[name], expected), name
    assert lora_tensors == 14
    if base_name == "base":  # from fp32 the two rules differ: the test tells them apart
        assert double_rounding_differs == lora_tensors


def test_fp32_merge_within_1e6_of_the_published_formula(lora_work, tmp_path):
    # SPEC.md section 3 written out: W + (B @ A) * alpha / r
    merge_lora(lora_work / "base", [lora_work / "cute"], tmp_path / "out")
    got = merged_state(tmp_path / "out")
    base = load_file(lora_work / "base" / "model.safetensors")
    ad = load_file(lora_work / "cute" / "adapter_model.safetensors")
    cfg = json.loads((lora_work / "cute" / "adapter_config.json").read_text())
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            key = f"model.layers.{layer}.self_attn.{proj}"
            a = ad[f"base_model.model.{key}.lora_A.weight"].double()
            b = ad[f"base_model.model.{key}.lora_B.weight"].double()
            expected = base[f"{key}.weight"].double() + b @ a * cfg["lora_alpha"] / cfg["r"]
            scale = expected.abs().max().item()
            assert torch.allclose(got[f"{key}.weight"].double(), expected, rtol=1e-6, atol=1e-6 * scale)


def test_unreplaced_new_rows_are_the_mean_of_the_old_rows(lora_work, tmp_path):
    # Only embed_tokens is saved: lm_head's new row comes from the resize, as in transformers' mean resizing.
    save_tiny_adapter(
        tmp_path / "ad",
        vocab_size=101,
        tokenizer_pad=True,
        target_modules=("q_proj",),
        modules_to_save=("embed_tokens",),
    )
    result = merge_lora(lora_work / "base", [tmp_path / "ad"], tmp_path / "out")
    assert result.mean_initialised_rows == {"lm_head.weight": 1}
    got = merged_state(tmp_path / "out")["lm_head.weight"]
    old = load_file(lora_work / "base" / "model.safetensors")["lm_head.weight"]
    assert torch.equal(got[:100], old)
    assert torch.equal(got[100], torch.mean(old.to(torch.float32), dim=0).to(old.dtype))
    # transformers samples the row from N(mean, 1e-9 * covariance): equal up to that jitter
    ref = peft_merged_state(lora_work / "base", [tmp_path / "ad"])
    assert_equal_to_peft({k: v for k, v in merged_state(tmp_path / "out").items() if k != "lm_head.weight"}, ref)
    jitter = 10 * (1e-9 * old.var(dim=0)).sqrt()
    assert ((got[100] - ref["lm_head.weight"][100]).abs() <= jitter).all()


def test_default_adapter_names_and_other_key_prefixes_are_understood(lora_work, tmp_path):
    original = load_file(lora_work / "llama" / "adapter_model.safetensors")
    variants = {
        "named": {
            k.replace(".lora_A.", ".lora_A.default.")
            .replace(".lora_B.", ".lora_B.default.")
            .replace("model.embed_tokens.weight", "model.embed_tokens.modules_to_save.default.weight"): v
            for k, v in original.items()
        },
        "no-prefix": {k.removeprefix("base_model.model."): v for k, v in original.items()},
    }
    reference = None
    for name, state in variants.items():
        folder = tmp_path / name
        shutil.copytree(lora_work / "llama", folder)
        save_file(state, folder / "adapter_model.safetensors", metadata={"format": "pt"})
        merge_lora(lora_work / "base", [folder], tmp_path / f"out-{name}")
        got = merged_state(tmp_path / f"out-{name}")
        reference = reference or peft_merged_state(lora_work / "base", [lora_work / "llama"])
        assert_equal_to_peft(got, reference)


def test_output_tokenizer_and_vocab_size_come_from_the_last_adapter_with_a_tokenizer(lora_work, tmp_path):
    save_tiny_adapter(tmp_path / "plain", target_modules=("q_proj",))  # no tokenizer
    merge_lora(lora_work / "base", [lora_work / "alpaca", tmp_path / "plain"], tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "added_tokens.json").read_bytes() == (lora_work / "alpaca" / "added_tokens.json").read_bytes()
    assert (out / "tokenizer.model").read_bytes() == (lora_work / "alpaca" / "tokenizer.model").read_bytes()
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 101
    from transformers import AutoTokenizer, LlamaForCausalLM

    assert len(AutoTokenizer.from_pretrained(out)) == 101
    assert LlamaForCausalLM.from_pretrained(out).get_input_embeddings().weight.shape[0] == 101


def test_tokenizer_only_adapters_take_the_base_tokenizer(lora_work, tmp_path):
    save_tiny_adapter(tmp_path / "plain", target_modules=("q_proj",))
    result = merge_lora(lora_work / "base", [tmp_path / "plain"], tmp_path / "out")
    assert result.tokenizer_from == str(lora_work / "base")
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (lora_work / "base" / "tokenizer.model").read_bytes()


@pytest.mark.parametrize("pad,special_only", [(False, False), (True, False), (False, True)])
def test_tokenizer_size_counts_like_transformers(tmp_path, pad, special_only):
    from transformers import AutoTokenizer

    write_tokenizer(tmp_path, pad_token=pad)
    if special_only:  # a pad token named only in special_tokens_map.json is added by transformers
        path = tmp_path / "special_tokens_map.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "pad_token": "<pad>"}))
    assert tokenizer_size(tmp_path) == len(AutoTokenizer.from_pretrained(tmp_path))


def test_larger_tokenizer_option_grows_the_vocabulary_with_mean_rows(lora_work, tmp_path):
    result = merge_lora(lora_work / "base", [lora_work / "cute"], tmp_path / "out", tokenizer=lora_work / "alpaca")
    assert (result.vocab_before, result.vocab_after) == (100, 101)
    assert result.mean_initialised_rows == {"model.embed_tokens.weight": 1, "lm_head.weight": 1}
    got = merged_state(tmp_path / "out")
    ref = peft_merged_state(lora_work / "base", [lora_work / "cute"])  # then resized to the 101-token tokenizer
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        old = ref[name]
        assert torch.equal(got[name][:100], old)
        assert torch.equal(got[name][100], torch.mean(old.to(torch.float32), dim=0).to(old.dtype))
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == 101
    assert (tmp_path / "out" / "added_tokens.json").is_file()
