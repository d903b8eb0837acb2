"""A LLaMA's GGUF key-value metadata, built with the ``gguf`` package's writer in the order and with the types
``convert_hf_to_gguf.py`` writes for a ``LlamaForCausalLM`` (``conversion/base.py`` and ``conversion/llama.py``):

``general.architecture``, ``general.type``; the model's names (``gguf.Metadata``: from ``--model-name``, the
model card and the folder name, as the converter finds them; ``general.size_label`` from the parameter count);
``llama.block_count``, ``context_length``, ``embedding_length``, ``feed_forward_length``,
``attention.head_count(_kv)``, rope scaling (linear or YaRN, when the config has it), ``rope.freq_base``,
``attention.layer_norm_rms_epsilon``, ``attention.key_length``/``value_length`` (``head_dim``),
``general.file_type``, ``llama.vocab_size``, ``llama.rope.dimension_count``, ``general.quantization_version``,
from the config as transformers reads it (:func:`load_hparams`, with its defaults); then the SentencePiece
vocabulary and the special ids (``gguf.SpecialVocab``: bos/eos/unk/pad, ``add_bos_token``/``add_eos_token``,
the chat template).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmkit.errors import InputError
from llmkit.io.gguf.types import OutType
from llmkit.io.gguf.vocab import sentencepiece_vocab


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of the file as planned: GGUF name, shape (row-major), GGML type, data bytes."""

    name: str
    shape: tuple[int, ...]
    ttype: int
    nbytes: int


def _find(cfg: dict, keys: Sequence[str]) -> Any:
    return next((cfg[k] for k in keys if k in cfg), None)


def load_hparams(folder: Path) -> dict:
    """The model's config as ``convert_hf_to_gguf.py`` reads it (``ModelBase.load_hparams``): transformers'
    ``AutoConfig`` of the folder as a dict, so what config.json leaves out has transformers' default (a 2023
    LLaMA config.json has no ``num_key_value_heads``, ``rope_theta`` or ``head_dim``; the converter writes
    ``head_count_kv``, ``rope.freq_base``, ``key_length`` and ``value_length`` from the defaults); config.json
    as it is when transformers cannot read it, as the converter falls back."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its notes on a config (unknown rope keys) are not llmkit's output
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False).to_dict()
    except Exception:  # whatever transformers raises, the converter reads config.json instead
        return json.loads((folder / "config.json").read_bytes())
    finally:
        hf_logging.set_verbosity(verbosity)


def rope_parameters(cfg: dict) -> dict:
    """The config's rope settings in one dict (transformers 5's ``rope_parameters`` or the older
    ``rope_theta`` + ``rope_scaling``), as the converter reads them."""
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    if "rope_theta" not in rope and (theta := _find(cfg, ("rope_theta", "rotary_emb_base"))) is not None:
        rope["rope_theta"] = theta
    if "rope_type" not in rope and rope.get("type") is not None:
        rope["rope_type"] = rope["type"]
    if "original_max_position_embeddings" not in rope and "original_max_position_embeddings" in cfg:
        rope["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
    return rope


def _add_rope_scaling(w: Any, rope: dict) -> None:
    import gguf

    kind, factor = rope.get("rope_type"), rope.get("factor")
    if factor is None or kind not in ("linear", "yarn"):
        return
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if kind == "linear" else gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(factor)
    if kind == "yarn":
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        for key, add in (
            ("extrapolation_factor", w.add_rope_scaling_yarn_ext_factor),
            ("attention_factor", w.add_rope_scaling_yarn_attn_factor),
            ("beta_fast", w.add_rope_scaling_yarn_beta_fast),
            ("beta_slow", w.add_rope_scaling_yarn_beta_slow),
        ):
            value = rope.get(key, rope.get("attn_factor")) if key == "attention_factor" else rope.get(key)
            if value is not None:
                add(value)


def add_llama_parameters(w: Any, cfg: dict, outtype: OutType) -> None:
    """The ``llama.*`` hyper-parameters and ``general.file_type`` (the converter's ``set_gguf_parameters``)."""
    w.add_block_count(_find(cfg, ("n_layers", "num_hidden_layers", "n_layer", "num_layers")))
    adds = (
        (w.add_context_length, ("max_position_embeddings", "n_ctx", "n_positions", "max_length", "model_max_length")),
        (w.add_embedding_length, ("hidden_size", "n_embd", "dim")),
        (w.add_feed_forward_length, ("intermediate_size", "n_inner", "hidden_dim")),
        (w.add_head_count, ("num_attention_heads", "n_head", "n_heads")),
        (w.add_head_count_kv, ("num_key_value_heads", "n_kv_heads")),
    )
    for add, keys in adds:
        if (value := _find(cfg, keys)) is not None:
            add(value)
    rope = rope_parameters(cfg)
    _add_rope_scaling(w, rope)
    if rope.get("rope_theta") is not None:
        w.add_rope_freq_base(rope["rope_theta"])
    if (eps := _find(cfg, ("rms_norm_eps", "norm_eps"))) is not None:
        w.add_layer_norm_rms_eps(eps)
    if cfg.get("head_dim") is not None:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    w.add_file_type(outtype.file_type)
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def _add_vocab(w: Any, folder: Path, cfg: dict, files: dict[str, bytes]) -> None:
    import gguf

    if "tokenizer_config.json" in files:
        prefix = json.loads(files["tokenizer_config.json"]).get("add_prefix_space")
        if prefix is not None:
            w.add_add_space_prefix(prefix)
    vocab = sentencepiece_vocab(files["tokenizer.model"], cfg.get("vocab_size"), files)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    gguf.SpecialVocab(folder, n_vocab=len(vocab.tokens)).add_to_gguf(w, quiet=True)


def gguf_writer(
    files: dict[str, bytes],
    tensors: list[GGUFTensor],
    outtype: OutType,
    *,
    model_name: str,
    display_name: str | None = None,
    split_max_size: int = 0,
) -> Any:
    """A ``gguf.GGUFWriter`` holding every key and tensor info of the file (no data, no file opened).

    ``files``: the model's side files by name (``config.json`` and ``tokenizer.model`` are required);
    ``model_name``: the folder name the converter would read names from; ``display_name``: ``--model-name``.
    """
    import gguf
    import numpy as np

    for needed in ("config.json", "tokenizer.model"):
        if needed not in files:
            raise InputError(
                f"a GGUF file needs the model's {needed}, and this model has none",
                hint="GGUF's header holds them: give the model's folder that has them (from-meta/merge-lora "
                "--tokenizer, from-ckpt --config DIR), or put them beside its weights",
            )
    w = gguf.GGUFWriter(None, "llama", split_max_size=split_max_size)
    for t in tensors:
        # the logical shape with a float dtype: the writer keeps it as given (a uint8 dtype means a byte shape)
        w.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=gguf.GGMLQuantizationType(t.ttype))
    with tempfile.TemporaryDirectory(prefix="llmkit-gguf-") as tmp:
        folder = Path(tmp) / (model_name or "model")
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        cfg = load_hparams(folder)
        total = w.get_total_parameter_count()
        meta = gguf.Metadata.load(None, folder, display_name, total[0])
        if meta.name is None:
            meta.name = folder.name
        if meta.size_label is None and total[0] > 0:
            meta.size_label = gguf.size_label(*total)
        w.add_type(gguf.GGUFType.MODEL)
        meta.set_gguf_meta_model(w)
        add_llama_parameters(w, cfg, outtype)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_vocab(w, folder, cfg, files)
    return w


def header_bytes(w: Any) -> list[bytes]:
    """Each file's header (magic, version, counts, key-values, tensor infos), unpadded, from the writer of
    :func:`gguf_writer`: the writer serializes into in-memory files, so the header is known before any data."""
    import io

    from gguf.gguf_writer import WriterState

    buffers = [io.BytesIO() for _ in w.tensors]
    w.fout, w.state = buffers, WriterState.EMPTY  # the writer's own "file opened" state, on memory files
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.fout = None
    return [b.getvalue() for b in buffers]
