"""The non-weight files of a model folder (torch-free): what jobs carry from an input to an output."""

from __future__ import annotations

CONFIG_FILES = ("config.json", "generation_config.json")


TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)


AUX_FILES = CONFIG_FILES + TOKENIZER_FILES  # every file carried from a model folder to an output folder
