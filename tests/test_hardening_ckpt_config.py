"""from-ckpt without --config derives config.json only where the shapes decide it: the published LLaMA
sizes. Anything else (a tiny test model, TinyLlama's 64-wide heads, OpenLLaMA-3B's 100-wide ones) is
refused with one line asking for --config, before any output; so is --rotary meta, whose permutation
needs the head count. The head counts below are the published configs' (Meta's params.json of LLaMA
7B/13B/30B/65B, the Llama-2 config.json files, and the TinyLlama / OpenLLaMA config.json files)."""

from __future__ import annotations

import json

import pytest
import torch
from common import one_error_line

from llmkit.errors import InputError
from llmkit.io.mindspore.mindformers import check_complete, guessed_config

# name: (hidden, intermediate, heads, kv heads, layers) as published
PUBLISHED = {
    "LLaMA-7B": (4096, 11008, 32, 32, 32),
    "LLaMA-13B": (5120, 13824, 40, 40, 40),
    "LLaMA-30B": (6656, 17920, 52, 52, 60),
    "LLaMA-65B": (8192, 22016, 64, 64, 80),
    "Llama-2-7b-hf": (4096, 11008, 32, 32, 32),
    "Llama-2-13b-hf": (5120, 13824, 40, 40, 40),
    "Llama-2-70b-hf": (8192, 28672, 64, 8, 80),
}
# LLaMA-architecture models whose heads are not 128 wide: a guess from the shapes would be wrong.
UNDECIDED = {
    "TinyLlama-1.1B": (2048, 5632, 32, 4, 22),  # head_dim 64: "2048 / 128 = 16 heads" would be wrong
    "open_llama_3b": (3200, 8640, 32, 32, 26),  # head_dim 100: "3200 / 128 = 25 heads" would be wrong
}


def hf_shapes(hidden: int, inter: int, heads: int, kv: int, layers: int, vocab: int = 32000) -> dict:
    """Every HF LLaMA tensor's shape, written out from the architecture (transformers' LlamaModel)."""
    d = hidden // heads
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (heads * d, hidden),
                p + "self_attn.k_proj.weight": (kv * d, hidden),
                p + "self_attn.v_proj.weight": (kv * d, hidden),
                p + "self_attn.o_proj.weight": (hidden, heads * d),
                p + "mlp.gate_proj.weight": (inter, hidden),
                p + "mlp.up_proj.weight": (inter, hidden),
                p + "mlp.down_proj.weight": (hidden, inter),
                p + "input_layernorm.weight": (hidden,),
                p + "post_attention_layernorm.weight": (hidden,),
            }
        )
    return shapes


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_published_llama_sizes_give_their_published_head_counts(name):
    hidden, inter, heads, kv, layers = PUBLISHED[name]
    shapes = hf_shapes(hidden, inter, heads, kv, layers)
    cfg, guessed = guessed_config(shapes, torch.float16, "m.ckpt")
    assert (
        cfg["hidden_size"],
        cfg["intermediate_size"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["num_hidden_layers"],
        cfg["tie_word_embeddings"],
    ) == (hidden, inter, heads, kv, layers, False)
    assert any(g.startswith(f"num_attention_heads={heads} ") for g in guessed)
    check_complete(cfg, shapes, "m.ckpt")  # the derived config describes exactly these tensors


@pytest.mark.parametrize("name", sorted(UNDECIDED))
def test_sizes_that_do_not_decide_the_heads_ask_for_config(name):
    with pytest.raises(InputError) as e:
        guessed_config(hf_shapes(*UNDECIDED[name]), torch.float16, "m.ckpt")
    assert "--config" in str(e.value) and "m.ckpt" in str(e.value) and "num_attention_heads" in str(e.value)


def test_a_derived_config_is_not_made_for_a_model_missing_a_tensor():
    shapes = hf_shapes(*PUBLISHED["LLaMA-7B"])
    no_head = {k: v for k, v in shapes.items() if k != "lm_head.weight"}
    with pytest.raises(InputError, match=r"lm_head\.weight.*--config"):
        guessed_config(no_head, torch.float16, "m.ckpt")  # not guessed as tied: no published size ties it
    no_q1 = {k: v for k, v in shapes.items() if k != "model.layers.1.self_attn.q_proj.weight"}
    cfg, _ = guessed_config(no_q1, torch.float16, "m.ckpt")
    with pytest.raises(InputError, match=r"lacks 1 tensor.*model\.layers\.1\.self_attn\.q_proj\.weight"):
        check_complete(cfg, no_q1, "m.ckpt")


@pytest.mark.parametrize("more", [(), ("--rotary", "meta"), ("--dry-run",), ("--names", "keep")])
def test_from_ckpt_without_config_refuses_a_model_whose_heads_the_shapes_do_not_decide(
    tmp_path, run_cli, tiny_factory, more
):
    m = tiny_factory("safetensors")  # 4 heads of 16: "64 / 128" gave 1 head
    assert run_cli("to-ckpt", m.path, "-o", tmp_path / "m.ckpt").exit_code == 0
    line = one_error_line(
        run_cli("from-ckpt", tmp_path / "m.ckpt", "-o", tmp_path / "out", *more), tmp_path / "m.ckpt", "--config"
    )
    assert "num_attention_heads" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt"]
    r = run_cli("from-ckpt", tmp_path / "m.ckpt", "-o", tmp_path / "out", "--config", m.path, *more)
    assert r.exit_code == 0, r.stderr
    if "--dry-run" not in more:
        assert json.loads((tmp_path / "out" / "config.json").read_text())["num_attention_heads"] == 4


def _record(name: str, shape: tuple[int, ...], data_len: int) -> bytes:
    """A MindSpore record's header (protobuf: Checkpoint{value: Value{tag, tensor: Tensor{dims, tensor_type,
    tensor_content}}}), the tensor_content's bytes left to follow."""

    def varint(n: int) -> bytes:
        out = b""
        while n >= 0x80:
            out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
        return out + bytes([n])

    def field(key: int, body: bytes) -> bytes:
        return bytes([key]) + varint(len(body)) + body

    tensor_head = b"".join(b"\x08" + varint(d) for d in shape) + field(0x12, b"Float16") + b"\x1a" + varint(data_len)
    value_head = field(0x0A, name.encode()) + b"\x12" + varint(len(tensor_head) + data_len) + tensor_head
    return b"\x0a" + varint(len(value_head) + data_len) + value_head


def test_a_llama_7b_shaped_checkpoint_derives_its_published_config(tmp_path, run_cli):
    """One layer of LLaMA-7B's shapes in fp16 (a sparse file: the data is never read by a dry run)."""
    hidden, inter, heads, kv, _ = PUBLISHED["LLaMA-7B"]
    shapes = hf_shapes(hidden, inter, heads, kv, 1, vocab=8)
    mf = {
        "model.embed_tokens.weight": "model.tok_embeddings.embedding_weight",
        "model.norm.weight": "model.norm_out.weight",
        "self_attn.q_proj": "attention.wq",
        "self_attn.k_proj": "attention.wk",
        "self_attn.v_proj": "attention.wv",
        "self_attn.o_proj": "attention.wo",
        "mlp.gate_proj": "feed_forward.w1",
        "mlp.down_proj": "feed_forward.w2",
        "mlp.up_proj": "feed_forward.w3",
        "input_layernorm": "attention_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    path = tmp_path / "7b.ckpt"
    with open(path, "wb") as f:
        for name, shape in shapes.items():
            for hf, ms in mf.items():
                name = name.replace(hf, ms)
            n = 2 * int(torch.tensor(shape).prod())
            f.write(_record(name, shape, n))
            f.seek(n, 1)
        f.truncate()
    assert path.stat().st_size > 400e6
    for more in ((), ("--rotary", "meta")):
        r = run_cli("from-ckpt", path, "-o", tmp_path / "out", "--dry-run", "--json", *more)
        assert r.exit_code == 0, r.stderr
        assert r.json()["config_from"] == "derived"
        assert any("num_attention_heads=32 (the LLaMA-7B" in n["text"] for n in r.json()["notices"])
