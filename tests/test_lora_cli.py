"""``llmkit merge-lora`` on the command line, and its Meta ``consolidated.NN.pth`` output."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path

import torch

from llmkit.io import open_source
from llmkit.tiny import TINY_HEADS
from llmkit.tiny_lora import peft_merged_state

LLMKIT = Path(sys.executable).with_name("llmkit")

# Meta name -> HF name, written out from SPEC.md section 4 (independent of llmkit.convert).
META_TOP = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
META_LAYER = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def meta_to_hf(name: str) -> str:
    if name in META_TOP:
        return META_TOP[name]
    _, layer, *rest = name.split(".")
    return f"model.layers.{layer}.{META_LAYER['.'.join(rest[:-1])]}.weight"


def permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """SPEC.md section 4: Meta interleaved rotary rows -> HF rotate-half."""
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def test_cli_merges_in_order_and_prints_json(lora_work, tmp_path, run_cli):
    res = run_cli(
        "merge-lora",
        "--base",
        lora_work / "base",
        "--lora",
        lora_work / "llama",
        "--lora",
        lora_work / "alpaca",
        "-o",
        tmp_path / "out",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    data = res.json()
    assert [Path(a["path"]).name for a in data["adapters"]] == ["llama", "alpaca"]
    assert (data["vocab_before"], data["vocab_after"]) == (100, 101)
    assert data["files"][0] == "model.safetensors" and "added_tokens.json" in data["files"]
    ref = peft_merged_state(lora_work / "base", [lora_work / "llama", lora_work / "alpaca"])
    with open_source(tmp_path / "out") as src:
        assert set(src.keys()) == set(ref) and all(torch.equal(t, ref[k]) for k, t in src)


def test_cli_wrong_order_exits_2_with_one_error_line_and_no_output(lora_work, tmp_path, run_cli):
    res = run_cli(
        "merge-lora",
        "--base",
        lora_work / "base",
        "--lora",
        lora_work / "alpaca",
        "--lora",
        lora_work / "llama",
        "-o",
        tmp_path / "out",
    )
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "swap the --lora options" in lines[0]
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert not (tmp_path / "out").exists()


def test_cli_dry_run_prints_the_plan_and_writes_nothing(lora_work, tmp_path, run_cli):
    res = run_cli(
        "merge-lora",
        "--base",
        lora_work / "base",
        "--lora",
        lora_work / "alpaca",
        "-o",
        tmp_path / "out",
        "--dry-run",
        "--format",
        "bin",
        "--shard-size",
        "100KB",
    )
    assert res.exit_code == 0, res.stderr
    assert "dry run" in res.stdout and "pytorch_model-00001-of-" in res.stdout and "100 -> 101" in res.stdout
    assert not (tmp_path / "out").exists()


def test_cli_bin_shards_with_dtype(lora_work, tmp_path, run_cli):
    res = run_cli(
        "merge-lora",
        "--base",
        lora_work / "base",
        "--lora",
        lora_work / "cute",
        "-o",
        tmp_path / "out",
        "--format",
        "bin",
        "--shard-size",
        "100KB",
        "--dtype",
        "bf16",
        "--quiet",
    )
    assert res.exit_code == 0, res.stderr
    assert res.stderr == ""
    assert (tmp_path / "out" / "pytorch_model.bin.index.json").is_file()
    ref = peft_merged_state(lora_work / "base", [lora_work / "cute"], dtype=torch.bfloat16)
    with open_source(tmp_path / "out") as src:
        assert src.layout == "bin-sharded" and all(torch.equal(t, ref[k]) for k, t in src)


def test_pth_output_matches_peft_after_repermuting(lora_work, tmp_path, run_cli):
    res = run_cli(
        "merge-lora",
        "--base",
        lora_work / "base",
        "--lora",
        lora_work / "cute",
        "--lora",
        lora_work / "alpaca",
        "-o",
        tmp_path / "out",
        "--format",
        "pth",
        "--dtype",
        "fp16",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.pth")) == ["consolidated.00.pth"]
    assert (out / "tokenizer.model").read_bytes() == (lora_work / "alpaca" / "tokenizer.model").read_bytes()
    ref = peft_merged_state(lora_work / "base", [lora_work / "cute", lora_work / "alpaca"], dtype=torch.float16)
    state = torch.load(out / "consolidated.00.pth", map_location="cpu", weights_only=True)
    assert len(state) == len(ref)
    for name, t in state.items():
        if name.endswith(("attention.wq.weight", "attention.wk.weight")):
            t = permute(t, TINY_HEADS)
        assert torch.equal(t, ref[meta_to_hf(name)]), name


def test_pth_params_json_describes_the_model(lora_work, tmp_path):
    from llmkit.lora import merge_lora

    merge_lora(lora_work / "base", [lora_work / "cute"], tmp_path / "out", fmt="pth")
    params = json.loads((tmp_path / "out" / "params.json").read_text())
    config = json.loads((lora_work / "base" / "config.json").read_text())
    assert params == {
        "dim": 64,
        "multiple_of": params["multiple_of"],
        "n_heads": 4,
        "n_layers": 2,
        "norm_eps": config["rms_norm_eps"],
        "vocab_size": -1,
    }
    # Meta's FFN size rule gives back the model's intermediate size
    m = params["multiple_of"]
    assert m * math.ceil(int(2 * 4 * params["dim"] / 3) / m) == config["intermediate_size"]


def test_pth_two_shards_follow_the_13b_split_rules(lora_work, tmp_path):
    from llmkit.lora import merge_lora

    merge_lora(lora_work / "base", [lora_work / "alpaca"], tmp_path / "one", fmt="pth")
    merge_lora(lora_work / "base", [lora_work / "alpaca"], tmp_path / "two", fmt="pth", pth_shards=2)
    whole = torch.load(tmp_path / "one" / "consolidated.00.pth", weights_only=True)
    parts = [torch.load(tmp_path / "two" / f"consolidated.0{i}.pth", weights_only=True) for i in range(2)]
    assert list(parts[0]) == list(parts[1]) == list(whole)
    # 101 output rows: the last shard takes the remainder, as the Chinese-LLaMA-Alpaca script ([24976, 24977])
    assert [p["output.weight"].shape[0] for p in parts] == [50, 51]
    for name, t in whole.items():
        leaf = name.split(".")[-2]
        if name == "tok_embeddings.weight" or leaf in ("wo", "w2"):
            dim = 1
        elif name == "output.weight" or leaf in ("wq", "wk", "wv", "w1", "w3"):
            dim = 0
        else:  # norms are replicated
            assert all(torch.equal(p[name], t) for p in parts), name
            continue
        if name != "output.weight":
            assert parts[0][name].shape[dim] == parts[1][name].shape[dim] == t.shape[dim] // 2, name
        assert torch.equal(torch.cat([p[name] for p in parts], dim=dim), t), name
    with open_source(tmp_path / "two") as src:  # llmkit's own Meta reader joins them back
        assert all(torch.equal(src.get(k), v) for k, v in whole.items())


def test_pth_shards_pass_the_zip_crc_check(lora_work, tmp_path):
    from llmkit.lora import merge_lora

    merge_lora(lora_work / "base", [lora_work / "cute"], tmp_path / "out", fmt="pth", pth_shards=2)
    for shard in sorted((tmp_path / "out").glob("consolidated.*.pth")):
        with zipfile.ZipFile(shard) as zf:
            assert zf.testzip() is None, shard


def test_end_to_end_with_the_installed_command(lora_work, tmp_path):
    proc = subprocess.run(
        [
            str(LLMKIT),
            "merge-lora",
            "--base",
            str(lora_work / "base"),
            "--lora",
            str(lora_work / "cute"),
            "-o",
            str(tmp_path / "out"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tensors"] == 21
    proc = subprocess.run(
        [
            str(LLMKIT),
            "merge-lora",
            "--base",
            str(lora_work / "base"),
            "--lora",
            str(lora_work / "cute"),
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "--force" in proc.stderr
