"""``len(tokenizer)`` as transformers counts it, from the tokenizer files alone (no transformers import)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeGuard

from llmkit.errors import InputError
from llmkit.io.core.jsonfile import read_json
from llmkit.io.core.regular import check_regular, is_special

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


_PUT_BACK = "put back the tokenizer files that came with the model or adapter"


def _shown(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _wrong(path: Path, field: str, expected: str, value: object) -> InputError:
    return InputError(f"{field} must be {expected}, found {_shown(value)}", path=path, hint=_PUT_BACK)


def _token_id(value: object, path: Path, field: str) -> int:
    """A token id: a non-negative JSON integer (not a string, a float or a boolean)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _wrong(path, field, "a non-negative integer token id", value)
    return value


def _token_text(value: object, path: Path, field: str) -> str | None:
    """A special token: its text, or an AddedToken object's ``content``; null is no token."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise _wrong(path, field, 'a token string or {"content": "..."}', value)


def _read_tokenizer_json(path: Path) -> dict:
    data = read_json(path, hint=_PUT_BACK)
    assert isinstance(data, dict)
    return data


def _list_field(data: dict, key: str, path: Path) -> list:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _wrong(path, key, "a list", value)
    return value


def _dict_field(data: dict, key: str, path: Path) -> dict:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _wrong(path, key, "an object", value)
    return value


def published_tokenizer(folder: Path | None) -> tuple[str, int] | None:
    """(table, tokens) when ``folder/tokenizer.model`` is a published one: its sha256 is listed by a
    built-in table described as ``tokenizer vocab=N`` (Chinese-LLaMA's 49953, Chinese-Alpaca's 49954).
    None: no tokenizer.model, or not a published one. Tells the two apart without loading them."""
    from llmkit.hashing import hash_file
    from llmkit.registry import described_tables

    if folder is None or not (folder / "tokenizer.model").is_file():
        return None
    tm = folder / "tokenizer.model"
    tables = described_tables("tokenizer")
    if not tables:
        return None
    digest = hash_file(tm, "sha256")
    for table, facts in tables:
        if "vocab" in facts and any(e.digest == digest for e in table.entries):
            return table.name, facts["vocab"]
    return None


def has_tokenizer(folder: Path | None) -> TypeGuard[Path]:
    """Whether ``folder`` is a folder with a ``tokenizer.model`` or ``tokenizer.json`` (so not None)."""
    return folder is not None and any(
        (folder / n).is_file() or is_special(folder / n)  # a FIFO: refused on read
        for n in ("tokenizer.model", "tokenizer.json")
    )


def _vocabulary(folder: Path) -> tuple[set[int], set[str]] | None:
    """Ids and pieces of ``tokenizer.json`` (or SentencePiece ``tokenizer.model``); None: neither is there."""
    tj, tm = folder / "tokenizer.json", folder / "tokenizer.model"
    ids: set[int] = set()
    pieces: set[str] = set()
    if tj.is_file() or is_special(tj):
        data = _read_tokenizer_json(tj)
        vocab = _dict_field(data, "model", tj).get("vocab")
        if isinstance(vocab, dict):
            ids.update(_token_id(v, tj, f"model.vocab[{k!r}]") for k, v in vocab.items())
            pieces.update(vocab)
        elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
            ids.update(range(len(vocab)))
            pieces.update(str(p[0]) for p in vocab if isinstance(p, (list, tuple)) and p)
        elif vocab is not None:
            raise _wrong(tj, "model.vocab", "an object or a list", vocab)
        for t in _list_field(data, "added_tokens", tj):
            if not isinstance(t, dict):
                raise _wrong(tj, "each of added_tokens", "an object", t)
            if "id" in t:
                ids.add(_token_id(t["id"], tj, "the id of an added token"))
                pieces.add(str(t.get("content")))
    elif tm.is_file() or is_special(tm):
        import sentencepiece as spm

        check_regular(tm, "a SentencePiece tokenizer.model")
        try:
            sp = spm.SentencePieceProcessor(model_file=str(tm))
        except (RuntimeError, OSError) as e:
            raise InputError(
                f"not a readable SentencePiece model ({e})", path=tm, hint="download the tokenizer again"
            ) from None
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
    if added.is_file() or is_special(added):
        for token, i in _added_tokens(added).items():
            ids.add(i)
            pieces.add(token)
    config_file, special_file = folder / "tokenizer_config.json", folder / "special_tokens_map.json"
    config = _read_tokenizer_json(config_file) if config_file.is_file() or is_special(config_file) else {}
    for i, info in _dict_field(config, "added_tokens_decoder", config_file).items():
        if not (i.isascii() and i.isdigit()):
            raise _wrong(config_file, "each key of added_tokens_decoder", "a token id", i)
        ids.add(int(i))
        text = _token_text(info, config_file, f"added_tokens_decoder[{i!r}]")
        if text is not None:
            pieces.add(text)
    special = _read_tokenizer_json(special_file) if special_file.is_file() or is_special(special_file) else {}
    extra: set[str] = set()
    for source, path in ((special, special_file), (config, config_file)):
        for key in _SPECIAL_KEYS:
            text = _token_text(source.get(key), path, key)
            if text and text not in pieces:
                extra.add(text)
        for value in _list_field(source, "additional_special_tokens", path):
            text = _token_text(value, path, "each of additional_special_tokens")
            if text and text not in pieces:
                extra.add(text)
    return len(ids) + len(extra)


def _added_tokens(path: Path) -> dict[str, int]:
    """``added_tokens.json``: token -> id, every id a non-negative integer and no id given twice."""
    tokens: dict[str, int] = {}
    owner: dict[int, str] = {}
    for token, value in _read_tokenizer_json(path).items():
        i = _token_id(value, path, f"the id of {token!r}")
        if i in owner:
            raise InputError(f"{owner[i]!r} and {token!r} both have id {i}", path=path, hint=_PUT_BACK)
        tokens[token], owner[i] = i, token
    return tokens
