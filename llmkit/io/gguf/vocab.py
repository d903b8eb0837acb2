"""A LLaMA SentencePiece vocabulary as GGUF stores it: tokens, scores and token types, exactly as
``convert_hf_to_gguf.py`` builds them (``_create_vocab_sentencepiece``).

From ``tokenizer.model``: every piece with its score and type (unknown 2, control 3, unused 5, byte 6, else
normal 1); ``added_tokens.json`` entries become user-defined (4) with score -1000; ``tokenizer_config.json``'s
``added_tokens_decoder`` overrides them (control when ``special`` or when the text looks special, else
user-defined with ``▁`` turned into a space); ids past the tokenizer up to ``vocab_size`` are ``[PADn]``
(unused). So Chinese-LLaMA's 49953 pieces and Chinese-Alpaca's 49954 (one added ``[PAD]``) come out as the
converter writes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class Vocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]


def looks_special(text: str) -> bool:
    """Added tokens the converter marks as control although not flagged special (its ``does_token_look_special``)."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def _piece_type(sp, i: int) -> int:
    if sp.IsUnknown(i):
        return UNKNOWN
    if sp.IsControl(i):
        return CONTROL
    if sp.IsUnused(i):
        return UNUSED
    if sp.IsByte(i):
        return BYTE
    return NORMAL


def sentencepiece_vocab(model: bytes, vocab_size: int | None, files: dict[str, bytes]) -> Vocab:
    """The GGUF vocabulary of ``tokenizer.model`` bytes; ``files``: the other side files by name (added tokens)."""
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromSerializedProto(model)
    n = vocab_size or sp.vocab_size()
    v = Vocab([f"[PAD{i}]".encode() for i in range(n)], [-10000.0] * n, [UNUSED] * n)
    for i in range(min(sp.vocab_size(), n)):
        v.tokens[i], v.scores[i], v.types[i] = sp.IdToPiece(i).encode(), sp.GetScore(i), _piece_type(sp, i)
    if "added_tokens.json" in files:
        for text, i in json.loads(files["added_tokens.json"]).items():
            if i < n:
                v.tokens[i], v.scores[i], v.types[i] = text.encode(), -1000.0, USER_DEFINED
    if "tokenizer_config.json" in files:
        decoder = json.loads(files["tokenizer_config.json"]).get("added_tokens_decoder", {})
        for key, data in decoder.items():
            i, text = int(key), data["content"]
            if i >= n:
                continue
            if data.get("special") or looks_special(text):
                v.types[i] = CONTROL
            else:
                text, v.types[i] = text.replace("\u2581", " "), USER_DEFINED
            v.scores[i], v.tokens[i] = -1000.0, text.encode()
    return v
