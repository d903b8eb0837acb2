"""Every adapter layout peft writes for saved modules, merged by llmkit and by peft itself.

Each adapter is made here with the installed peft (``get_peft_model`` + ``save_pretrained``) on a tiny LLaMA
loaded from its folder, resized first when the case has a bigger vocabulary (that is what makes peft's
``save_embedding_layers="auto"`` save the embedding layers). LoRA A/B and the ``modules_to_save`` copies get
seeded random values, so no merge is a no-op. The expected model is peft's own
``PeftModel.from_pretrained(base, adapter).merge_and_unload()`` of the same adapter on the same base (resized
the same way first, as peft requires); llmkit gets the original, unresized base folder, as users have it, and
must give the same tensors bit for bit, the resized vocabulary rows included.

What peft 0.21 does with each layout (found by experiment, see ``llmkit.lora._saved_modules``): the plain
``X.weight`` wins; ``X.modules_to_save.weight`` is an unexpected key it ignores; ``X.original_module.weight``
is loaded into the untrained copy that ``merge_and_unload`` throws away.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from common import assert_same, merged_state
from safetensors.torch import load_file

from llmkit.lora import merge_lora
from llmkit.tiny import write_tokenizer

PREFIX = "base_model.model."
VOCAB_TENSORS = ("model.embed_tokens", "lm_head")


def peft_adapter(
    base: Path,
    folder: Path,
    *,
    vocab: int | None,
    target_modules: list[str],
    modules_to_save: list[str] | None,
    safe: bool = True,
    seed: int = 7,
) -> dict[str, torch.Tensor]:
    """A LoRA made and saved by peft on ``base`` (resized to ``vocab`` first); returns the saved tensors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(base)
        if vocab is not None:
            model.resize_token_embeddings(vocab)
        config = LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=target_modules, modules_to_save=modules_to_save
        )
        peft_model = get_peft_model(model, config)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name or "modules_to_save" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        peft_model.save_pretrained(folder, safe_serialization=safe)
    if vocab is not None:  # the tokenizer that goes with the resized vocabulary, as adapters ship it
        assert write_tokenizer(folder, pad_token=True) == vocab
    return read_adapter(folder)


def read_adapter(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "adapter_model.safetensors").is_file():
        return load_file(folder / "adapter_model.safetensors")
    return torch.load(folder / "adapter_model.bin", weights_only=True)


def peft_merged(base: Path, adapter: Path, vocab: int | None) -> dict[str, torch.Tensor]:
    """peft's merge: the base loaded by transformers, resized as for training, the adapter loaded and merged."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(base)
        if vocab is not None:
            model.resize_token_embeddings(vocab)
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def saved_modules(saved: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k.removeprefix(PREFIX) for k in saved if ".lora_" not in k)


# (id, vocab, target_modules, modules_to_save, the non-LoRA keys peft 0.21 writes)
LAYOUTS = [
    (
        "resized-modules-to-save",
        101,
        ["q_proj", "v_proj"],
        ["embed_tokens", "lm_head"],
        [
            "lm_head.modules_to_save.weight",
            "lm_head.original_module.weight",
            "lm_head.weight",
            "model.embed_tokens.modules_to_save.weight",
            "model.embed_tokens.original_module.weight",
            "model.embed_tokens.weight",
        ],
    ),
    (
        "modules-to-save-same-vocab",
        None,
        ["q_proj", "v_proj"],
        ["embed_tokens", "lm_head"],
        ["lm_head.weight", "model.embed_tokens.weight"],
    ),
    (
        "resized-saved-embedding-layers",
        101,
        ["q_proj", "v_proj"],
        None,
        ["lm_head.weight", "model.embed_tokens.weight"],
    ),
    (
        "resized-embed-to-save-lm-head-saved-layer",
        101,
        ["q_proj"],
        ["embed_tokens"],
        [
            "lm_head.weight",
            "model.embed_tokens.modules_to_save.weight",
            "model.embed_tokens.original_module.weight",
            "model.embed_tokens.weight",
        ],
    ),
    (
        "resized-lora-on-embeddings",
        101,
        ["embed_tokens", "q_proj", "lm_head"],
        None,
        ["lm_head.base_layer.weight", "model.embed_tokens.base_layer.weight"],
    ),
]


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("case,vocab,targets,to_save,keys", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_every_peft_layout_merges_bit_identical_to_peft(
    tiny_factory, tmp_path, run_cli, case, vocab, targets, to_save, keys, safe
):
    base = tiny_factory("safetensors").path  # the original 100-token base
    adapter = tmp_path / "adapter"
    saved = peft_adapter(base, adapter, vocab=vocab, target_modules=targets, modules_to_save=to_save, safe=safe)
    assert saved_modules(saved) == keys  # the layout this case is about, as the installed peft writes it
    res = run_cli("merge-lora", "--base", base, "--lora", adapter, "-o", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.stderr
    assert res.json()["vocab_after"] == (vocab or 100)
    got = merged_state(tmp_path / "out")
    assert_same(got, peft_merged(base, adapter, vocab))
    for module in VOCAB_TENSORS:  # the merged vocabulary rows are the adapter's, never original_module's
        original = saved.get(f"{PREFIX}{module}.original_module.weight")
        if original is not None:
            assert not torch.equal(got[f"{module}.weight"], original)
            assert torch.equal(got[f"{module}.weight"], saved[f"{PREFIX}{module}.modules_to_save.weight"])


def test_original_module_never_wins_even_when_it_differs_from_the_saved_copies(tiny_factory, tmp_path):
    # The three tensors peft 0.21 writes per resized module normally hold two values; here all three differ
    # (as a mis-saved file could), and peft's merge is still what llmkit gives: X.weight wins.
    base = tiny_factory("safetensors").path
    adapter = tmp_path / "adapter"
    saved = peft_adapter(
        base, adapter, vocab=101, target_modules=["q_proj"], modules_to_save=["embed_tokens", "lm_head"], safe=False
    )
    gen = torch.Generator().manual_seed(99)
    for key in list(saved):
        if ".modules_to_save." in key or ".original_module." in key:
            saved[key] = torch.randn(saved[key].shape, generator=gen)
    torch.save(saved, adapter / "adapter_model.bin")
    merge_lora(base, [adapter], tmp_path / "out")
    got = merged_state(tmp_path / "out")
    assert_same(got, peft_merged(base, adapter, 101))
    assert torch.equal(got["lm_head.weight"], saved[f"{PREFIX}lm_head.weight"])


@pytest.mark.parametrize("config_lists_modules_to_save", [True, False])
def test_old_chinese_llama_alpaca_layout_matches_peft(tiny_factory, tmp_path, config_lists_modules_to_save):
    """Chinese-LLaMA-Alpaca's adapters (peft 0.3 era, ``adapter_model.bin``) hold the full vocabulary tensors
    as ``base_model.model.model.embed_tokens.weight`` / ``base_model.model.lm_head.weight`` and nothing else
    of those modules. Made here from a peft 0.21 adapter by renaming keys: the ``modules_to_save`` copy takes
    the plain name, the ``original_module`` and plain peft-0.21 copies are dropped."""
    base = tiny_factory("safetensors").path
    made = tmp_path / "peft-0.21"
    saved = peft_adapter(
        base,
        made,
        vocab=101,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        modules_to_save=["embed_tokens", "lm_head"],
    )
    old = {}
    for key, t in saved.items():
        if ".lora_" in key:
            old[key] = t
        elif ".modules_to_save." in key:
            old[key.replace(".modules_to_save.", ".")] = t
    assert saved_modules(old) == ["lm_head.weight", "model.embed_tokens.weight"]
    adapter = tmp_path / "chinese-alpaca-lora-like"
    shutil.copytree(made, adapter)
    (adapter / "adapter_model.safetensors").unlink()
    torch.save(old, adapter / "adapter_model.bin")
    if not config_lists_modules_to_save:  # a config from before modules_to_save: the tensors load as plain layers
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        cfg["modules_to_save"] = None
        (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    result = merge_lora(base, [adapter], tmp_path / "out")
    assert (result.vocab_before, result.vocab_after) == (100, 101) and result.mean_initialised_rows == {}
    got = merged_state(tmp_path / "out")
    assert_same(got, peft_merged(base, adapter, 101))
    assert_same(got, merged_state_of(base, made, tmp_path / "out-made"))  # same model as peft 0.21's file


def merged_state_of(base: Path, adapter: Path, out: Path) -> dict[str, torch.Tensor]:
    merge_lora(base, [adapter], out)
    return merged_state(out)
