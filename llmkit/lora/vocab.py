"""The vocabulary plan of a merge and its checks (SPEC.md section 3).

Before an adapter is applied, the embedding and LM head grow to that adapter's size (its saved embedding
rows, else its tokenizer), as the Chinese-LLaMA-Alpaca script calls ``resize_token_embeddings(len(tokenizer))``.
Vocabularies only grow along the adapter order; an adapter's saved rows must equal its own tokenizer (the
49953/49954 mix-up); the output tokenizer must match the final rows. New rows no adapter supplies are set
to the mean of the existing rows (``llmkit.lora.merge.grow_rows``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.errors import InputError
from llmkit.io.core.source import TensorSource
from llmkit.lora.tokenizer import has_tokenizer, published_tokenizer, tokenizer_size

if TYPE_CHECKING:
    from llmkit.lora.adapters import Adapter

# Input embeddings and output heads: the tensors whose rows are the vocabulary.
INPUT_EMBEDDINGS = (
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
    "tok_embeddings.weight",
    "embed_in.weight",
)
OUTPUT_HEADS = ("lm_head.weight", "lm_head.bias", "embed_out.weight")
# Chinese-LLaMA-Alpaca's vocabularies (SPEC.md section 3): named in the mixed-up-tokenizer messages.
KNOWN_VOCABS = {32000: "original LLaMA", 49953: "Chinese-LLaMA LoRA", 49954: "Chinese-Alpaca LoRA"}


def vocab_tensors(base: TensorSource) -> dict[str, str]:
    """The base's vocabulary tensors: name -> ``input`` (embedding) or ``output`` (LM head)."""
    found: dict[str, str] = {}
    for name in base.keys():
        info = base.info(name)
        if any(name == n or name.endswith("." + n) for n in INPUT_EMBEDDINGS) and len(info.shape) == 2:
            found[name] = "input"
        elif any(name == n or name.endswith("." + n) for n in OUTPUT_HEADS) and len(info.shape) in (1, 2):
            found[name] = "output"
    return found


def known(n: int) -> str:
    """`` (the Chinese-LLaMA LoRA size)`` for the vocabulary sizes of SPEC.md section 3, else nothing."""
    return f" (the {KNOWN_VOCABS[n]} size)" if n in KNOWN_VOCABS else ""


def mixed_up_hint(rows: int, tok: int) -> str:
    if {rows, tok} == {49953, 49954}:
        kind = "Chinese-Alpaca" if rows == 49954 else "Chinese-LLaMA"
        return (
            f"the weights are a {kind} LoRA ({rows} rows) but the tokenizer has {tok} tokens: put back the "
            f"tokenizer.model (and added_tokens.json) that came with the {kind} LoRA"
        )
    return f"put back the tokenizer files that came with this adapter (its weights expect {rows} tokens)"


def check_published_tokenizer(folder: Path | None, rows: int, what: str) -> None:
    """Refuse a ``tokenizer.model`` whose sha256 is a published tokenizer of another size than ``rows``
    (the Chinese-LLaMA 49953 one beside a Chinese-Alpaca 49954 adapter, even with an added_tokens.json
    that makes the count agree)."""
    if folder is None:
        return
    found = published_tokenizer(folder)
    if found is not None and found[1] != rows:
        table, tokens = found
        raise InputError(
            f"tokenizer.model is the published {table} (by sha256: {tokens} tokens{known(tokens)}) but "
            f"{what} has {rows} rows{known(rows)}",
            path=folder / "tokenizer.model",
            hint=mixed_up_hint(rows, tokens),
        )


@dataclass
class VocabPlan:
    """Rows of the vocabulary tensors before and after the merge (None: the base has no embedding)."""

    tensors: dict[str, str]  # base name -> "input" | "output"
    before: int | None
    after: int | None
    final_growth: int | None  # growth after the last adapter (--tokenizer), or None
    tokenizer_folder: Path | None  # where the output tokenizer comes from
    mean_rows: dict[str, int] = field(default_factory=dict)  # vocab tensor -> new rows set to the mean


class _Rows:
    """The running vocabulary size while the adapters are applied in order."""

    def __init__(self, base_rows: dict[str, int], rows: int | None):
        self.rows = rows
        self.sizes = dict(base_rows)
        self.mean_rows = dict.fromkeys(base_rows, 0)
        self.origin: Adapter | None = None  # the adapter that set the current vocabulary size

    def grow(self, target: int) -> None:
        for n in self.sizes:
            self.mean_rows[n] += target - self.sizes[n]
            self.sizes[n] = target
        self.rows = target


def plan_vocabulary(
    base: TensorSource, adapters: list[Adapter], tokenizer: Path | None, warnings: list[str]
) -> VocabPlan:
    """Resize targets per adapter (``Adapter.vocab_size``) and at the end; checks order and
    tokenizer/embedding agreement. Raises :class:`InputError` before anything is written."""
    vocab = vocab_tensors(base)
    base_rows = {n: base.info(n).shape[0] for n in vocab}
    inputs = [n for n, k in vocab.items() if k == "input"]
    rows = base_rows[inputs[0]] if inputs else (next(iter(base_rows.values())) if base_rows else None)
    if (
        rows is not None
        and any(r != rows for r in base_rows.values())
        and any(a.tokenizer_size or any(t in vocab for t in a.replacements) for a in adapters)
    ):
        detail = ", ".join(f"{n} {r}" for n, r in base_rows.items())
        raise InputError(
            f"the base's vocabulary tensors disagree ({detail}); cannot resize them together", path=base.path
        )
    cfg = base.config() or {}
    if rows is not None and isinstance(cfg.get("vocab_size"), int) and cfg["vocab_size"] != rows:
        warnings.append(
            f"{base.folder}/config.json says vocab_size {cfg['vocab_size']} but the embedding has {rows} rows"
        )
    state = _Rows(base_rows, rows)
    for ad in adapters:
        _apply_adapter(base, ad, vocab, state, warnings)
    final_growth, tok_folder = _output_tokenizer(base, adapters, tokenizer, state, rows, warnings)
    for n, count in state.mean_rows.items():
        if count:
            warnings.append(
                f"{n}: {count} new row(s) that no adapter supplies are set to the mean of the existing "
                "rows (transformers' mean resizing, without its random 1e-9 jitter)"
            )
    return VocabPlan(vocab, rows, state.rows, final_growth, tok_folder, {n: c for n, c in state.mean_rows.items() if c})


def _saved_rows(base: TensorSource, ad: Adapter, vocab: dict[str, str]) -> dict[str, int]:
    """The rows of the adapter's saved vocabulary tensors (base name -> rows), each saved tensor checked
    against the base's (all but its rows, for a vocabulary tensor) and those rows against each other."""
    emb_rows = {t: ad.source.info(k).shape[0] for t, k in ad.replacements.items() if t in vocab}
    for t, k in ad.replacements.items():
        exp = base.info(t).shape
        got = ad.source.info(k).shape
        if (got[1:] if t in vocab else got) != (exp[1:] if t in vocab else exp):
            raise InputError(
                f"the adapter's {k} is {list(got)} but the base's {t} is {list(exp)}",
                path=ad.file,
                hint="this adapter belongs to another model",
            )
    if len(set(emb_rows.values())) > 1:
        detail = ", ".join(f"{t} {r}" for t, r in emb_rows.items())
        raise InputError(
            f"the adapter's saved vocabulary tensors disagree ({detail})",
            path=ad.file,
            hint="the adapter file is damaged; download it again",
        )
    return emb_rows


def _apply_adapter(base: TensorSource, ad: Adapter, vocab: dict[str, str], state: _Rows, warnings: list[str]) -> None:
    """Check one adapter's saved rows, tokenizer and LoRA widths against the running size; set its
    ``vocab_size`` (the rows once it is applied)."""
    emb_rows = _saved_rows(base, ad, vocab)
    emb = next(iter(emb_rows.values()), None)
    lora_vocab = {ad.source.info(m.a_key).shape[1] for m in ad.modules.values() if m.embedding}
    tok = ad.tokenizer_size
    if emb is not None and tok is not None and emb != tok:
        raise InputError(
            f"{ad.file.name} holds embed_tokens/lm_head with {emb} rows{known(emb)} but the "
            f"tokenizer in this folder has {tok} tokens{known(tok)}",
            path=ad.folder,
            hint=mixed_up_hint(emb, tok),
        )
    weight_rows = emb if emb is not None else (next(iter(lora_vocab)) if len(lora_vocab) == 1 else None)
    if weight_rows is not None:
        check_published_tokenizer(ad.folder, weight_rows, f"the adapter's weights ({ad.file.name})")
    rows = state.rows
    if rows is None:
        if emb is not None or tok is not None:
            warnings.append(f"{ad.folder}: the base has no embedding to resize; the tokenizer size is not checked")
        ad.vocab_size = None
        return
    target = emb if emb is not None else (tok if tok is not None else rows)
    if target < rows:
        if state.origin is not None:
            raise InputError(
                f"adapter {ad.folder} expects {target} tokens{known(target)} but the adapter before it, "
                f"{state.origin.folder}, already made the vocabulary {rows} tokens{known(rows)}",
                path=ad.folder,
                hint="adapters apply in order and vocabularies only grow: Chinese-LLaMA(-Plus) LoRA (49953) "
                "first, then Chinese-Alpaca(-Plus) LoRA (49954); swap the --lora options",
            )
        if emb is not None:
            raise InputError(
                f"the adapter's embeddings have {emb} rows, fewer than the base's {rows}",
                path=ad.file,
                hint="this adapter belongs to another base model",
            )
        warnings.append(
            f"{ad.folder}: the tokenizer has {tok} tokens, fewer than the base's {rows} embedding "
            "rows; the rows are kept"
        )
        target = rows
    if target > rows:
        state.grow(target)
        rows = target
    if emb is not None or (tok is not None and tok == rows):
        state.origin = ad
    for t in emb_rows:
        state.mean_rows[t] = 0
    _check_lora_rows(ad, vocab, lora_vocab, rows)
    ad.vocab_size = rows


def _check_lora_rows(ad: Adapter, vocab: dict[str, str], lora_vocab: set[int], rows: int) -> None:
    """The adapter's embedding LoRA spans, and its output-head LoRA yields, the ``rows`` tokens the model has."""
    if lora_vocab and lora_vocab != {rows}:
        raise InputError(
            f"the adapter's embedding LoRA spans {sorted(lora_vocab)[0]} tokens but the model has {rows} at this point",
            path=ad.file,
            hint=mixed_up_hint(rows, sorted(lora_vocab)[0]),
        )
    for m in ad.modules.values():
        if m.target in vocab and not m.embedding:
            out_rows = ad.source.info(m.b_key).shape[0]
            if out_rows != rows:
                raise InputError(
                    f"the adapter's LoRA on {m.module} has {out_rows} output rows but the model "
                    f"has {rows} tokens at this point",
                    path=ad.file,
                    hint=mixed_up_hint(rows, out_rows),
                )


def _output_tokenizer(
    base: TensorSource,
    adapters: list[Adapter],
    tokenizer: Path | None,
    state: _Rows,
    before: int | None,
    warnings: list[str],
) -> tuple[int | None, Path | None]:
    """The output tokenizer: ``--tokenizer``, else the last adapter that carries one, else the base's.

    Returns (final growth for a larger ``--tokenizer`` or None, the tokenizer folder)."""
    rows = state.rows
    if tokenizer is None:
        carriers = [a for a in adapters if a.tokenizer_size is not None]
        tok_folder = carriers[-1].folder if carriers else base.folder
        size = (
            carriers[-1].tokenizer_size
            if carriers
            else (tokenizer_size(base.folder) if has_tokenizer(base.folder) else None)
        )
        if rows is not None and rows != before and size is not None and size != rows:
            raise InputError(
                f"the merged model has {rows} embedding rows but the output tokenizer, from "
                f"{tok_folder}, has {size} tokens",
                path=tok_folder,
                hint="pass the matching tokenizer folder with --tokenizer",
            )
        if rows is not None:
            check_published_tokenizer(tok_folder, rows, "the merged model's embedding")
        return None, tok_folder
    tok_folder = Path(tokenizer)
    if tok_folder.is_file():
        tok_folder = tok_folder.parent
    size = tokenizer_size(tok_folder) if tok_folder.is_dir() else None
    if size is None:
        raise InputError(
            "no tokenizer.model or tokenizer.json in --tokenizer",
            path=tok_folder,
            hint="pass the folder that holds the tokenizer files",
        )
    if rows is None:
        return None, tok_folder
    if size < rows:
        raise InputError(
            f"the tokenizer has {size} tokens but the merged model has {rows} embedding rows",
            path=tok_folder,
            hint=mixed_up_hint(rows, size),
        )
    check_published_tokenizer(tok_folder, size, "the merged model's embedding")
    if size > rows:
        warnings.append(
            f"--tokenizer has {size} tokens: the embedding grows from {rows} rows; the "
            f"{size - rows} new rows are set to the mean of the existing rows"
        )
        state.grow(size)
        return size, tok_folder
    return None, tok_folder
