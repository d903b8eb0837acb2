"""The models llmkit knows, as data: hub repos, files, published checksum tables, what each needs.

Every value comes from the model's card (``ModelSpec.card``); nothing here is guessed. Models of one family
that differ only in a name, a size or a digest are made by one function per family, so the facts they share
are written once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import InputError
from llmkit.registry.tables import ChecksumTable, builtin_tables

GB = 10**9
MB = 10**6
HUB = "https://huggingface.co"
KNOWLM = "https://github.com/zjunlp/KnowLM"  # ZhiXi's card: how its LLaMA-13B base is made


@dataclass(frozen=True)
class ModelSpec:
    """A model llmkit knows. Sizes and facts come from its model card: ``card`` is that page (the hub page of
    ``repo_id``, filled in when not given; for a model without a repo, the page that documents it).

    ``tables`` maps a stage (``download``, ``decrypted``, ``recovered``, ``recovered-fp16``, ``key``)
    to a built-in checksum table name. ``needs`` names what the model needs to become usable (the
    LLaMA-7B key file for XOR decryption, a base model for a diff or a LoRA). ``None`` means unknown
    or not applicable; no value here is guessed.
    """

    name: str
    family: str
    kind: str  # full | encrypted | diff | lora | meta-original
    repo_id: str | None
    files: tuple[str, ...]
    tables: dict[str, str] = field(default_factory=dict)
    needs: str | None = None
    dtype: str | None = None
    vocab_size: int | None = None
    approx_bytes: int | None = None  # the card's published download size
    card: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.card and self.repo_id:
            object.__setattr__(self, "card", f"{HUB}/{self.repo_id}")


_TECHGPT_ENC = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_TECHGPT_FILES = (
    "config.json",
    "generation_config.json",
    "pytorch_model.bin",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "tokenizer.model",
)


def _shards(n: int, ext: str = "bin") -> tuple[str, ...]:
    return tuple(f"pytorch_model-{i:05d}-of-{n:05d}.{ext}" for i in range(1, n + 1))


def _techgpt2(variant: str) -> ModelSpec:
    """TechGPT-2.0's full fp16 models (``alpaca``, ``atom``), published without checksums."""
    notes = "no published checksums; the card converts it to a MindSpore .ckpt"
    return ModelSpec(
        f"techgpt-2.0-{variant}",
        "TechGPT-2.0",
        "full",
        f"neukg/TechGPT-2.0-{variant}-hf",
        files=(),
        dtype="float16",
        approx_bytes=13 * GB,
        notes=notes,
    )


def _zhixi_diff(suffix: str, shards: int, dtype: str, approx_bytes: int, notes: str) -> ModelSpec:
    """ZhiXi's weight diff against LLaMA-13B (``suffix`` ``""``: fp32, ``-fp16``), with the table of the download
    and of the model it recovers."""
    name = f"zhixi-13b-diff{suffix}"
    tables = {"download": name, "recovered": f"zhixi-13b{suffix}"}
    needs = "llama-13b-hf (LLaMA-13B converted to Hugging Face, fp16)"
    return ModelSpec(
        name,
        "ZhiXi / KnowLM",
        "diff",
        f"zjunlp/{name}",
        files=_shards(shards),
        tables=tables,
        needs=needs,
        dtype=dtype,
        vocab_size=32000,
        approx_bytes=approx_bytes,
        notes=notes,
    )


def _cutegpt(name: str, repo_id: str, notes: str, *, needs: str | None = None) -> ModelSpec:
    """CuteGPT's models, published without checksums (a LoRA when it ``needs`` a base)."""
    kind = "lora" if needs else "full"
    return ModelSpec(name, "CuteGPT", kind, repo_id, files=(), needs=needs, notes=notes)


def _chinese_lora(variant: str, size: str, vocab_size: int, approx_bytes: int, zip_sha256: str) -> ModelSpec:
    """Chinese-LLaMA-Alpaca's LoRA for the original LLaMA of ``size`` (``7b``, ``13b``): its card gives the
    download size and only an abbreviated SHA256 of the zip."""
    name = f"chinese-{variant}-lora-{size}"
    needs = f"llama-{size} (original LLaMA-{size.upper()})"
    notes = f"card gives only an abbreviated SHA256 of the zip: {zip_sha256}"
    return ModelSpec(
        name,
        "Chinese-LLaMA-Alpaca",
        "lora",
        f"ziqingyang/{name}",
        files=(),
        tables={"download": name},
        needs=needs,
        vocab_size=vocab_size,
        approx_bytes=approx_bytes,
        notes=notes,
    )


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="techgpt-7b",
        family="TechGPT-1.0",
        kind="encrypted",
        repo_id="neukg/TechGPT-7B",
        files=tuple(f"{f}.{_TECHGPT_ENC}.enc" for f in _TECHGPT_FILES),
        tables={"download": "techgpt-7b.enc", "decrypted": "techgpt-7b"},
        needs="llama-7b-meta (XOR key: 7B/consolidated.00.pth)",
        dtype="float16",
        approx_bytes=13 * GB,
        notes="decrypt with `llmkit decrypt`; the .enc name's hex is sha256 of the empty string, not a checksum",
    ),
    _techgpt2("alpaca"),
    _techgpt2("atom"),
    _zhixi_diff("", 6, "float32", 48 * GB, "recover with `llmkit recover`; fp32 sum check 94052.2891"),
    _zhixi_diff("-fp16", 3, "float16", 24 * GB, "recover with `llmkit recover --dtype fp16`"),
    ModelSpec(
        name="zhixi-13b-lora",
        family="ZhiXi / KnowLM",
        kind="lora",
        repo_id="zjunlp/zhixi-13b-lora",
        files=("adapter_model.bin", "adapter_config.json"),
        tables={"download": "zhixi-13b-lora"},
        needs="zhixi-13b (the recovered base)",
        vocab_size=32000,
        approx_bytes=251 * MB,
        notes="merge with `llmkit merge-lora`; tokenizer from the base",
    ),
    _cutegpt(
        "cutegpt-13b-base",
        "XuYipei/kw-cutegpt-13b-base",
        "no published checksums; LLaMA with an extended Chinese vocabulary",
    ),
    _cutegpt("cutegpt-13b-ift", "XuYipei/kw-cutegpt-13b-ift", "no published checksums"),
    _cutegpt(
        "cutegpt-13b-ift-lora",
        "Abbey4799/kw-cutegpt-13b-ift-lora",
        "r=8, alpha=16, q_proj/v_proj; no published checksums",
        needs="cutegpt-13b-base",
    ),
    _chinese_lora("llama", "7b", 49953, 770 * MB, "39b86b......fe0e60"),
    _chinese_lora("llama", "13b", 49953, 1 * GB, "3d6dee......e5199b"),
    _chinese_lora("alpaca", "7b", 49954, 790 * MB, "9bb5b6......ce2d87"),
    _chinese_lora("alpaca", "13b", 49954, 1_100 * MB, "45c92e......682d91"),
    ModelSpec(
        name="llama-7b-meta",
        family="LLaMA-1 (Meta)",
        kind="meta-original",
        repo_id=None,
        files=("consolidated.00.pth", "params.json"),
        tables={"key": "llama-7b-meta", "original": "llama-7b-original"},
        dtype="float16",
        vocab_size=32000,
        approx_bytes=13_476_939_516,
        card=f"{HUB}/neukg/TechGPT-7B",
        notes="the XOR key of TechGPT-1.0; consolidated.00.pth is 13,476,939,516 bytes",
    ),
    ModelSpec(
        name="llama-13b-meta",
        family="LLaMA-1 (Meta)",
        kind="meta-original",
        repo_id=None,
        files=("consolidated.00.pth", "consolidated.01.pth", "params.json"),
        tables={"original": "llama-13b-original"},
        dtype="float16",
        vocab_size=32000,
        card=KNOWLM,
        notes="two model-parallel shards in Meta's original layout (llmkit inspect reads it)",
    ),
    ModelSpec(
        name="llama-13b-hf",
        family="LLaMA-1 (Meta)",
        kind="full",
        repo_id=None,
        files=(),
        tables={"hf": "llama-13b-hf"},
        needs="llama-13b-meta (converted to Hugging Face)",
        dtype="float16",
        vocab_size=32000,
        card=KNOWLM,
        notes="the base ZhiXi's diff expects; Chinese-LLaMA-Alpaca publishes the sha256 of its HF conversion "
        "(table llama-13b-hf; keep fp16 when converting)",
    ),
)

# Download sizes of the tables' files as the cards state them (the recovered bases have the diff's dtype
# and shape, so the same size). Used only to tell apart tables whose file names match.
TABLE_APPROX_BYTES: dict[str, int] = {
    "techgpt-7b.enc": 13 * GB,
    "techgpt-7b": 13 * GB,
    "zhixi-13b-diff": 48 * GB,
    "zhixi-13b": 48 * GB,
    "zhixi-13b-diff-fp16": 24 * GB,
    "zhixi-13b-fp16": 24 * GB,
    "zhixi-13b-lora": 251 * MB,
    "llama-7b-meta": 13_476_939_516,
}

# Exact sizes known for single files (SPEC.md section 1).
KNOWN_SIZES: dict[tuple[str, str], int] = {
    ("llama-7b-meta", "consolidated.00.pth"): 13_476_939_516,
}


def get_model(name: str) -> ModelSpec:
    """A model by registry name or hub repo id (case-insensitive)."""
    low = name.lower()
    for m in MODELS:
        if m.name == low or (m.repo_id and m.repo_id.lower() == low):
            return m
    raise InputError(f"unknown model {name!r}", hint=f"known: {', '.join(m.name for m in MODELS)}")


def model_for_path(path: str | os.PathLike) -> ModelSpec | None:
    """The model whose download folder ``path`` is named like (``techgpt-2.0-atom``, or a repo's own name such
    as ``TechGPT-2.0-atom-hf``), else None."""
    name = Path(path).name.lower()
    return next((m for m in MODELS if name == m.name or (m.repo_id and name == m.repo_id.split("/")[1].lower())), None)


def close_model_names(name: str, n: int = 3) -> list[str]:
    """The known model names closest to a mistyped or partial ``name`` (``zhixi-13b`` -> ``zhixi-13b-diff``, ...)."""
    from difflib import SequenceMatcher

    low = name.lower()
    scored = [
        (SequenceMatcher(None, low, m.name).ratio() + (0.2 if m.name.startswith(low) else 0.0), m.name) for m in MODELS
    ]
    return [m for score, m in sorted(scored, key=lambda t: (-t[0], t[1])) if score >= 0.6][:n]


def table_for(model: str, stage: str) -> ChecksumTable | None:
    """The built-in table for ``model`` at ``stage`` (``download``, ``decrypted``, ...), or None."""
    spec = get_model(model)
    name = spec.tables.get(stage)
    return builtin_tables()[name] if name else None
