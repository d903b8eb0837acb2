"""Tiny synthetic LLaMA models, tokenizers and adapters, deterministic by seed, for the demo and tests.

Models are written with the *reference* writers (transformers ``save_pretrained``, ``torch.save``),
never with llmkit's own writer, so reading them back is an independent check of llmkit's readers.
Sizes: hidden 64, 2 layers, 4 heads, vocab = tokenizer size (100 pieces); a few hundred KB.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from pathlib import Path

import torch

TINY_HIDDEN = 64
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_INTERMEDIATE = 176
TINY_VOCAB = 100

LAYOUTS = ("safetensors", "safetensors-sharded", "bin", "bin-sharded", "meta", "meta-2shards")

_WORDS = [
    "知识",
    "抽取",
    "模型",
    "中文",
    "大",
    "语言",
    "实体",
    "关系",
    "事件",
    "llama",
    "weight",
    "the",
    "of",
    "model",
    "data",
    "merge",
    "lora",
    "recover",
    "科技",
    "图谱",
]


def write_tokenizer(folder: Path, *, pad_token: bool = False) -> int:
    """Train a small SentencePiece BPE model offline and write a LLaMA tokenizer folder.

    Deterministic (fixed corpus, one thread). Returns ``len(tokenizer)``: 100, or 101 with
    ``pad_token`` (as Chinese-Alpaca adds one pad token to Chinese-LLaMA's vocabulary).
    """
    import sentencepiece as spm

    rng = random.Random(1234)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(12)) for _ in range(400)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=TINY_VOCAB,
        model_type="bpe",
        num_threads=1,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=False,
        minloglevel=2,
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "model_max_length": 128,
        **special,
    }
    size = TINY_VOCAB
    if pad_token:
        special["pad_token"] = "[PAD]"
        config["pad_token"] = "[PAD]"
        config["added_tokens_decoder"] = {
            str(TINY_VOCAB): {
                "content": "[PAD]",
                "special": True,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "single_word": False,
            }
        }
        (folder / "added_tokens.json").write_text(json.dumps({"[PAD]": TINY_VOCAB}) + "\n")
        size += 1
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return size


def tiny_config(
    vocab_size: int = TINY_VOCAB,
    *,
    layers: int = TINY_LAYERS,
    hidden: int = TINY_HIDDEN,
    heads: int = TINY_HEADS,
    intermediate: int = TINY_INTERMEDIATE,
    dtype: torch.dtype = torch.float32,
):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        torch_dtype=dtype,  # type: ignore[call-arg]  # not in LlamaConfig's signature: PretrainedConfig's **kwargs
    )


def tiny_model(
    seed: int = 0,
    *,
    vocab_size: int = TINY_VOCAB,
    layers: int = TINY_LAYERS,
    dtype: torch.dtype = torch.float32,
    hidden: int = TINY_HIDDEN,
    heads: int = TINY_HEADS,
    intermediate: int = TINY_INTERMEDIATE,
):
    """A randomly initialised ``LlamaForCausalLM``; norms are perturbed so that every tensor is non-trivial."""
    from transformers import LlamaForCausalLM

    cfg = tiny_config(vocab_size, layers=layers, hidden=hidden, heads=heads, intermediate=intermediate, dtype=dtype)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
            else:
                p.normal_(0.0, 0.05, generator=gen)
    return model.to(dtype).eval()  # type: ignore[arg-type]  # transformers' wrapped .to() is typed as taking a model


def meta_permute_inverse(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF rotate-half q/k rows -> Meta interleaved rows (inverse of SPEC.md section 4)."""
    dim1, dim2 = w.shape
    return w.view(n_heads, 2, dim1 // n_heads // 2, dim2).transpose(1, 2).reshape(dim1, dim2)


_HF_TO_META = [
    ("model.embed_tokens.weight", "tok_embeddings.weight"),
    ("model.norm.weight", "norm.weight"),
    ("lm_head.weight", "output.weight"),
]
_LAYER_MAP = [
    ("self_attn.q_proj", "attention.wq"),
    ("self_attn.k_proj", "attention.wk"),
    ("self_attn.v_proj", "attention.wv"),
    ("self_attn.o_proj", "attention.wo"),
    ("mlp.gate_proj", "feed_forward.w1"),
    ("mlp.down_proj", "feed_forward.w2"),
    ("mlp.up_proj", "feed_forward.w3"),
    ("input_layernorm", "attention_norm"),
    ("post_attention_layernorm", "ffn_norm"),
]


def hf_to_meta_state(state: dict[str, torch.Tensor], n_heads: int) -> dict[str, torch.Tensor]:
    """An HF LLaMA state dict in Meta naming and rotary layout (as Meta's consolidated.00.pth)."""
    out: dict[str, torch.Tensor] = {}
    for hf, meta in _HF_TO_META:
        out[meta] = state[hf].clone()
    layer = 0
    while f"model.layers.{layer}.input_layernorm.weight" in state:
        for hf, meta in _LAYER_MAP:
            w = state[f"model.layers.{layer}.{hf}.weight"].clone()
            if meta in ("attention.wq", "attention.wk"):
                w = meta_permute_inverse(w, n_heads)
            out[f"layers.{layer}.{meta}.weight"] = w
        layer += 1
    return out


def split_meta_state(state: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """Split a Meta state dict into model-parallel shards (13B rules, SPEC.md section 3)."""
    dim0 = ("wq", "wk", "wv", "w1", "w3")
    dim1 = ("wo", "w2")
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(parts)]
    for name, t in state.items():
        leaf = name.split(".")[-2]
        pieces: Sequence[torch.Tensor]
        if name == "tok_embeddings.weight" or leaf in dim1:
            pieces = torch.chunk(t, parts, dim=1)
        elif name == "output.weight" or leaf in dim0:
            pieces = torch.chunk(t, parts, dim=0)
        else:
            pieces = [t] * parts
        for shard, piece in zip(shards, pieces, strict=True):
            shard[name] = piece.clone()
    return shards


def save_tiny_model(
    folder: Path,
    layout: str = "safetensors",
    *,
    seed: int = 0,
    layers: int = TINY_LAYERS,
    dtype: torch.dtype = torch.float32,
    tokenizer: bool = True,
) -> dict[str, torch.Tensor]:
    """Write a tiny LLaMA in ``layout`` (see :data:`LAYOUTS`); return its HF state dict (the reference)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model(seed, layers=layers, dtype=dtype)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if layout == "safetensors":
        model.save_pretrained(folder)
    elif layout == "safetensors-sharded":
        model.save_pretrained(folder, max_shard_size="40KB")
    elif layout in ("bin", "bin-sharded"):
        model.config.save_pretrained(folder)
        if layout == "bin":
            torch.save(state, folder / "pytorch_model.bin")
        else:
            names = list(state)
            groups = [names[i : i + 6] for i in range(0, len(names), 6)]
            weight_map = {}
            for i, group in enumerate(groups, 1):
                fname = f"pytorch_model-{i:05d}-of-{len(groups):05d}.bin"
                torch.save({k: state[k] for k in group}, folder / fname)
                weight_map.update(dict.fromkeys(group, fname))
            total = sum(t.numel() * t.element_size() for t in state.values())
            (folder / "pytorch_model.bin.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
            )
    else:
        meta = hf_to_meta_state(state, TINY_HEADS)
        parts = 2 if layout == "meta-2shards" else 1
        for i, shard in enumerate(split_meta_state(meta, parts)):
            torch.save(shard, folder / f"consolidated.{i:02d}.pth")
        params = {
            "dim": TINY_HIDDEN,
            "multiple_of": 16,
            "n_heads": TINY_HEADS,
            "n_layers": layers,
            "norm_eps": 1e-6,
            "vocab_size": -1,
        }
        (folder / "params.json").write_text(json.dumps(params) + "\n")
    if tokenizer:
        write_tokenizer(folder)
        if layout.startswith("meta"):  # Meta ships tokenizer.model alone
            for extra in ("tokenizer_config.json", "special_tokens_map.json"):
                (folder / extra).unlink()
    return state


def write_random_meta(
    root: Path,
    *,
    layers: int,
    hidden: int,
    intermediate: int,
    vocab: int,
    heads: int,
    seed: int = 0,
    scale: float = 0.02,
) -> None:
    """Random fp16 LLaMA weights as Meta's 2-shard layout (13B-style split) + ``params.json`` in ``root``,
    one tensor generated at a time (for memory tests and benchmarks; no HF model behind it)."""
    g = torch.Generator().manual_seed(seed)
    shards: list[dict[str, torch.Tensor]] = [{}, {}]

    def put(name: str, shape: tuple[int, ...], dim: int | None) -> None:
        t = (torch.randn(shape, generator=g) * scale).half()
        for i, piece in enumerate(torch.chunk(t, 2, dim=dim) if dim is not None else (t, t)):
            shards[i][name] = piece.clone()

    put("tok_embeddings.weight", (vocab, hidden), 1)
    for i in range(layers):
        p = f"layers.{i}."
        for n in ("wq", "wk", "wv"):
            put(p + f"attention.{n}.weight", (hidden, hidden), 0)
        put(p + "attention.wo.weight", (hidden, hidden), 1)
        put(p + "feed_forward.w1.weight", (intermediate, hidden), 0)
        put(p + "feed_forward.w2.weight", (hidden, intermediate), 1)
        put(p + "feed_forward.w3.weight", (intermediate, hidden), 0)
        put(p + "attention_norm.weight", (hidden,), None)
        put(p + "ffn_norm.weight", (hidden,), None)
    put("norm.weight", (hidden,), None)
    put("output.weight", (vocab, hidden), 0)
    root.mkdir(parents=True)
    for i, s in enumerate(shards):
        torch.save(s, root / f"consolidated.{i:02d}.pth")
    (root / "params.json").write_text(
        json.dumps(
            {
                "dim": hidden,
                "multiple_of": 256,
                "n_heads": heads,
                "n_layers": layers,
                "norm_eps": 1e-6,
                "vocab_size": -1,
            }
        )
    )
