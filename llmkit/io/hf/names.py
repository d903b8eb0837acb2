"""The file names of Hugging Face layouts: shard and index names as transformers writes them, the
names a folder is searched for, and the shard pattern a stray file is recognised by.
"""

from __future__ import annotations

import re


def shard_names(fmt: str, count: int) -> list[str]:
    stem, ext = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
    if count == 1:
        return [f"{stem}.{ext}"]
    return [f"{stem}-{i:05d}-of-{count:05d}.{ext}" for i in range(1, count + 1)]


def index_name(fmt: str) -> str:
    return "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"


SAFETENSORS_INDEX = "model.safetensors.index.json"


BIN_INDEX = "pytorch_model.bin.index.json"


ADAPTER_CONFIG = "adapter_config.json"


SHARD_RE = re.compile(r"^(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)$")
