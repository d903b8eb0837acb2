"""`llmkit recover` / `llmkit make-diff` (SPEC.md section 2): every expected value is the published formula
written out here (exact sums in float64, roundings by numpy), on diffs written by safetensors/torch, not llmkit."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from common import assert_same, load_output
from safetensors.torch import save_file

from llmkit.errors import CheckFailed, InputError, OutputExistsError
from llmkit.recover import legacy_inv_freq, make_diff, recover

LAYOUT_PAIRS = [
    ("safetensors", "bin-sharded"),
    ("bin", "safetensors-sharded"),
    ("safetensors-sharded", "bin"),
    ("bin-sharded", "safetensors"),
]
AUX = ("config.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


# ------------------------------------------------------------------ independent writers, readers, formulas


def write_state(
    folder: Path, state: dict[str, torch.Tensor], layout: str = "safetensors", aux_from: Path | None = None
) -> Path:
    """Write a state dict with safetensors/torch themselves (never llmkit's writer)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    if layout == "safetensors":
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    elif layout == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        stem, ext = ("model", "safetensors") if layout == "safetensors-sharded" else ("pytorch_model", "bin")
        groups = [names[i : i + 5] for i in range(0, len(names), 5)]
        weight_map = {}
        for i, group in enumerate(groups, 1):
            fname = f"{stem}-{i:05d}-of-{len(groups):05d}.{ext}"
            part = {k: state[k].contiguous() for k in group}
            save_file(part, folder / fname, metadata={"format": "pt"}) if ext == "safetensors" else torch.save(
                part, folder / fname
            )
            weight_map.update(dict.fromkeys(group, fname))
        (folder / f"{stem}.{ext}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if aux_from is not None:
        for name in AUX:
            if (aux_from / name).is_file():
                shutil.copy(aux_from / name, folder / name)
    return folder


def f64(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


def exact_sum_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IEEE fp32 a + b: the float64 sum is exact here and one rounding to fp32 follows."""
    return torch.from_numpy((f64(a) + f64(b)).astype(np.float32))


def exact_sum_fp16(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """fp16(a) + fp16(b) with one rounding (numpy rounds float64 -> float16 directly)."""
    a16 = a.numpy().astype(np.float16) if a.dtype != torch.float16 else a.numpy()
    b16 = b.numpy().astype(np.float16) if b.dtype != torch.float16 else b.numpy()
    return torch.from_numpy((a16.astype(np.float64) + b16.astype(np.float64)).astype(np.float16))


def diff_state(tuned: dict, base: dict) -> dict[str, torch.Tensor]:
    """Upstream make_diff: tuned - base in fp32 for every tensor."""
    return {k: torch.from_numpy((f64(tuned[k]) - f64(base[k])).astype(np.float32)) for k in tuned}


def inv_freq_formula(head_dim: int) -> torch.Tensor:
    # transformers' 2023 LlamaRotaryEmbedding buffer, written out.
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))


@pytest.fixture(scope="module")
def pair(tiny_factory):
    """(base TinyModel, tuned TinyModel) of the same architecture, fp32."""
    return tiny_factory("safetensors", seed=0), tiny_factory("safetensors", seed=1)


@pytest.fixture(scope="module")
def fp32_diff(pair, tmp_path_factory):
    base, tuned = pair
    d = diff_state(tuned.state, base.state)
    return write_state(tmp_path_factory.mktemp("diff32") / "diff", d, aux_from=tuned.path), d


# ------------------------------------------------------------------ arithmetic


@pytest.mark.parametrize("base_layout,diff_layout", LAYOUT_PAIRS)
def test_recover_fp32_is_diff_plus_base_in_every_layout(tiny_factory, pair, base_layout, diff_layout, tmp_path):
    base = tiny_factory(base_layout, seed=0)
    d = diff_state(pair[1].state, base.state)
    diff = write_state(tmp_path / "diff", d, diff_layout, aux_from=pair[1].path)
    result = recover(base.path, diff, tmp_path / "out")
    expected = {k: exact_sum_fp32(d[k], base.state[k]) for k in d}
    assert result.plan.dtype == "fp32" and result.plan.tensors == len(d)
    assert_same(load_output(tmp_path / "out"), expected)


def test_recover_fp32_diff_on_fp16_base_widens_the_base_exactly(pair, tiny_factory, tmp_path):
    base16 = tiny_factory("bin-sharded", seed=0, dtype=torch.float16)  # LLaMA-13B HF is fp16
    d = diff_state(pair[1].state, base16.state)
    diff = write_state(tmp_path / "diff", d, "bin", aux_from=pair[1].path)
    recover(base16.path, diff, tmp_path / "out")
    expected = {k: exact_sum_fp32(d[k], base16.state[k]) for k in d}
    assert_same(load_output(tmp_path / "out"), expected)


def test_recover_fp16_diff_defaults_to_one_rounding_of_the_fp16_sum(pair, tiny_factory, tmp_path):
    base16 = tiny_factory("safetensors", seed=0, dtype=torch.float16)
    d16 = {k: v.half() for k, v in diff_state(pair[1].state, base16.state).items()}
    diff = write_state(tmp_path / "diff", d16, "bin-sharded", aux_from=pair[1].path)
    result = recover(base16.path, diff, tmp_path / "out")
    assert result.plan.dtype == "fp16"
    expected = {k: exact_sum_fp16(d16[k], base16.state[k]) for k in d16}
    assert_same(load_output(tmp_path / "out"), expected)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float16"


def test_recover_fp16_from_fp32_diff_rounds_the_diff_first_like_upstream_is_fp16(pair, fp32_diff, tmp_path):
    diff, d = fp32_diff
    base = pair[0]
    recover(base.path, diff, tmp_path / "out", dtype="fp16")
    expected = {k: exact_sum_fp16(d[k], base.state[k]) for k in d}
    assert_same(load_output(tmp_path / "out"), expected)


def test_recover_bf16_is_the_fp32_sum_rounded_once(pair, fp32_diff, tmp_path):
    diff, d = fp32_diff
    base = pair[0]
    recover(base.path, diff, tmp_path / "out", dtype="bf16")
    expected = {k: exact_sum_fp32(d[k], base.state[k]).to(torch.bfloat16) for k in d}
    assert_same(load_output(tmp_path / "out"), expected)


def test_make_diff_is_tuned_minus_base_in_fp32(tiny_factory, pair, tmp_path):
    base, tuned = pair[0], tiny_factory("bin-sharded", seed=1)
    result = make_diff(base.path, tuned.path, tmp_path / "diff")
    assert result.plan.dtype == "fp32"
    assert_same(load_output(tmp_path / "diff"), diff_state(tuned.state, base.state))
    # config and tokenizer come from the tuned model's folder
    assert (tmp_path / "diff" / "tokenizer.model").read_bytes() == (tuned.path / "tokenizer.model").read_bytes()


def test_make_diff_fp16_rounds_the_fp32_difference_once(pair, tmp_path):
    base, tuned = pair
    make_diff(base.path, tuned.path, tmp_path / "diff", dtype="fp16", fmt="bin")
    expected = {
        k: torch.from_numpy((f64(tuned.state[k]) - f64(base.state[k])).astype(np.float32).astype(np.float16))
        for k in tuned.state
    }
    assert_same(load_output(tmp_path / "diff"), expected)


def test_make_diff_then_recover_gives_the_tuned_model_within_fp32_rounding(pair, tmp_path):
    base, tuned = pair
    make_diff(base.path, tuned.path, tmp_path / "diff")
    recover(base.path, tmp_path / "diff", tmp_path / "out")
    out = load_output(tmp_path / "out")
    for k, t in tuned.state.items():
        ulp = torch.finfo(torch.float32).eps * torch.maximum(t.abs(), base.state[k].abs())
        assert torch.all((out[k] - t).abs() <= ulp), k


# ------------------------------------------------------------------ files


def test_tokenizer_and_config_come_from_the_diff_folder(pair, fp32_diff, tmp_path):
    diff, _ = fp32_diff
    base = pair[0]
    marked = tmp_path / "diff"
    shutil.copytree(diff, marked)
    (marked / "special_tokens_map.json").write_text('{"bos_token": "<s>", "note": "from the diff"}')
    recover(base.path, marked, tmp_path / "out")
    assert "from the diff" in (tmp_path / "out" / "special_tokens_map.json").read_text()
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (marked / "tokenizer.model").read_bytes()
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["hidden_size"] == json.loads((marked / "config.json").read_text())["hidden_size"]


def test_sharded_bin_output_loads_with_torch_and_has_an_index(pair, fp32_diff, tmp_path):
    diff, d = fp32_diff
    base = pair[0]
    result = recover(base.path, diff, tmp_path / "out", fmt="bin", shard_size=100_000)
    index = json.loads((tmp_path / "out" / "pytorch_model.bin.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert "pytorch_model.bin.index.json" in result.files
    assert_same(load_output(tmp_path / "out"), {k: exact_sum_fp32(d[k], base.state[k]) for k in d})


def test_recovered_model_loads_in_transformers(pair, fp32_diff, tmp_path):
    from transformers import LlamaForCausalLM

    diff, d = fp32_diff
    recover(pair[0].path, diff, tmp_path / "out")
    model = LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], exact_sum_fp32(d[k], pair[0].state[k])) for k in d)


def test_inputs_are_not_modified(tiny_factory, pair, tmp_path):
    base = tiny_factory("bin", seed=0)  # memory-mapped input: pages are released, never written
    d = diff_state(pair[1].state, base.state)
    diff = write_state(tmp_path / "diff", d, "bin-sharded", aux_from=pair[1].path)

    def digests() -> dict[str, str]:
        return {
            str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in (base.path, diff)
            for p in sorted(folder.iterdir())
        }

    before = digests()
    value = float(sum(f64(exact_sum_fp32(d[k], base.state[k])).sum() for k in d))
    recover(base.path, diff, tmp_path / "out", check_sum=value)
    assert digests() == before


def test_existing_output_is_refused_without_force_and_replaced_with_it(pair, fp32_diff, tmp_path):
    diff, _ = fp32_diff
    recover(pair[0].path, diff, tmp_path / "out")
    with pytest.raises(OutputExistsError):
        recover(pair[0].path, diff, tmp_path / "out")
    recover(pair[0].path, diff, tmp_path / "out", force=True)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_output_inside_an_input_folder_is_refused(pair, fp32_diff):
    diff, _ = fp32_diff
    with pytest.raises(InputError, match="input folder"):
        recover(pair[0].path, diff, diff)


# ------------------------------------------------------------------ checks before the long work


def test_wrong_base_with_32000_rows_versus_a_larger_diff_is_named(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {
        "model.embed_tokens.weight": torch.randn(32000, 4, generator=g),
        "model.norm.weight": torch.ones(4),
        "lm_head.weight": torch.randn(32000, 4, generator=g),
    }
    diff = {
        "model.embed_tokens.weight": torch.zeros(32001, 4),
        "model.norm.weight": torch.zeros(4),
        "lm_head.weight": torch.zeros(32001, 4),
    }
    write_state(tmp_path / "base", base)
    write_state(tmp_path / "diff", diff, "bin")
    with pytest.raises(InputError) as e:
        recover(tmp_path / "base", tmp_path / "diff", tmp_path / "out")
    text = str(e.value)
    assert "32000" in text and "32001" in text and "wrong base" in text and "embed_tokens" in text
    assert not (tmp_path / "out").exists()


def test_wrong_size_base_is_named_with_both_architectures(tmp_path):
    base = {"model.embed_tokens.weight": torch.zeros(10, 4096), "lm_head.weight": torch.zeros(10, 4096)}
    diff = {"model.embed_tokens.weight": torch.zeros(10, 5120), "lm_head.weight": torch.zeros(10, 5120)}
    write_state(tmp_path / "base", base)
    write_state(tmp_path / "diff", diff)
    with pytest.raises(InputError, match=r"LLaMA-7B.*LLaMA-13B.*wrong base"):
        recover(tmp_path / "base", tmp_path / "diff", tmp_path / "out")


def test_a_tensor_missing_from_the_base_is_named_before_any_output(pair, fp32_diff, tmp_path):
    diff, _ = fp32_diff
    state = dict(pair[0].state)
    del state["model.layers.1.mlp.up_proj.weight"]
    write_state(tmp_path / "base", state)
    with pytest.raises(InputError, match=r"base lacks 1 tensor.*model\.layers\.1\.mlp\.up_proj\.weight"):
        recover(tmp_path / "base", diff, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_tensor_missing_from_the_diff_is_refused(pair, fp32_diff, tmp_path):
    _, d = fp32_diff
    d = dict(d)
    del d["lm_head.weight"]
    write_state(tmp_path / "diff", d)
    with pytest.raises(InputError, match=r"diff lacks 1 tensor.*lm_head\.weight"):
        recover(pair[0].path, tmp_path / "diff", tmp_path / "out")


def test_a_base_with_fewer_layers_says_how_many(tiny_factory, fp32_diff, tmp_path):
    diff, _ = fp32_diff
    one_layer = tiny_factory("safetensors", seed=0, layers=1)
    with pytest.raises(InputError, match="the base has 1 layers, the diff 2"):
        recover(one_layer.path, diff, tmp_path / "out")


def test_an_adapter_as_base_or_a_meta_checkpoint_as_diff_is_refused_with_a_hint(tiny_factory, fp32_diff, tmp_path):
    # A Meta base is read as the HF model from-meta writes (tests/test_meta_convert.py); a Meta diff is not a diff.
    diff, _ = fp32_diff
    meta = tiny_factory("meta", seed=0)
    with pytest.raises(InputError, match="Meta consolidated"):
        recover(tiny_factory("safetensors").path, meta.path, tmp_path / "out")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}')
    save_file(
        {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(8, 64)},
        adapter / "adapter_model.safetensors",
    )
    with pytest.raises(InputError, match="LoRA adapter"):
        recover(adapter, diff, tmp_path / "out")


def test_dry_run_reports_sizes_disk_and_memory_and_writes_nothing(pair, fp32_diff, tmp_path):
    diff, d = fp32_diff
    seen = []
    result = recover(pair[0].path, diff, tmp_path / "out", dry_run=True, on_plan=seen.append)
    plan = result.plan
    assert result.dry_run and result.files == [] and seen == [plan]
    assert not (tmp_path / "out").exists()
    assert plan.output_bytes == sum(t.numel() * 4 for t in d.values())
    largest = max(t.numel() * 4 for t in d.values())
    assert plan.largest_tensor_bytes == largest
    assert plan.memory_estimate_bytes >= 3 * largest and plan.free_disk_bytes > plan.output_bytes
    assert "model.safetensors" in plan.files and "tokenizer.model" in plan.files


# ------------------------------------------------------------------ the naive integrity sum


def test_check_sum_passes_with_the_independently_computed_sum(pair, fp32_diff, tmp_path):
    diff, d = fp32_diff
    expected = {k: exact_sum_fp32(d[k], pair[0].state[k]) for k in d}
    value = float(sum(f64(t).sum() for t in expected.values()))
    result = recover(pair[0].path, diff, tmp_path / "out", check_sum=value)
    assert result.check_sum.passed and abs(result.check_sum.sum_fp64 - value) < 1e-6
    assert abs(result.check_sum.sum_fp32_upstream - value) < 1e-2


def test_check_sum_mismatch_raises_check_failed_and_keeps_no_output(pair, fp32_diff, tmp_path):
    diff, _ = fp32_diff
    with pytest.raises(CheckFailed, match=r"expected 94052\.2891"):
        recover(pair[0].path, diff, tmp_path / "out", check_sum=94052.2891)
    out = tmp_path / "out"
    assert not (out.exists() and any(out.iterdir()))


def _with_inv_freq(state: dict[str, torch.Tensor], head_dim: int) -> dict[str, torch.Tensor]:
    out = dict(state)
    for i in range(2):
        out[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq_formula(head_dim)
    return out


def test_inv_freq_buffers_absent_from_the_base_are_computed_as_upstream_and_summed(pair, tmp_path):
    base, tuned = pair
    head_dim = 64 // 4
    tuned_old = _with_inv_freq(tuned.state, head_dim)  # an old checkpoint: buffers saved
    base_old = _with_inv_freq(base.state, head_dim)
    d = diff_state(tuned_old, base_old)  # upstream make_diff: buffers diff to zero
    diff = write_state(tmp_path / "diff", d, "bin", aux_from=tuned.path)
    expected = {k: exact_sum_fp32(d[k], base_old[k]) for k in d}
    value = float(sum(f64(t).sum() for t in expected.values()))
    # the base is a current conversion: no buffers; its old form had them in fp32, as the model computes them
    result = recover(base.path, diff, tmp_path / "out", check_sum=value, base_inv_freq="fp32")
    assert len(result.plan.computed_buffers) == 2 and result.check_sum.rotary_buffers == 2
    assert result.check_sum.passed
    assert_same(load_output(tmp_path / "out"), expected)


def test_check_sum_failure_explains_absent_inv_freq_buffers(pair, fp32_diff, tmp_path):
    diff, d = fp32_diff  # a diff saved without the buffers
    expected = {k: exact_sum_fp32(d[k], pair[0].state[k]) for k in d}
    with_buffers = float(sum(f64(t).sum() for t in expected.values())) + 2 * float(f64(inv_freq_formula(16)).sum())
    with pytest.raises(CheckFailed) as e:
        recover(pair[0].path, diff, tmp_path / "out", check_sum=with_buffers)
    text = str(e.value)
    assert "inv_freq" in text and "agrees with the published value" in text and "2 layers" in text


def test_legacy_inv_freq_of_a_13b_head_sums_to_about_7_46():
    # SPEC.md section 2: 40 layers of inv_freq buffers, ~7.46 each, are part of 94052.2891.
    buf = legacy_inv_freq(5120 // 40)
    assert torch.equal(buf, inv_freq_formula(128))
    assert abs(float(buf.double().sum()) - 7.46) < 0.01


# ------------------------------------------------------------------ published tables and comparison by tensors


def test_an_output_named_in_a_published_recovered_table_is_hashed_and_matched(pair, fp32_diff, tmp_path, monkeypatch):
    import llmkit.registry as registry

    diff, _ = fp32_diff
    recover(pair[0].path, diff, tmp_path / "first")
    digest = hashlib.md5((tmp_path / "first" / "model.safetensors").read_bytes()).hexdigest()
    tables = {"model.safetensors": [("zhixi-13b", digest), ("zhixi-13b-diff", "0" * 32)]}
    monkeypatch.setattr(registry, "find_expected", lambda name, algorithm="md5": tables.get(name, []))
    result = recover(pair[0].path, diff, tmp_path / "second")
    assert [(p.file, p.md5, p.tables, p.matched_table) for p in result.published] == [
        ("model.safetensors", digest, ["zhixi-13b"], "zhixi-13b")
    ]  # diff tables are not for recovered models
    tables["model.safetensors"] = [("zhixi-13b-fp16", "f" * 32)]
    result = recover(pair[0].path, diff, tmp_path / "third")
    assert result.published[0].matched_table is None and result.published[0].md5 == digest


def test_reference_comparison_by_tensors_says_whether_the_content_is_right(pair, fp32_diff, tmp_path):
    diff, d = fp32_diff
    expected = write_state(tmp_path / "expected", {k: exact_sum_fp32(d[k], pair[0].state[k]) for k in d}, "bin")
    result = recover(pair[0].path, diff, tmp_path / "out", reference=expected)
    assert result.reference.passed and result.reference.identical == len(d)
    result = recover(pair[0].path, diff, tmp_path / "out2", reference=pair[0].path)
    assert not result.reference.passed and len(result.reference.differing) == len(d)


# ------------------------------------------------------------------ CLI


def test_cli_recover_json_prints_only_json(run_cli, pair, fp32_diff, tmp_path):
    diff, d = fp32_diff
    r = run_cli("recover", "--base", pair[0].path, "--diff", diff, "-o", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.stderr
    data = r.json()
    assert data["plan"]["tensors"] == len(d) and "model.safetensors" in data["files"]
    assert data["dry_run"] is False


def test_cli_wrong_base_exits_2_with_one_error_line(run_cli, tiny_factory, fp32_diff, tmp_path):
    diff, _ = fp32_diff
    r = run_cli(
        "recover", "--base", tiny_factory("safetensors", seed=0, layers=1).path, "--diff", diff, "-o", tmp_path / "out"
    )
    assert r.exit_code == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "lacks" in lines[-1] and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_cli_check_sum_failure_exits_1(run_cli, pair, fp32_diff, tmp_path):
    diff, _ = fp32_diff
    r = run_cli(
        "recover",
        "--base",
        pair[0].path,
        "--diff",
        diff,
        "-o",
        tmp_path / "out",
        "--check-sum",
        "94052.2891",
        "--quiet",
    )
    assert r.exit_code == 1 and "error: " in r.stderr and "94052.2891" in r.stderr


def test_cli_dry_run_prints_the_plan_and_writes_nothing(run_cli, pair, fp32_diff, tmp_path):
    diff, _ = fp32_diff
    r = run_cli(
        "recover",
        "--base",
        pair[0].path,
        "--diff",
        diff,
        "-o",
        tmp_path / "out",
        "--dry-run",
        "--dtype",
        "fp16",
        "--format",
        "bin",
    )
    assert r.exit_code == 0, r.stderr
    assert "memory" in r.stdout and "nothing was written" in r.stdout and "pytorch_model.bin" in r.stdout
    assert not (tmp_path / "out").exists()


def test_cli_reference_mismatch_exits_1(run_cli, pair, fp32_diff, tmp_path):
    diff, _ = fp32_diff
    r = run_cli("recover", "--base", pair[0].path, "--diff", diff, "-o", tmp_path / "out", "--reference", pair[1].path)
    assert r.exit_code == 1 and "differing" in r.stdout


def test_cli_make_diff_then_recover_end_to_end_in_subprocesses(pair, tmp_path):
    exe = Path(sys.executable).with_name("llmkit")
    base, tuned = pair
    r1 = subprocess.run(
        [exe, "make-diff", "--base", base.path, "--target", tuned.path, "-o", tmp_path / "diff", "--format", "bin"],
        capture_output=True,
        text=True,
    )
    assert r1.returncode == 0, r1.stderr
    r2 = subprocess.run(
        [exe, "recover", "--base", base.path, "--diff", tmp_path / "diff", "-o", tmp_path / "out", "--json"],
        capture_output=True,
        text=True,
    )
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["plan"]["operation"] == "recover"
    d = diff_state(tuned.state, base.state)
    assert_same(load_output(tmp_path / "out"), {k: exact_sum_fp32(d[k], base.state[k]) for k in d})


def test_cli_help_names_the_published_zhixi_sum():
    from llmkit.cli import recover_cmd
    from llmkit.recover import ZHIXI_13B_FP32_SUM

    assert float(recover_cmd.ZHIXI_SUM_TEXT) == ZHIXI_13B_FP32_SUM == 94052.2891  # SPEC.md section 2
