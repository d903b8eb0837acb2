"""What a weight folder or file holds, from headers only (``llmkit inspect``).

:func:`inspect_model` takes an :class:`InspectOptions` (the command's one library call); :func:`summarize`
reads one path. A LLaMA is also checked for completeness (:func:`completeness`): an incomplete one is
still described, with a failed ``complete`` check and a warning (the CLI then exits 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.errors import InputError
from llmkit.io.core.jsonfile import int_field
from llmkit.io.core.source import TensorSource, open_source, safetensors_code
from llmkit.io.hf.adapter_config import AdapterInfo
from llmkit.io.remote.url import shown
from llmkit.pipeline import Check, Notice, Result

if TYPE_CHECKING:
    from llmkit.io.gguf.source import GGUFFacts

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


@dataclass(frozen=True)
class InspectOptions:
    """``llmkit inspect PATH``: a model or adapter folder, a weight file or a shard index. (``--tensors``
    only chooses what the text output shows; the result always lists every tensor.) ``dec_key``/``dec_mode``:
    the key (a key file path or ``env:VAR``) of an encrypted MindSpore checkpoint."""

    path: Path
    dec_key: str | None = None
    dec_mode: str | None = None


@dataclass
class ModelSummary(Result):
    """Result of ``llmkit inspect``. Sizes in bytes (as stored); ``parameters`` counts elements. ``warnings``
    (also ``warning`` notices): settings that were ignored or disagree with the weights. ``dtypes`` and each
    tensor's ``dtype``: the stored type (a GGUF's quantized ``Q8_0``, ...); ``gguf``: a GGUF file's facts."""

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
    encryption: str | None = None  # the cipher of an encrypted MindSpore checkpoint
    gguf: GGUFFacts | None = None  # a GGUF file's architecture, names, file type, tensor types


def _embed_shape(src: TensorSource) -> tuple[int, ...] | None:
    for name in src.keys():
        if name.endswith(_EMBED_NAMES) or (
            ".embed_tokens." in name and name.endswith(".weight") and "lora_" not in name
        ):
            return src.info(name).shape
    return None


def guess_architecture(hidden: int | None) -> str | None:
    if hidden is None:
        return None
    return LLAMA_SIZES.get(hidden, f"LLaMA-like (hidden size {hidden})")


def describe_hidden_size(hidden: int) -> str:
    """``LLaMA-13B (hidden size 5120)``, or ``LLaMA-like (hidden size 32)``: the size named once."""
    name = LLAMA_SIZES.get(hidden)
    return f"{name} (hidden size {hidden})" if name else f"LLaMA-like (hidden size {hidden})"


def _setting(cfg: dict, key: str, where: Path | None, warnings: list[str]) -> int | None:
    """A positive integer setting of config.json / params.json; a wrong value is a warning, not a crash."""
    try:
        return int_field(cfg, key, path=where)
    except InputError as e:
        warnings.append(f"{e}; ignored")
        return None


def completeness(src: TensorSource) -> Check | None:
    """Whether a LLaMA holds every weight its config (or its names) describe, once (``llmkit.io.core.llama_tensors``):
    a failed check, not an error, so inspect still shows what the files hold; None when it is not a LLaMA."""
    from llmkit.io.core.llama_tensors import check_source

    try:
        try:
            found = check_source(src, judge_shapes=False)  # a config disagreeing with a shape is its own warning
        except InputError as e:
            if not (e.path and Path(e.path).name == "config.json" and e.message.startswith(_CONFIG_VALUE)):
                raise
            found = check_source(src, cfg={}, judge_shapes=False)  # a wrong config value: judge by the names
    except InputError as e:
        return Check("complete", "failed", str(e))
    if found is None:
        return None
    return Check("complete", "ok", "every weight of a complete LLaMA, once, under an expected name")


_CONFIG_VALUE = tuple(
    f"{k} must be a"
    for k in (
        "hidden_size",
        "num_attention_heads",
        "num_hidden_layers",
        "vocab_size",
        "intermediate_size",
        "num_key_value_heads",
        "head_dim",
    )
)


def _meta_params(src: TensorSource) -> dict | None:
    """The ``params.json`` of a Meta ``consolidated.NN.pth`` source, else None."""
    from llmkit.io.meta.as_hf import MetaHFView
    from llmkit.io.meta.source import MetaSource

    return src.params if src.layout == "meta-pth" and isinstance(src, (MetaSource, MetaHFView)) else None


def _gguf_facts(src: TensorSource) -> GGUFFacts | None:
    """What a GGUF source's metadata says (architecture, names, file type, tensor types), else None."""
    if src.layout != "gguf":
        return None
    from llmkit.io.gguf.source import GGUFSource

    return src.facts() if isinstance(src, GGUFSource) else None


def _stored_code(src: TensorSource, name: str) -> str:
    """A tensor's type as its file stores it: a safetensors code, or a GGUF quantized type (``Q8_0``)."""
    return src.stored_type(name) or safetensors_code(src.info(name))


def summarize(path: str | Path, ckpt_key=None) -> ModelSummary:
    """Describe the weights at ``path`` without reading tensor data (``ckpt_key``: an encrypted .ckpt's)."""
    with open_source(path, ckpt_key=ckpt_key) as src:
        infos = src.infos()
        cfg = src.config() or {}
        # an AES-CBC / SM4-CBC checkpoint: nothing vouches for its values (no data is read here)
        warnings = list(src.warnings) + src.integrity_warnings(values_read=False)
        embed = _embed_shape(src)
        where = src.folder / "config.json" if src.folder else None
        hidden = _setting(cfg, "hidden_size", where, warnings)
        vocab = _setting(cfg, "vocab_size", where, warnings)
        num_layers = _setting(cfg, "num_hidden_layers", where, warnings)
        params = _meta_params(src)
        if params:
            params_json = src.folder / "params.json" if src.folder else None
            hidden = hidden or _setting(params, "dim", params_json, warnings)
            v = params.get("vocab_size")
            vocab = vocab or (v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None)
        if embed is not None and len(embed) == 2:
            if vocab is not None and embed[0] != vocab:
                warnings.append(f"config.json says vocab_size {vocab} but the embedding has {embed[0]} rows")
            vocab = embed[0]
            if src.adapter is None:
                hidden = hidden or embed[1]
        layers = {int(m.group(1)) for i in infos if (m := _LAYER_RE.search(i.name))}
        dtypes: dict[str, int] = {}
        for i in infos:
            code = _stored_code(src, i.name)
            dtypes[code] = dtypes.get(code, 0) + 1
        complete = completeness(src)
        if complete is not None and complete.status != "ok":
            warnings.append(f"incomplete model: {complete.detail}")
        src.read_to_end()  # a stream on stdin: read through, so that its writer finishes and a short one fails
        return ModelSummary(
            ok=complete is None or complete.status == "ok",
            checks=[complete] if complete is not None else [],
            path=shown(path),  # a URL as given, not as a Path folds it
            layout=src.layout,
            kind="adapter" if src.adapter is not None else "model",
            files=[str(p) for p in src.weight_files],
            tensor_count=len(infos),
            parameters=sum(i.numel for i in infos),
            total_bytes=sum(src.stored_nbytes(i.name) for i in infos),
            dtypes=dtypes,
            hidden_size=hidden,
            num_layers=num_layers or (max(layers) + 1 if layers else None),
            vocab_size=vocab,
            architecture=guess_architecture(hidden) if src.adapter is None else None,
            adapter=src.adapter,
            warnings=warnings,
            notices=[Notice.warning(w) for w in warnings],
            tensors=[
                TensorRow(i.name, _stored_code(src, i.name), list(i.shape), src.stored_nbytes(i.name)) for i in infos
            ],
            encryption=src.encryption,
            gguf=_gguf_facts(src),
        )


def inspect_model(options: InspectOptions) -> ModelSummary:
    """``llmkit inspect``: :func:`summarize` the options' path (headers only, no tensor data read)."""
    key = None
    if options.dec_key is not None:
        from llmkit.io.mindspore.keys import read_key

        key = read_key(options.dec_key, options.dec_mode, flag="--dec-key")
    return summarize(options.path, key)
