"""Meta's LLaMA originals seen as a Hugging Face model (SPEC.md section 4), streaming.

:class:`MetaHFView` is a :class:`~llmkit.io.core.source.TensorSource` over ``consolidated.NN.pth`` shards
that speaks Hugging Face: HF names in HF order, each tensor joined across the model-parallel shards on
its dimension, wq/wk permuted from Meta's interleaved rotary rows to rotate-half, ``rope.freqs``
dropped, dtypes kept (LLaMA-1 originals are fp16). For one tensor only its slices from each shard are
read. ``from-meta`` writes exactly this view; ``recover --base`` and ``merge-lora --base`` read a Meta
folder through it, so the same bytes come out without an intermediate copy.

Before any tensor is read, :func:`check_meta` compares ``params.json`` with the tensors (dim, layers,
vocabulary, heads) and the shard count with the heads; every mismatch names the file. The shard set
and ``params.json`` types are checked by :class:`~llmkit.io.meta.source.MetaSource` (``llmkit.io.meta.checks``);
here the shard order is checked by content when the shapes are those of a published model.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from llmkit.errors import InputError
from llmkit.io.core.llama_tensors import Findings
from llmkit.io.core.llama_weights import hf_sort_key, layers_seen, llama_config
from llmkit.io.core.regular import check_regular, is_special
from llmkit.io.core.renamed import RenamedSource
from llmkit.io.core.source import TensorSource
from llmkit.io.meta.names import meta_to_hf_name, permute_meta_to_hf
from llmkit.io.meta.source import MetaSource


def _int(params: dict, key: str, path: Path) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(
            f"params.json: {key} must be a positive integer, found {value!r}",
            path=path,
            hint="the file is damaged or edited by hand; use Meta's original params.json",
        )
    return value


class MetaHFView(RenamedSource):
    """A Meta folder as an HF LLaMA: the names, order, rotary layout and shapes ``from-meta`` writes
    (``meta`` under HF names, in transformers' order, without ``rope.freqs``)."""

    def __init__(self, meta: MetaSource):
        if not meta.params:
            raise InputError(
                "no params.json beside the consolidated.NN.pth files",
                path=meta.folder,
                hint="Meta's download has params.json in the same folder; put it back",
            )
        params_path = (meta.folder or meta.path) / "params.json"
        self.meta = meta
        n_heads = _int(meta.params, "n_heads", params_path)
        if n_heads is None:
            raise InputError("params.json has no n_heads", path=params_path, hint="use Meta's original params.json")
        self.n_heads: int = n_heads
        self.n_kv_heads: int = _int(meta.params, "n_kv_heads", params_path) or n_heads
        from llmkit.io.core.llama_tensors import check_source

        self.findings = check_source(meta)  # every weight params.json describes, once, before any is read
        hf_names = {n: meta_to_hf_name(n, meta.weight_map[n].path) for n in meta.keys()}
        super().__init__(meta, {n: hf or n for n, hf in hf_names.items()})  # rope.freqs (no HF name): left out below
        order = sorted((hf for hf in hf_names.values() if hf is not None), key=hf_sort_key)
        self.weight_map = {n: self.weight_map[n] for n in order}
        self._stored = {n: self._stored[n] for n in order}
        self.params = meta.params
        check_meta(self, params_path)
        self.warnings = [w for w in meta.warnings if w != meta.order_note]
        if meta.order_note is not None:  # the shapes did not settle the order: the published hashes may
            from llmkit.io.meta.checks import published_order

            note = published_order(list(self.weight_files), meta.shape_facts)
            if note is not None:
                self.warnings.append(note)
        self.meta_folder = Path(meta.folder or meta.path)
        self.folder = self._hf_folder()

    def _hf_folder(self) -> Path:
        """A private folder holding what an HF folder of this model holds besides weights: the derived
        ``config.json`` and ``generation_config.json`` and a link to the ``tokenizer.model`` found beside the
        shards or in their parent (Meta's download layout). Every job reads config/tokenizer files from it
        unchanged; it is removed by :meth:`close`."""
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="llmkit-meta-hf-"))
        for name, data in config_files(hf_config(self)).items():
            (folder / name).write_bytes(data)
        tok = tokenizer_model(self.meta_folder)
        if tok is not None:  # linked, not copied: no write that a full disk or a size limit could fail
            check_regular(tok, "a SentencePiece tokenizer.model")
            os.symlink(tok.resolve(), folder / "tokenizer.model")
        return folder

    def _heads(self, name: str) -> int | None:
        if name.endswith("self_attn.q_proj.weight"):
            return self.n_heads
        if name.endswith("self_attn.k_proj.weight"):
            return self.n_kv_heads
        return None

    def prechecked(self) -> tuple[bool, Findings | None]:
        return True, self.findings  # checked once, from the Meta names, when the view was made

    def get(self, name: str) -> torch.Tensor:
        t = super().get(name)
        heads = self._heads(name)
        if heads is not None:  # Meta's interleaved rotary pairs -> rotate-half; a copy, so the pages can go
            t = permute_meta_to_hf(t, heads).contiguous()
            self.release(name)
        return t

    def config(self) -> dict:
        """The HF ``config.json`` for this model (derived from params.json and the tensor shapes)."""
        return hf_config(self)

    def close(self) -> None:
        import shutil

        super().close()  # closes the Meta shards
        if self.folder is not None and self.folder.name.startswith("llmkit-meta-hf-"):
            shutil.rmtree(self.folder, ignore_errors=True)


def check_meta(view: MetaHFView, params_path: Path) -> None:
    """params.json against the tensors, and the shard count against the heads; before any tensor is read."""
    params = view.params or {}
    embed = view.info("model.embed_tokens.weight") if "model.embed_tokens.weight" in view else None
    if embed is None:
        raise InputError("the shards hold no tok_embeddings.weight: not a LLaMA checkpoint", path=view.path)
    vocab, dim = embed.shape
    layers = layers_seen(view.keys())
    want = {"dim": dim, "n_layers": layers}
    p_vocab = params.get("vocab_size")
    if isinstance(p_vocab, int) and p_vocab > 0:
        want["vocab_size"] = vocab
    for key, actual in want.items():
        stated = _int(params, key, params_path)
        if stated is not None and stated != actual:
            raise InputError(
                f"params.json says {key}={stated} but the tensors have {actual}",
                path=params_path,
                hint="params.json and the consolidated.NN.pth files come from different models",
            )
    if dim % view.n_heads or (dim // view.n_heads) % 2:
        raise InputError(
            f"params.json says n_heads={view.n_heads}, which does not divide dim {dim} into even head sizes",
            path=params_path,
            hint="use the params.json of these weights",
        )
    shards = len(view.files)
    if view.n_kv_heads % shards:
        raise InputError(
            f"{shards} model-parallel shards do not divide {view.n_kv_heads} heads",
            path=view.path,
            hint="a shard is missing or extra: Meta's 7B has 1, 13B 2, 33B 4, 65B 8",
        )
    names = sorted(p.name for p in view.weight_files)
    expected = [f"consolidated.{i:02d}.pth" for i in range(shards)]
    if names != expected:
        raise InputError(
            f"the shards are {', '.join(names)}, expected {', '.join(expected)}",
            path=view.path,
            hint="a shard is missing: download every consolidated.NN.pth of the model",
        )


def intermediate_size(dim: int, multiple_of: int = 256) -> int:
    """Meta's FFN size: ``multiple_of * ceil(int(2 * 4 * dim / 3) / multiple_of)`` (11008 for 7B, 13824 for 13B)."""
    return multiple_of * math.ceil(int(2 * 4 * dim / 3) / multiple_of)


def hf_config(view: MetaHFView) -> dict:
    """``config.json`` of the HF LLaMA that ``view`` is: sizes from the tensors (the FFN size from w1,
    the vocabulary from the embedding), ``rms_norm_eps`` from params, dtype from the weights."""
    params = view.params or {}
    vocab, dim = view.info("model.embed_tokens.weight").shape
    gate = "model.layers.0.mlp.gate_proj.weight"
    inter = view.info(gate).shape[0] if gate in view else intermediate_size(dim, params.get("multiple_of", 256))
    return llama_config(
        hidden=dim,
        intermediate=inter,
        heads=view.n_heads,
        kv_heads=view.n_kv_heads,
        layers=layers_seen(view.keys()),
        vocab=vocab,
        dtype=view.info("model.embed_tokens.weight").dtype,
        rms_norm_eps=float(params.get("norm_eps", 1e-6)),
        max_position_embeddings=int(params.get("max_seq_len", 2048)),
        rope_theta=float(params.get("rope_theta", 10000.0)),
    )


GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}


def config_files(config: dict) -> dict[str, bytes]:
    """``config.json`` and ``generation_config.json`` bytes for a derived config."""
    return {
        "config.json": (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
        "generation_config.json": (json.dumps(GENERATION_CONFIG, indent=2, sort_keys=True) + "\n").encode(),
    }


def tokenizer_model(meta_folder: Path) -> Path | None:
    """``tokenizer.model`` beside Meta's shards, or in their parent (Meta's download layout)."""
    for where in (meta_folder, meta_folder.parent):
        if (where / "tokenizer.model").is_file() or is_special(where / "tokenizer.model"):  # a FIFO: refused later
            return where / "tokenizer.model"
    return None


def open_as_hf(source: TensorSource) -> TensorSource:
    """``source`` itself, or a Meta folder seen as HF (:class:`MetaHFView`); ``source`` is closed when its
    checks fail, so callers need no cleanup of their own."""
    if not isinstance(source, MetaSource):
        return source
    try:
        return MetaHFView(source)
    except BaseException:
        source.close()
        raise
