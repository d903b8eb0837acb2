"""What a weight folder or file holds, from headers only (``llmkit inspect``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.io.sources import AdapterInfo, MetaSource, TensorSource, open_source, safetensors_code

# LLaMA size by hidden size (LLaMA-1 family).
LLAMA_SIZES = {4096: "LLaMA-7B", 5120: "LLaMA-13B", 6656: "LLaMA-33B", 8192: "LLaMA-65B"}
_EMBED_NAMES = ("embed_tokens.weight", "tok_embeddings.weight", "tok_embeddings.embedding_weight")
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class TensorRow:
    name: str
    dtype: str
    shape: list[int]
    nbytes: int


@dataclass
class ModelSummary:
    """Result of ``llmkit inspect``. Sizes in bytes; ``parameters`` counts elements."""

    path: str
    layout: str
    kind: str  # "model" or "adapter"
    files: list[str]
    tensor_count: int
    parameters: int
    total_bytes: int
    dtypes: dict[str, int]  # safetensors dtype code -> tensor count
    hidden_size: int | None
    num_layers: int | None
    vocab_size: int | None
    architecture: str | None
    adapter: AdapterInfo | None
    warnings: list[str] = field(default_factory=list)
    tensors: list[TensorRow] = field(default_factory=list)


def _embed_shape(src: TensorSource) -> tuple[int, ...] | None:
    for name in src.keys():
        if name.endswith(_EMBED_NAMES) or (".embed_tokens." in name and name.endswith(".weight")
                                           and "lora_" not in name):
            return src.info(name).shape
    return None


def guess_architecture(hidden: int | None) -> str | None:
    if hidden is None:
        return None
    return LLAMA_SIZES.get(hidden, f"LLaMA-like (hidden size {hidden})")


def summarize(path: str | Path) -> ModelSummary:
    """Describe the weights at ``path`` without reading tensor data."""
    with open_source(path) as src:
        infos = src.infos()
        cfg = src.config() or {}
        warnings = list(src.warnings)
        embed = _embed_shape(src)
        hidden = cfg.get("hidden_size")
        vocab = cfg.get("vocab_size")
        if isinstance(src, MetaSource) and src.params:
            hidden = hidden or src.params.get("dim")
            v = src.params.get("vocab_size")
            vocab = vocab or (v if isinstance(v, int) and v > 0 else None)
        if embed is not None and len(embed) == 2:
            if vocab is not None and embed[0] != vocab:
                warnings.append(f"config.json says vocab_size {vocab} but the embedding has {embed[0]} rows")
            vocab = embed[0]
            if src.adapter is None:
                hidden = hidden or embed[1]
        layers = {int(m.group(1)) for i in infos if (m := _LAYER_RE.search(i.name))}
        dtypes: dict[str, int] = {}
        for i in infos:
            code = safetensors_code(i)
            dtypes[code] = dtypes.get(code, 0) + 1
        return ModelSummary(
            path=str(path),
            layout=src.layout,
            kind="adapter" if src.adapter is not None else "model",
            files=[str(p) for p in src.weight_files],
            tensor_count=len(infos),
            parameters=sum(i.numel for i in infos),
            total_bytes=sum(i.nbytes for i in infos),
            dtypes=dtypes,
            hidden_size=hidden,
            num_layers=cfg.get("num_hidden_layers") or (max(layers) + 1 if layers else None),
            vocab_size=vocab,
            architecture=guess_architecture(hidden) if src.adapter is None else None,
            adapter=src.adapter,
            warnings=warnings,
            tensors=[TensorRow(i.name, safetensors_code(i), list(i.shape), i.nbytes) for i in infos],
        )
