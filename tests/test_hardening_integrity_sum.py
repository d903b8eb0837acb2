"""ZhiXi's integrity sum, as upstream computes it, for every form of the base.

Upstream (KnowLM ``tools/weight_diff.py recover``) loads the base and the diff as fp32 models on the
transformers of its time (4.28-4.30), adds the two ``state_dict()``s key by key and checks
``sum(t.sum() for t in state_dict.values())``. Those state dicts hold one ``rotary_emb.inv_freq`` buffer per
layer (a persistent buffer then). Its value in the base is:

- an HF folder converted by transformers 4.28-4.30 (``convert_llama_weights_to_hf``): stored in the files,
  in fp16 (the converter saves the model in fp16), read back in fp32;
- an HF folder whose files have no ``inv_freq`` (converted by transformers 4.31+ or llmkit from-meta): what
  the model computes at init, ``1 / 10000 ** (arange(0, d, 2) / d)`` in fp32;
- Meta's originals: upstream needs them converted first, by the converter of its time: the fp16 values.

The expected values below are that formula, written here, on tiny models in each form.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmkit.tiny import TINY_HEADS

HIDDEN = 64
HEAD_DIM = HIDDEN // TINY_HEADS
LAYERS = 2


def inv_freq(d: int = HEAD_DIM) -> torch.Tensor:
    """transformers 4.28-4.30 ``LlamaRotaryEmbedding.inv_freq`` (fp32)."""
    return 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))


def buffer_name(layer: int) -> str:
    return f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"


def upstream_sums(diff: dict[str, torch.Tensor], raw: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(fp64 sum of the recovered values, upstream's own fp32 sum): fp32 models, ``add_`` key by key."""
    recovered = {k: diff[k].float() + raw[k].float() for k in diff}
    fp32 = sum(t.sum() for t in recovered.values())
    return sum(float(t.double().sum()) for t in recovered.values()), float(fp32)


@pytest.fixture
def zhixi_like(tiny_factory, tmp_path):
    """A fp16 LLaMA base in three forms and an fp32 diff that, like one saved by transformers 4.30, holds one
    inv_freq per layer (zero: both models had the same buffers)."""
    hf = tiny_factory("safetensors", dtype=torch.float16)
    meta = tiny_factory("meta", dtype=torch.float16)
    with_buffers = tmp_path / "llama-hf-4.30"
    shutil.copytree(hf.path, with_buffers)
    state = load_file(with_buffers / "model.safetensors")
    state.update({buffer_name(i): inv_freq().half() for i in range(LAYERS)})  # the old converter's fp16 copies
    save_file(state, with_buffers / "model.safetensors", metadata={"format": "pt"})
    g = torch.Generator().manual_seed(3)
    diff = {k: torch.randn(v.shape, generator=g) * 0.01 for k, v in hf.state.items()}
    diff.update({buffer_name(i): torch.zeros(HEAD_DIM // 2) for i in range(LAYERS)})
    (tmp_path / "diff").mkdir()
    save_file(diff, tmp_path / "diff" / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(hf.path / "config.json", tmp_path / "diff" / "config.json")
    weights = dict(hf.state.items())
    assert all(torch.equal(meta.state[k], v) for k, v in weights.items())
    return {"hf-4.30": with_buffers, "hf": hf.path, "meta": meta.path}, tmp_path / "diff", diff, weights


def _recover(run_cli, base, diff, out, expected: float, *extra):
    r = run_cli("recover", "--base", base, "--diff", diff, "-o", out, "--check-sum", str(expected), "--json", *extra)
    assert r.exit_code == 0, r.stderr
    return r.json()["check_sum"]


@pytest.mark.parametrize("form", ["hf-4.30", "hf", "meta"])
def test_the_sum_is_upstreams_for_the_base_form_the_published_value_assumes(run_cli, zhixi_like, tmp_path, form):
    bases, diff_dir, diff, weights = zhixi_like
    fp16_buffers = {buffer_name(i): inv_freq().half() for i in range(LAYERS)}  # a transformers-4.30 conversion
    want64, want32 = upstream_sums(diff, {**weights, **fp16_buffers})
    got = _recover(run_cli, bases[form], diff_dir, tmp_path / "out", want32)
    assert got["sum_fp64"] == pytest.approx(want64, abs=1e-9)
    assert got["sum_fp32_upstream"] == pytest.approx(want32, abs=1e-4)
    fp32_buffers = {buffer_name(i): inv_freq() for i in range(LAYERS)}
    other64, _ = upstream_sums(diff, {**weights, **fp32_buffers})
    assert abs(other64 - want64) > 1e-6  # the two forms are told apart at this size


def test_a_base_without_buffers_can_reproduce_upstream_on_buffers_computed_at_init(run_cli, zhixi_like, tmp_path):
    bases, diff_dir, diff, weights = zhixi_like
    fp32_buffers = {buffer_name(i): inv_freq() for i in range(LAYERS)}  # transformers 4.30's init, in fp32
    want64, want32 = upstream_sums(diff, {**weights, **fp32_buffers})
    for form in ("hf", "meta"):
        got = _recover(run_cli, bases[form], diff_dir, tmp_path / f"out-{form}", want32, "--base-inv-freq", "fp32")
        assert got["sum_fp64"] == pytest.approx(want64, abs=1e-9)
        assert got["sum_fp32_upstream"] == pytest.approx(want32, abs=1e-4)
    # A base that stores its buffers: the stored values are used, whatever the flag says.
    stored64, _ = upstream_sums(diff, {**weights, **{buffer_name(i): inv_freq().half() for i in range(LAYERS)}})
    got = _recover(run_cli, bases["hf-4.30"], diff_dir, tmp_path / "out-stored", stored64, "--base-inv-freq", "fp32")
    assert got["sum_fp64"] == pytest.approx(stored64, abs=1e-9)


def test_the_recovered_buffers_are_diff_plus_the_chosen_base_values(run_cli, zhixi_like, tmp_path):
    bases, diff_dir, diff, _ = zhixi_like
    for flag, values in (("fp16", inv_freq().half().float()), ("fp32", inv_freq())):
        out = tmp_path / f"out-{flag}"
        r = run_cli("recover", "--base", bases["meta"], "--diff", diff_dir, "-o", out, "--base-inv-freq", flag)
        assert r.exit_code == 0, r.stderr
        got = load_file(out / "model.safetensors")
        for i in range(LAYERS):
            assert torch.equal(got[buffer_name(i)], diff[buffer_name(i)] + values)


def test_at_zhixi_13b_size_a_miss_by_the_buffers_form_names_the_flag():
    """40 layers, head dim 128: fp16 and fp32 buffers differ by about 0.0105 in the sum, more than the 1e-2
    tolerance; a base whose buffers llmkit computed in the other form is refused with the flag that fits."""
    from llmkit.recover.integrity import ZHIXI_13B_FP32_SUM, _judge_sum

    gap = 40 * (float(inv_freq(128).half().double().sum()) - float(inv_freq(128).double().sum()))
    assert 0.0104 < gap < 0.0106
    check = _judge_sum(
        ZHIXI_13B_FP32_SUM,
        1e-2,
        ZHIXI_13B_FP32_SUM - gap,
        None,
        40,
        40,
        (128, 10000.0),
        computed=40,
        inv_freq_form="fp32",
    )
    assert not check.passed
    assert "--base-inv-freq fp16" in check.explanation and "agrees" in check.explanation
