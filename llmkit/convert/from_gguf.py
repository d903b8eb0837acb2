"""``from-gguf``: a LLaMA GGUF file (or split set) -> a Hugging Face folder, as a plan on the one runner.

The source (``llmkit.io.gguf.source``) already is the HF model: HF names, row-major shapes, q/k rows in
rotate-half order, F32/F16/BF16 bit for bit. The plan writes every tensor with an HF name in transformers'
order, each in its own dtype (or ``--dtype``), into the ``safetensors``/``bin`` sink; ``config.json`` and
``generation_config.json`` are derived from the metadata (``Plan.files``). A file with quantized tensors is
refused unless ``--dequantize`` (float32, their dequantized values). GGUF holds the vocabulary but no
``tokenizer.model``: none is written unless ``--tokenizer`` gives one, which is checked against the file's
vocabulary.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from llmkit.convert.meta import ConvertResult, cast_dtype, given_tokenizer
from llmkit.errors import InputError
from llmkit.io.core.dtypes import CONFIG_NAMES
from llmkit.io.core.llama_weights import hf_sort_key
from llmkit.io.core.source import open_model, require_layout
from llmkit.io.core.spec import TensorSpec
from llmkit.pipeline import AuxCopy, Check, Notice, Plan, ProgressFactory, run_plan
from llmkit.units import DEFAULT_SHARD_SIZE

if TYPE_CHECKING:
    from llmkit.io.gguf.source import GGUFSource


@dataclass(frozen=True)
class FromGGUFOptions:
    """``llmkit from-gguf``: a LLaMA ``.gguf`` (a file, a split set's first part, or their folder) -> a Hugging
    Face folder. ``dequantize``: write quantized tensors as float32 instead of refusing the file;
    ``tokenizer``: a ``tokenizer.model`` or a tokenizer folder to carry (GGUF has none)."""

    source: Path
    output: Path
    fmt: str = "safetensors"
    shard_size: int = DEFAULT_SHARD_SIZE
    dtype: str = "keep"
    dequantize: bool = False
    tokenizer: Path | None = None
    force: bool = False
    dry_run: bool = False


@dataclass(kw_only=True)
class FromGGUFResult(ConvertResult):
    """Result of ``from-gguf`` (docs/json.md): the ``from-meta`` fields, then ``tensor_types`` (GGML type ->
    tensors of the file), ``dequantized`` (type -> tensors written as their dequantized float32 values),
    ``left_out`` (GGUF tensors with no Hugging Face name, not written)."""

    tensor_types: dict[str, int] = field(default_factory=dict)
    dequantized: dict[str, int] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)


def _counts(types: dict[str, str]) -> str:
    return ", ".join(f"{n} {t}" for t, n in Counter(types.values()).items())


def _quantized(options: FromGGUFOptions, src: GGUFSource, names: list[str]) -> tuple[dict[str, str], list[Notice]]:
    """The quantized tensors (name -> type): refused without ``--dequantize``; with it, a notice."""
    from llmkit.io.gguf.dequant import can_dequantize

    quantized = {n: t for n in names if (t := src.stored_type(n)) is not None}
    if not quantized:
        return {}, []
    if not options.dequantize:
        raise InputError(
            f"{len(quantized)} tensors are stored quantized ({_counts(quantized)}), not as the original weights",
            path=options.source,
            hint="pass --dequantize to write their dequantized values as float32, or convert an f16/bf16/f32 GGUF",
        )
    for name, t in quantized.items():
        if not can_dequantize(src.stored(name).ttype):
            raise InputError(f"gguf.quants cannot dequantize {t} (tensor {name!r})", path=options.source)
    return quantized, [
        Notice.warning(
            f"{len(quantized)} tensors stored quantized ({_counts(quantized)}) are written as float32: their "
            "dequantized values (gguf.quants.dequantize), not the weights they were quantized from"
        )
    ]


def _tokenizer(options: FromGGUFOptions, src: GGUFSource) -> tuple[AuxCopy | None, list[Notice], list[Check]]:
    """``--tokenizer`` (checked against the file's vocabulary), or none and a notice saying so."""
    if options.tokenizer is None:
        return (
            None,
            [
                Notice.warning(
                    "a GGUF file holds its vocabulary but no tokenizer.model: the output has no tokenizer "
                    "(pass --tokenizer with the model's tokenizer.model or its folder)"
                )
            ],
            [],
        )
    aux = given_tokenizer(options.tokenizer)
    check = _vocabulary_check(aux, src)
    notices = [Notice.warning(f"tokenizer: {check.detail}")] if check is not None and check.status != "ok" else []
    return aux, notices, [check] if check is not None else []


def _vocabulary_check(aux: AuxCopy, src: GGUFSource) -> Check | None:
    """The GGUF vocabulary ``convert_hf_to_gguf.py`` makes of the given tokenizer files
    (``llmkit.io.gguf.vocab``) against the file's ``tokenizer.ggml.tokens``: the right tokenizer, or a warning."""
    from llmkit.io.core.regular import read_regular
    from llmkit.io.gguf.vocab import sentencepiece_vocab

    assert aux.folder is not None
    model, stored = aux.folder / "tokenizer.model", src.metadata.get("tokenizer.ggml.tokens")
    if not model.is_file() or not isinstance(stored, list):
        return None
    files = {n: read_regular(aux.folder / n) for n in aux.names if n != model.name and (aux.folder / n).is_file()}
    try:
        made = sentencepiece_vocab(read_regular(model), len(stored), files).tokens
    except (RuntimeError, ValueError, KeyError, TypeError) as e:  # not a SentencePiece model, bad JSON
        return Check("tokenizer", "mismatch", f"{model} could not be read as a SentencePiece model ({e})")
    theirs = [t.encode() if isinstance(t, str) else t for t in stored]
    first = next((i for i, (a, b) in enumerate(zip(made, theirs, strict=True)) if a != b), None)
    if first is None:
        return Check("tokenizer", "ok", f"{model.name} gives the GGUF's vocabulary ({len(theirs)} tokens)")
    return Check(
        "tokenizer",
        "mismatch",
        f"{model} does not give the GGUF's vocabulary: token {first} is {made[first]!r} there, "
        f"{theirs[first]!r} in the GGUF",
    )


def _left_out(src: GGUFSource) -> tuple[list[str], list[Notice]]:
    """GGUF tensors with no Hugging Face name: not written, named in a notice."""
    from llmkit.io.gguf.names import hf_of_gguf

    left = [src.stored(n).name for n in src.keys() if hf_of_gguf(src.stored(n).name) is None]
    if not left:
        return [], []
    why = (
        " (rope_freqs.weight: Llama-3 rope frequency factors; put the original config's rope_scaling into config.json)"
        if "rope_freqs.weight" in left
        else ""
    )
    return left, [
        Notice.warning(f"{len(left)} tensor(s) have no Hugging Face name and are left out: {', '.join(left[:3])}{why}")
    ]


def _output_config(src: GGUFSource, specs: list[TensorSpec], dtype: torch.dtype | None) -> dict:
    """The metadata's config, its dtype the weights' (``--dtype``, else what most 2-D weights are written as)."""
    cfg = src.config()
    weights = Counter(s.dtype for s in specs if len(s.shape) == 2)
    out = dtype or (weights.most_common(1)[0][0] if weights else torch.float32)
    cfg["torch_dtype"] = CONFIG_NAMES.get(out, "float32")
    return cfg


def _norms_notice(src: GGUFSource, specs: list[TensorSpec], dtype: torch.dtype | None) -> list[Notice]:
    """An F16/BF16 file's F32 norms are written as F32 (llama.cpp widened them) unless ``--dtype``."""
    from llmkit.io.gguf.config import FILE_DTYPES

    file_dtype = FILE_DTYPES.get(src.metadata.get("general.file_type", -1))
    if dtype is not None or file_dtype not in (torch.float16, torch.bfloat16):
        return []
    wide = [s.name for s in specs if s.dtype == torch.float32 and src.stored_type(s.name) is None]
    if not wide:
        return []
    flag = "f16" if file_dtype == torch.float16 else "bf16"
    return [
        Notice.info(
            f"{len(wide)} tensors (the norms) are F32 in the GGUF, as llama.cpp stores them, and are written so; "
            f"--dtype {flag} writes every tensor as {flag} (exact for norms that were {flag} before)"
        )
    ]


def _plan(options: FromGGUFOptions, src: GGUFSource, dtype: torch.dtype | None) -> tuple[Plan, dict]:
    from llmkit.io.gguf.config import generation_config, json_bytes

    left, notices = _left_out(src)
    names = sorted((n for n in src.keys() if src.stored(n).name not in left), key=hf_sort_key)
    quantized, q_notices = _quantized(options, src, names)
    tok, tok_notices, checks = _tokenizer(options, src)

    def out_dtype(name: str) -> torch.dtype:
        d = src.info(name).dtype
        return dtype if dtype is not None and d.is_floating_point else d

    specs = [TensorSpec(n, out_dtype(n), src.info(n).shape) for n in names]
    cfg = _output_config(src, specs, dtype)
    largest = max((s.nbytes for s in specs), default=0)
    plan = Plan(
        job="from-gguf",
        output=Path(options.output),
        fmt=options.fmt,
        specs=specs,
        produce=lambda name: src.get(name).to(out_dtype(name)),
        reads=lambda name: [(src, name)],
        inputs=[Path(options.source), *src.weight_files, *([tok.folder] if tok and tok.folder else [])],
        input_bytes=sum(src.stored_nbytes(n) for n in names),
        working_set_bytes=3 * largest,
        label="converting",
        aux=[tok] if tok else [],
        files={"config.json": json_bytes(cfg), "generation_config.json": json_bytes(generation_config(cfg))},
        sink_options={"shard_size": options.shard_size},
        checks=checks,
        notices=notices + q_notices + tok_notices + _norms_notice(src, specs, dtype),
        sources=[src],
    )
    fields = {
        "tensor_types": src.tensor_types(),
        "dequantized": dict(Counter(quantized.values())),
        "left_out": left,
        "tokenizer_from": str(options.tokenizer) if options.tokenizer else None,
    }
    return plan, fields


def from_gguf(options: FromGGUFOptions, *, progress: ProgressFactory | None = None) -> FromGGUFResult:
    """Convert a LLaMA GGUF to a Hugging Face folder; every check runs before the first tensor is read."""
    dtype = cast_dtype(options.dtype)
    if options.fmt not in ("safetensors", "bin"):
        raise InputError(f"unknown format {options.fmt!r}", hint="use safetensors or bin")
    hint = "pass a .gguf file (of a split model, its first part); llmkit to-gguf converts the other way"
    src = cast(
        "GGUFSource", open_model(options.source, refuse=require_layout("gguf", "GGUF file", options.source, hint))
    )
    with src.closed_on_error():
        plan, fields = _plan(options, src, dtype)
    return run_plan(
        plan,
        options,
        lambda report, sink: FromGGUFResult(
            plan=report,
            command="from-gguf",
            source=str(options.source),
            format=options.fmt,
            dtype=options.dtype,
            **fields,
        ),
        progress,
    )
