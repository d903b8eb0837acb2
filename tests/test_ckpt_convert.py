"""to-ckpt / from-ckpt behaviour: names, dtypes, rotary rows by the published formula, unmapped and empty
tensors, configs, safe writes and bad input (MindSpore itself: tests/test_ckpt_mindspore.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmkit.io.mindspore.mindformers import hf_to_mindformers, mindformers_to_hf
from llmkit.io.mindspore.reader import CkptFile
from llmkit.tiny import tiny_model


def read_ckpt(path: Path) -> dict[str, torch.Tensor]:
    f = CkptFile(path)
    try:
        return {k: f.get(k) for k in f.infos}
    finally:
        f.close()


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def meta_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """SPEC.md section 4's permutation inverted: HF rotate-half rows -> Meta's interleaved rows."""
    rows, cols = w.shape
    return w.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def config_dtype(folder: Path) -> str:
    cfg = json.loads((folder / "config.json").read_text())
    return cfg.get("torch_dtype") or cfg["dtype"]  # transformers 5 writes "dtype"


def heads_of(folder: Path) -> int:
    return json.loads((folder / "config.json").read_text())["num_attention_heads"]


# ------------------------------------------------------------------ names and values


def test_spec_section_5_name_table():
    pairs = {
        "model.embed_tokens.weight": "model.tok_embeddings.embedding_weight",
        "model.layers.3.self_attn.q_proj.weight": "model.layers.3.attention.wq.weight",
        "model.layers.3.self_attn.k_proj.weight": "model.layers.3.attention.wk.weight",
        "model.layers.3.self_attn.v_proj.weight": "model.layers.3.attention.wv.weight",
        "model.layers.3.self_attn.o_proj.weight": "model.layers.3.attention.wo.weight",
        "model.layers.3.mlp.gate_proj.weight": "model.layers.3.feed_forward.w1.weight",
        "model.layers.3.mlp.down_proj.weight": "model.layers.3.feed_forward.w2.weight",
        "model.layers.3.mlp.up_proj.weight": "model.layers.3.feed_forward.w3.weight",
        "model.layers.3.input_layernorm.weight": "model.layers.3.attention_norm.weight",
        "model.layers.3.post_attention_layernorm.weight": "model.layers.3.ffn_norm.weight",
        "model.norm.weight": "model.norm_out.weight",
        "lm_head.weight": "lm_head.weight",
    }
    for hf, mf in pairs.items():
        assert hf_to_mindformers(hf) == mf and mindformers_to_hf(mf) == hf
    for other in ("model.layers.0.self_attn.rotary_emb.inv_freq", "adam_m.model.norm_out.weight", "global_step"):
        assert hf_to_mindformers(other) is None and mindformers_to_hf(other) is None


def test_to_ckpt_keeps_source_order_and_values_and_casts_once(tmp_path, run_cli, tiny_factory):
    m = tiny_factory("safetensors")
    src = load_file(m.path / "model.safetensors")
    assert run_cli("to-ckpt", m.path, "-o", tmp_path / "a.ckpt", "--dtype", "bf16").exit_code == 0
    got = read_ckpt(tmp_path / "a.ckpt")
    # transformers' state-dict order (the MindFormers converter's), not the name-sorted safetensors order
    assert list(got) == [hf_to_mindformers(k) for k in m.state] != [hf_to_mindformers(k) for k in src]
    for k, v in src.items():
        assert torch.equal(got[hf_to_mindformers(k)], v.to(torch.bfloat16)), k
    assert run_cli("to-ckpt", m.path, "-o", tmp_path / "b.ckpt", "--names", "hf").exit_code == 0
    got = read_ckpt(tmp_path / "b.ckpt")
    assert list(got) == list(m.state) and all(torch.equal(got[k], v) for k, v in src.items())


def test_rotary_meta_rows_follow_the_published_permutation_and_come_back(tmp_path, run_cli, tiny_factory):
    m = tiny_factory("safetensors")
    heads = heads_of(m.path)
    assert run_cli("to-ckpt", m.path, "-o", tmp_path / "r06.ckpt", "--rotary", "meta").exit_code == 0
    got = read_ckpt(tmp_path / "r06.ckpt")
    for k, v in m.state.items():
        want = meta_rows(v, heads) if (".q_proj." in k or ".k_proj." in k) else v
        assert torch.equal(got[hf_to_mindformers(k)], want), k
    assert not torch.equal(got["model.layers.0.attention.wq.weight"], m.state["model.layers.0.self_attn.q_proj.weight"])
    # from-ckpt --rotary meta undoes it (a round trip, on top of the formula above).
    r = run_cli("from-ckpt", tmp_path / "r06.ckpt", "-o", tmp_path / "back", "--rotary", "meta", "--config", m.path)
    assert r.exit_code == 0, r.stderr
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert set(back) == set(m.state) and all(torch.equal(back[k], v) for k, v in m.state.items())


def test_rotary_meta_needs_the_head_count(tmp_path, run_cli, tiny_factory):
    m = tiny_factory("safetensors")
    src = tmp_path / "noconfig"
    src.mkdir()
    shutil.copy(m.path / "model.safetensors", src)
    r = run_cli("to-ckpt", src, "-o", tmp_path / "x.ckpt", "--rotary", "meta")
    assert r.exit_code == 2 and "num_attention_heads" in r.stderr and not (tmp_path / "x.ckpt").exists()


def test_a_meta_folder_converts_like_its_hf_view(tmp_path, run_cli, tiny_factory):
    meta, hf = tiny_factory("meta"), tiny_factory("safetensors")
    assert run_cli("to-ckpt", meta.path, "-o", tmp_path / "m.ckpt").exit_code == 0
    got = read_ckpt(tmp_path / "m.ckpt")
    assert set(got) == {hf_to_mindformers(k) for k in hf.state}
    assert all(torch.equal(got[hf_to_mindformers(k)], v) for k, v in hf.state.items())


def test_mindformers_named_safetensors_folder(tmp_path, run_cli, tiny_factory):
    m = tiny_factory("safetensors")
    r = run_cli("to-ckpt", m.path, "-o", tmp_path / "st", "--format", "safetensors", "--dtype", "fp16")
    assert r.exit_code == 0, r.stderr
    got = load_file(tmp_path / "st" / "model.safetensors")
    assert set(got) == {hf_to_mindformers(k) for k in m.state}
    assert config_dtype(tmp_path / "st") == "float16"
    r = run_cli("to-ckpt", m.path, "-o", tmp_path / "st2", "--format", "safetensors", "--crc")
    assert r.exit_code == 2 and "--crc" in r.stderr


# ------------------------------------------------------------------ tensors with no place


def _with_extra(tmp_path: Path, tiny_factory, extra: dict[str, torch.Tensor]) -> Path:
    m = tiny_factory("safetensors")
    folder = tmp_path / "src"
    shutil.copytree(m.path, folder)
    tensors = load_file(folder / "model.safetensors")
    tensors.update(extra)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_unmapped_tensors_are_kept_with_a_warning_or_refused_with_strict(tmp_path, run_cli, tiny_factory):
    inv = "model.layers.0.self_attn.rotary_emb.inv_freq"
    src = _with_extra(
        tmp_path, tiny_factory, {inv: torch.arange(8, dtype=torch.float32), "model.empty": torch.zeros(0, 4)}
    )
    r = run_cli("to-ckpt", src, "-o", tmp_path / "a.ckpt", "--json")
    assert r.exit_code == 0
    assert r.json()["unmapped"] == [inv]
    notices = {n["text"] for n in r.json()["notices"]}
    assert any("no MindFormers LLaMA name" in t and inv in t for t in notices)
    assert any("empty tensor(s) left out, as MindSpore does: model.empty" in t for t in notices)
    got = read_ckpt(tmp_path / "a.ckpt")
    assert inv in got and "model.empty" not in got
    r = run_cli("to-ckpt", src, "-o", tmp_path / "b.ckpt", "--strict")
    assert r.exit_code == 2 and inv in r.stderr and not (tmp_path / "b.ckpt").exists()


def test_from_ckpt_leaves_training_state_out_keeps_it_with_names_keep_refuses_with_strict(
    tmp_path, run_cli, tiny_factory
):
    m = tiny_factory("safetensors")
    ckpt = tmp_path / "train.ckpt"
    assert run_cli("to-ckpt", m.path, "-o", ckpt).exit_code == 0
    stored = read_ckpt(ckpt)
    extra = {"adam_m.model.norm_out.weight": torch.zeros(64), "global_step": torch.tensor(100, dtype=torch.int32)}
    from llmkit.io.core.sink import open_sink
    from llmkit.io.core.spec import TensorSpec

    specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in {**stored, **extra}.items()]
    with open_sink("ckpt", tmp_path / "train2.ckpt", specs) as sink:
        for k, v in {**stored, **extra}.items():
            sink.write(k, v)
    r = run_cli("from-ckpt", tmp_path / "train2.ckpt", "-o", tmp_path / "hf", "--config", m.path, "--json")
    assert r.exit_code == 0 and sorted(r.json()["unmapped"]) == sorted(extra)
    assert set(load_file(tmp_path / "hf" / "model.safetensors")) == set(m.state)
    r = run_cli("from-ckpt", tmp_path / "train2.ckpt", "-o", tmp_path / "keep", "--names", "keep", "--config", m.path)
    assert r.exit_code == 0 and set(load_file(tmp_path / "keep" / "model.safetensors")) == set(stored) | set(extra)
    r = run_cli("from-ckpt", tmp_path / "train2.ckpt", "-o", tmp_path / "strict", "--strict")
    assert r.exit_code == 2 and "global_step" in r.stderr and not (tmp_path / "strict").exists()


# ------------------------------------------------------------------ configs


def test_a_derived_config_is_announced_and_works_when_the_shapes_decide_the_heads(tmp_path, run_cli, monkeypatch):
    """Only the published LLaMA sizes decide the head count (tests/test_hardening_ckpt_config.py checks
    that table against the published configs); a 256-wide size added to it stands for one here, so the
    derived config can be loaded by transformers at test size."""
    from transformers import LlamaForCausalLM

    import llmkit.io.mindspore.mindformers as mf

    monkeypatch.setitem(mf.KNOWN_LLAMA_SHAPES, (256, 512), ("TEST-256", 2))
    wide = tmp_path / "wide"
    model = tiny_model(3, hidden=256, heads=2, intermediate=512)  # head_dim 128, as every LLaMA size
    model.save_pretrained(wide)
    assert run_cli("to-ckpt", wide, "-o", tmp_path / "w.ckpt").exit_code == 0
    r = run_cli("from-ckpt", tmp_path / "w.ckpt", "-o", tmp_path / "back", "--json")
    assert r.exit_code == 0 and r.json()["config_from"] == "derived"
    warning = next(n["text"] for n in r.json()["notices"] if n["level"] == "warning")
    assert "num_attention_heads=2 (the TEST-256 shapes)" in warning and "rms_norm_eps" in warning
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]) == (
        256,
        512,
        2,
        100,
    )
    ids = torch.tensor([[1, 4, 9, 16, 25]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, LlamaForCausalLM.from_pretrained(tmp_path / "back").eval()(ids).logits)


def test_a_config_that_disagrees_with_the_tensors_is_refused(tmp_path, run_cli, tiny_factory):
    m = tiny_factory("safetensors")
    assert run_cli("to-ckpt", m.path, "-o", tmp_path / "m.ckpt").exit_code == 0
    cfg = json.loads((m.path / "config.json").read_text())
    cfg["vocab_size"] = 49953
    (tmp_path / "other.json").write_text(json.dumps(cfg))
    r = run_cli("from-ckpt", tmp_path / "m.ckpt", "-o", tmp_path / "out", "--config", tmp_path / "other.json")
    assert r.exit_code == 2 and "vocab_size=49953" in r.stderr and "other.json" in r.stderr
    assert not (tmp_path / "out").exists()


def test_from_ckpt_with_a_config_folder_carries_its_tokenizer_and_writes_bin(tmp_path, run_cli, tiny_factory):
    m = tiny_factory("safetensors")
    assert run_cli("to-ckpt", m.path, "-o", tmp_path / "m.ckpt", "--dtype", "fp16").exit_code == 0
    r = run_cli("from-ckpt", tmp_path / "m.ckpt", "-o", tmp_path / "out", "--config", m.path, "--format", "bin")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (m.path / "tokenizer.model").read_bytes()
    assert config_dtype(tmp_path / "out") == "float16"
    state = torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True)
    assert all(torch.equal(state[k], v.half()) for k, v in m.state.items())


# ------------------------------------------------------------------ safe writes and bad input


def test_an_existing_output_needs_force_and_only_that_file_is_replaced(tmp_path, run_cli, tiny_factory):
    m = tiny_factory("safetensors")
    out = tmp_path / "o" / "m.ckpt"
    out.parent.mkdir()
    (out.parent / "model.safetensors").write_bytes(b"not mine")
    out.write_bytes(b"old")
    r = run_cli("to-ckpt", m.path, "-o", out)
    assert r.exit_code == 2 and "exists" in r.stderr and out.read_bytes() == b"old"
    assert run_cli("to-ckpt", m.path, "-o", out, "--force").exit_code == 0
    assert len(read_ckpt(out)) == len(m.state)
    assert (out.parent / "model.safetensors").read_bytes() == b"not mine"
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.ckpt", "model.safetensors"]


@pytest.mark.parametrize("where", ["folder", "inside-input", "input-file"])
def test_outputs_that_are_folders_or_inputs_are_refused(tmp_path, run_cli, tiny_factory, where):
    m = tiny_factory("safetensors")
    src = tmp_path / "src"
    shutil.copytree(m.path, src)
    before = tree(src)
    target = {"folder": tmp_path, "inside-input": src / "m.ckpt", "input-file": src / "model.safetensors"}[where]
    r = run_cli("to-ckpt", src, "-o", target)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: ")
    assert tree(src) == before


def test_dry_run_writes_nothing_and_reports_the_plan(tmp_path, run_cli, tiny_factory):
    m = tiny_factory("safetensors")
    r = run_cli("to-ckpt", m.path, "-o", tmp_path / "m.ckpt", "--dry-run", "--json")
    assert r.exit_code == 0 and list(tmp_path.iterdir()) == []
    plan = r.json()["plan"]
    assert plan["files"] == ["m.ckpt"] and plan["tensors"] == len(m.state)
    assert plan["output_bytes"] > sum(v.numel() * 4 for v in m.state.values())  # records have headers
    assert r.json()["dry_run"] is True and r.json()["outputs"] == []


def test_a_damaged_checkpoint_fails_before_any_output(tmp_path, run_cli, tiny_factory):
    m = tiny_factory("safetensors")
    good = tmp_path / "m.ckpt"
    assert run_cli("to-ckpt", m.path, "-o", good, "--crc").exit_code == 0
    data = good.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    r = run_cli("from-ckpt", tmp_path / "cut.ckpt", "-o", tmp_path / "a")
    assert r.exit_code == 2 and "cut.ckpt" in r.stderr and "at byte" in r.stderr and not (tmp_path / "a").exists()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01  # inside some tensor's data: only the CRC can tell
    (tmp_path / "flip.ckpt").write_bytes(bytes(flipped))
    r = run_cli("from-ckpt", tmp_path / "flip.ckpt", "-o", tmp_path / "b", "--config", m.path)
    assert r.exit_code == 2 and "CRC mismatch" in r.stderr
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_wrong_kinds_of_input_are_named(tmp_path, run_cli, tiny_factory, lora_work):
    m = tiny_factory("safetensors")
    r = run_cli("from-ckpt", m.path, "-o", tmp_path / "a")
    assert r.exit_code == 2 and "not a MindSpore checkpoint" in r.stderr
    r = run_cli("to-ckpt", lora_work / "cute", "-o", tmp_path / "b.ckpt")
    assert r.exit_code == 2 and "merge-lora" in r.stderr
