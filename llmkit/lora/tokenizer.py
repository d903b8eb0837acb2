"""``len(tokenizer)`` as transformers counts it, from the tokenizer files alone (no transformers import)."""

from __future__ import annotations

from pathlib import Path

from llmkit.errors import InputError
from llmkit.io.jsonfile import read_json

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_tokenizer_json(path: Path) -> dict:
    data = read_json(path, hint="put back the tokenizer files that came with the model or adapter")
    assert isinstance(data, dict)
    return data


def published_tokenizer(folder: Path | None) -> tuple[str, int] | None:
    """(table, tokens) when ``folder/tokenizer.model`` is a published one: its sha256 is listed by a
    built-in table described as ``tokenizer vocab=N`` (Chinese-LLaMA's 49953, Chinese-Alpaca's 49954).
    None: no tokenizer.model, or not a published one. Tells the two apart without loading them."""
    from llmkit.hashing import hash_file
    from llmkit.registry import described_tables

    tm = folder / "tokenizer.model" if folder is not None else None
    tables = described_tables("tokenizer") if tm is not None and tm.is_file() else []
    if not tables:
        return None
    digest = hash_file(tm, "sha256")
    for table, facts in tables:
        if "vocab" in facts and any(e.digest == digest for e in table.entries):
            return table.name, facts["vocab"]
    return None


def has_tokenizer(folder: Path | None) -> bool:
    return folder is not None and ((folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file())


def _vocabulary(folder: Path) -> tuple[set[int], set[str]] | None:
    """Ids and pieces of ``tokenizer.json`` (or SentencePiece ``tokenizer.model``); None: neither is there."""
    tj, tm = folder / "tokenizer.json", folder / "tokenizer.model"
    ids: set[int] = set()
    pieces: set[str] = set()
    if tj.is_file():
        data = _read_tokenizer_json(tj)
        vocab = (data.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            ids.update(int(v) for v in vocab.values())
            pieces.update(vocab)
        elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            ids.update(range(len(vocab)))
            pieces.update(str(p[0]) for p in vocab if isinstance(p, (list, tuple)) and p)
        for t in data.get("added_tokens") or []:
            if isinstance(t, dict) and "id" in t:
                ids.add(int(t["id"]))
                pieces.add(str(t.get("content")))
    elif tm.is_file():
        import sentencepiece as spm

        try:
            sp = spm.SentencePieceProcessor(model_file=str(tm))
        except (RuntimeError, OSError) as e:
            raise InputError(f"not a readable SentencePiece model ({e})", path=tm,
                             hint="download the tokenizer again") from None
        n = sp.get_piece_size()
        ids.update(range(n))
        pieces.update(sp.id_to_piece(i) for i in range(n))
    else:
        return None
    return ids, pieces


def tokenizer_size(folder: Path) -> int | None:
    """``len(tokenizer)`` as transformers counts it, from the files alone (None: no tokenizer here).

    Vocabulary of ``tokenizer.json`` (or the pieces of SentencePiece ``tokenizer.model``), plus the tokens of
    ``added_tokens.json`` and ``added_tokens_decoder``, plus special tokens that are in neither (transformers
    adds those when it loads the tokenizer). Chinese-Alpaca: 49953 pieces + ``[PAD]`` = 49954.
    """
    found = _vocabulary(folder)
    if found is None:
        return None
    ids, pieces = found
    added = folder / "added_tokens.json"
    if added.is_file():
        for token, i in _read_tokenizer_json(added).items():
            ids.add(int(i))
            pieces.add(token)
    config_file, special_file = folder / "tokenizer_config.json", folder / "special_tokens_map.json"
    config = _read_tokenizer_json(config_file) if config_file.is_file() else {}
    for i, info in (config.get("added_tokens_decoder") or {}).items():
        ids.add(int(i))
        text = _token_text(info)
        if text is not None:
            pieces.add(text)
    special = _read_tokenizer_json(special_file) if special_file.is_file() else {}
    extra: set[str] = set()
    for source in (special, config):
        for key in _SPECIAL_KEYS:
            text = _token_text(source.get(key))
            if text and text not in pieces:
                extra.add(text)
        for value in source.get("additional_special_tokens") or []:
            text = _token_text(value)
            if text and text not in pieces:
                extra.add(text)
    return len(ids) + len(extra)
