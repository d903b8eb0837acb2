"""Tiny peft LoRA adapters for the tests and the demo, written by peft itself.

Each adapter is made the way a user's adapter is: ``LoraConfig`` + ``get_peft_model`` on the tiny LLaMA of
:mod:`llmkit.tiny` (resized first when the adapter carries a bigger vocabulary), non-zero ``lora_B`` (peft
initialises it to zero, which would make every merge a no-op) and non-trivial saved modules, then
``save_pretrained`` as ``adapter_model.safetensors`` or ``.bin``. Deterministic by seed.

The Chinese-LLaMA/Alpaca look-alikes mirror the real recipe at toy scale: the base has 100 tokens (or 90,
standing in for LLaMA's 32000), the "Chinese-LLaMA" LoRA 100 tokens and the "Chinese-Alpaca" LoRA 101 (one
extra ``[PAD]``, like 49953 -> 49954), both with full ``embed_tokens``/``lm_head`` as ``modules_to_save`` and
their own tokenizer folder.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llmkit.tiny import TINY_HEADS, TINY_HIDDEN, TINY_LAYERS, TINY_VOCAB, tiny_model, write_tokenizer

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj")


def _randomise(peft_model, seed: int) -> None:
    """Give every adapter tensor (LoRA A/B, saved modules) seeded random values of a visible size."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * 0.05)


def save_adapter_for(
    model,
    folder: Path,
    *,
    seed: int = 1,
    target_modules: Sequence[str] | str = ("q_proj", "v_proj"),
    r: int = 4,
    lora_alpha: float = 8,
    use_rslora: bool = False,
    fan_in_fan_out: bool = False,
    modules_to_save: Sequence[str] | None = None,
    rank_pattern: dict | None = None,
    alpha_pattern: dict | None = None,
    lora_bias: bool = False,
    safe_serialization: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Wrap ``model`` with a fresh LoRA (peft), randomise it and ``save_pretrained`` it into ``folder``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,  # type: ignore[arg-type]  # peft annotates int, but scales by any number
        lora_dropout=0.0,
        use_rslora=use_rslora,
        fan_in_fan_out=fan_in_fan_out,
        target_modules=list(target_modules) if not isinstance(target_modules, str) else target_modules,
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        rank_pattern=rank_pattern or {},
        alpha_pattern=alpha_pattern or {},
        lora_bias=lora_bias,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. peft's fan_in_fan_out override on Linear layers
        peft_model = get_peft_model(model, config)
        _randomise(peft_model, seed)
        if dtype != torch.float32:
            peft_model = peft_model.to(dtype)
        folder = Path(folder)
        peft_model.save_pretrained(str(folder), safe_serialization=safe_serialization)
    return folder


def save_tiny_adapter(
    folder: Path,
    *,
    base_seed: int = 0,
    seed: int = 1,
    vocab_size: int = TINY_VOCAB,
    layers: int = TINY_LAYERS,
    tokenizer_pad: bool | None = None,
    **lora,
) -> Path:
    """A peft adapter for the tiny LLaMA of ``base_seed`` (hidden 64).

    ``vocab_size`` other than the tiny base's 100 resizes the model before the adapter is made (use it with
    ``modules_to_save=("embed_tokens", "lm_head")``). ``tokenizer_pad`` writes a tokenizer folder into the
    adapter: False = 100 tokens, True = 101 (with ``[PAD]``). Other keywords go to :func:`save_adapter_for`.
    """
    model = tiny_model(base_seed, layers=layers)
    if vocab_size != model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    folder = save_adapter_for(model, folder, seed=seed, **lora)
    if tokenizer_pad is not None:
        write_tokenizer(folder, pad_token=tokenizer_pad)
    return folder


def save_chinese_llama_like(
    folder: Path, *, base_seed: int = 0, seed: int = 11, layers: int = TINY_LAYERS, **lora
) -> Path:
    """A Chinese-LLaMA-LoRA look-alike: 7 linear targets, full embed/lm_head of 100 rows, 100-token tokenizer."""
    return save_tiny_adapter(
        folder,
        base_seed=base_seed,
        seed=seed,
        vocab_size=TINY_VOCAB,
        layers=layers,
        tokenizer_pad=False,
        target_modules=LLAMA_LINEAR,
        modules_to_save=("embed_tokens", "lm_head"),
        **lora,
    )


def save_chinese_alpaca_like(
    folder: Path, *, base_seed: int = 0, seed: int = 12, layers: int = TINY_LAYERS, **lora
) -> Path:
    """A Chinese-Alpaca-LoRA look-alike: like :func:`save_chinese_llama_like` with 101 tokens (``[PAD]``)."""
    return save_tiny_adapter(
        folder,
        base_seed=base_seed,
        seed=seed,
        vocab_size=TINY_VOCAB + 1,
        layers=layers,
        tokenizer_pad=True,
        target_modules=LLAMA_LINEAR,
        modules_to_save=("embed_tokens", "lm_head"),
        **lora,
    )


def save_cutegpt_like(folder: Path, *, base_seed: int = 0, seed: int = 13, layers: int = TINY_LAYERS) -> Path:
    """A CuteGPT-LoRA look-alike: r=8, alpha=16 on q_proj/v_proj, the base's own 100-token tokenizer."""
    return save_tiny_adapter(
        folder,
        base_seed=base_seed,
        seed=seed,
        layers=layers,
        tokenizer_pad=False,
        target_modules=("q_proj", "v_proj"),
        r=8,
        lora_alpha=16,
    )


def save_tiny_base(
    folder: Path,
    *,
    seed: int = 0,
    vocab_size: int = TINY_VOCAB,
    layers: int = TINY_LAYERS,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """A tiny LLaMA with any vocabulary size, saved by transformers without a tokenizer; returns its state."""
    model = tiny_model(seed, vocab_size=vocab_size, layers=layers, dtype=dtype)
    model.save_pretrained(Path(folder))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ GPT-2 (Conv1D layers: fan_in_fan_out)


def tiny_gpt2(seed: int = 0):
    """A tiny ``GPT2LMHeadModel`` (hidden 64, 2 layers): its linear layers are ``Conv1D`` with [in, out] weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=TINY_VOCAB, n_positions=64, n_embd=TINY_HIDDEN, n_layer=2, n_head=TINY_HEADS)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05 + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


def save_tiny_gpt2(folder: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    model = tiny_gpt2(seed)
    model.save_pretrained(Path(folder))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_tiny_gpt2_adapter(folder: Path, *, base_seed: int = 0, seed: int = 21, **lora) -> Path:
    """A LoRA on the tiny GPT-2's Conv1D layers (``c_attn``, ``c_fc``, both ``c_proj``), fan_in_fan_out."""
    lora.setdefault("target_modules", ("c_attn", "c_fc", "c_proj"))
    lora.setdefault("fan_in_fan_out", True)
    return save_adapter_for(tiny_gpt2(base_seed), folder, seed=seed, **lora)


# ------------------------------------------------------------------ the reference: peft itself


def peft_merged_state(
    base: Path, adapters: Sequence[Path], *, dtype: torch.dtype = torch.float32, autocast_adapter_dtype: bool = True
) -> dict[str, torch.Tensor]:
    """What peft makes of ``adapters`` on ``base``: the independent reference llmkit is checked against.

    The Chinese-LLaMA-Alpaca recipe, with today's libraries: load the base with transformers; for each adapter
    in order, resize the embeddings to ``len(tokenizer)`` when the adapter folder carries a tokenizer of
    another size, then ``PeftModel.from_pretrained(...).merge_and_unload()``.

    ``dtype`` is the output dtype. A base already in it is merged in it, as loaded (each adapter's sum rounded
    to it). A base in another dtype (e.g. fp32 base, fp16 output) is loaded in fp32, merged there, and the
    merged model is cast to ``dtype`` once at the end: one rounding (SPEC.md section 3).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # A transformers model, then each adapter's PeftModel merged back into one (their stubs disagree).
        model: Any = AutoModelForCausalLM.from_pretrained(Path(base), dtype="auto")
        if model.dtype != dtype:
            model = model.to(torch.float32)  # exact for fp16/bf16 weights
        for adapter in adapters:
            adapter = Path(adapter)
            if (adapter / "tokenizer.model").is_file() or (adapter / "tokenizer.json").is_file():
                size = len(AutoTokenizer.from_pretrained(adapter))
                if size != model.get_input_embeddings().weight.shape[0]:
                    model.resize_token_embeddings(size)
            model = PeftModel.from_pretrained(model, adapter, autocast_adapter_dtype=autocast_adapter_dtype)
            model = model.merge_and_unload()
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().clone() for k, v in model.state_dict().items()}
