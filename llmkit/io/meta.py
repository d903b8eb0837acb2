"""Meta's LLaMA layout, all of it (SPEC.md sections 3 and 4): names, the rotary permutation, the
model-parallel join and split rules, ``params.json``, the reader and the ``meta-pth`` sink.

- names: ``model.embed_tokens.weight`` <-> ``tok_embeddings.weight``, ``model.norm.weight`` <->
  ``norm.weight``, ``lm_head.weight`` <-> ``output.weight``, and per layer ``self_attn.{q,k,v,o}_proj`` <->
  ``attention.w{q,k,v,o}``, ``mlp.{gate,down,up}_proj`` <-> ``feed_forward.w{1,2,3}``,
  ``input_layernorm`` <-> ``attention_norm``, ``post_attention_layernorm`` <-> ``ffn_norm``;
- wq and wk rows: Meta's interleaved rotary pairs <-> HF's rotate-half halves (per head);
- model-parallel shards (13B = 2): q/k/v, w1, w3 and output split on dim 0, wo, w2 and tok_embeddings on
  dim 1, norms replicated. ``output`` may split unevenly (49953 rows): the last shard gets the remainder,
  as the Chinese-LLaMA-Alpaca merge script does.
- :class:`MetaSource` joins ``consolidated.NN.pth`` shards into whole tensors on demand (one output
  tensor's slices in memory at a time); :class:`MetaPthSink` (format ``meta-pth``) takes HF-named
  tensors and writes ``consolidated.NN.pth`` + ``params.json``: names mapped, wq/wk un-permuted,
  split across the shards. Both are streaming: peak memory is about one tensor.

The files are torch zips laid out like ``.bin`` shards (``llmkit.io.layouts``), with the same safe
writes as every sink: temporary names, checks, rename at the end, nothing left behind on error.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from llmkit.errors import InputError
from llmkit.io.files import TOKENIZER_FILES
from llmkit.io.jsonfile import int_field, number_field, read_json
from llmkit.io.regular import is_special
from llmkit.io.sinks import OWN_FILES, ShardSetWriter, TensorSpec, register_sink
from llmkit.io.sources import TensorInfo, TensorSource, TorchFile

# Top-level tensors (HF name -> Meta name).
HF_TO_META_TOP: dict[str, str] = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
# Per-layer tensors (HF suffix after ``model.layers.N.`` -> Meta suffix after ``layers.N.``).
HF_TO_META_LAYER: dict[str, str] = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
META_TO_HF_TOP = {v: k for k, v in HF_TO_META_TOP.items()}
META_TO_HF_LAYER = {v: k for k, v in HF_TO_META_LAYER.items()}

# Model-parallel shard counts of Meta's releases, by hidden size (7B, 13B, 33B, 65B).
META_SHARDS_BY_DIM = {4096: 1, 5120: 2, 6656: 4, 8192: 8}

_HF_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_META_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")
# Buffers of old checkpoints that Meta's layout has no place for (the Chinese-LLaMA-Alpaca script drops them).
_HF_DROPPED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def hf_to_meta_name(name: str, path: object = None) -> str | None:
    """The Meta name of an HF LLaMA tensor; None for buffers Meta does not store (``rotary_emb.inv_freq``).
    ``path``: the model it comes from, named by the error."""
    if name in HF_TO_META_TOP:
        return HF_TO_META_TOP[name]
    if _HF_DROPPED.search(name):
        return None
    m = _HF_LAYER_RE.match(name)
    if m and m.group(2) in HF_TO_META_LAYER:
        return f"layers.{m.group(1)}.{HF_TO_META_LAYER[m.group(2)]}"
    raise InputError(
        f"tensor {name!r} has no place in Meta's LLaMA layout",
        path=path,
        hint="--format pth handles LLaMA models only; write safetensors or bin instead",
    )


def meta_to_hf_name(name: str, path: object = None) -> str | None:
    """The HF name of a Meta LLaMA tensor; None for ``rope.freqs`` (recomputed by transformers). ``path``: the
    file holding it, named by the error."""
    if name in META_TO_HF_TOP:
        return META_TO_HF_TOP[name]
    if name == "rope.freqs":
        return None
    m = _META_LAYER_RE.match(name)
    if m and m.group(2) in META_TO_HF_LAYER:
        return f"model.layers.{m.group(1)}.{META_TO_HF_LAYER[m.group(2)]}"
    raise InputError(
        f"tensor {name!r} is not part of Meta's LLaMA layout",
        path=path,
        hint="from-meta reads Meta's consolidated.NN.pth files of a LLaMA model only",
    )


_HF_ROTARY = re.compile(r"(^|\.)self_attn\.(?P<role>[qk])_proj\.weight$")


def check_rotary_heads(
    shapes: Mapping[str, tuple[int, ...]],
    heads: int,
    kv_heads: int,
    *,
    path: object = None,
    config: str = "config.json",
) -> None:
    """Before any output: every q/k projection (HF names) holds whole rotary pairs for its head count.
    ``path``: the config file the head counts come from (``config``: its kind), named by the error."""
    fields = ("n_heads", "n_kv_heads") if config == "params.json" else ("num_attention_heads", "num_key_value_heads")
    for name, shape in shapes.items():
        m = _HF_ROTARY.search(name)
        if m is None:
            continue
        n, field = (heads, fields[0]) if m.group("role") == "q" else (kv_heads, fields[1])
        if len(shape) != 2 or n <= 0 or shape[0] % (2 * n):
            raise InputError(
                f"{config} gives {n} heads ({field}), but {name} is {tuple(shape)}: its rows are not "
                f"a multiple of 2 x {n} (a rotary pair per head), so they cannot be permuted",
                path=path,
                hint=f"use the {config} of these weights",
            )


def _check_heads(w: torch.Tensor, n_heads: int) -> None:
    """The last line of defence (planning runs :func:`check_rotary_heads` first)."""
    if w.dim() != 2 or n_heads <= 0 or w.shape[0] % (2 * n_heads):
        raise InputError(
            f"cannot permute a {tuple(w.shape)} tensor for {n_heads} heads (rows must be a multiple of 2 x heads)"
        )


def permute_meta_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """wq/wk rows: Meta interleaved rotary pairs -> HF rotate-half (transformers' conversion script)."""
    _check_heads(w, n_heads)
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def unpermute_hf_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """wq/wk rows: HF rotate-half -> Meta interleaved (the exact inverse of :func:`permute_meta_to_hf`)."""
    _check_heads(w, n_heads)
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def meta_split_sizes(name: str, shape: tuple[int, ...], parts: int) -> list[tuple[int, ...]]:
    """The shape of ``name`` in each of ``parts`` Meta shards (SPEC.md section 3's split rules)."""
    if parts == 1:
        return [tuple(shape)]
    dim = meta_shard_dim(name)
    if dim is None:
        return [tuple(shape)] * parts
    size = shape[dim]
    if size % parts == 0:
        pieces = [size // parts] * parts
    elif name == "output.weight":
        # Chinese-LLaMA-Alpaca: 49953 rows over 2 shards -> [24976, 24977] (the last takes the remainder).
        pieces = [size // parts] * parts
        pieces[-1] += size % parts
    else:
        raise InputError(
            f"{name}: dim {dim} of size {size} does not split into {parts} equal model-parallel parts",
            hint="choose another shard count",
        )
    out = []
    for p in pieces:
        s = list(shape)
        s[dim] = p
        out.append(tuple(s))
    return out


def meta_split(name: str, tensor: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """Cut one Meta tensor into its model-parallel pieces (views; norms are the same tensor each time)."""
    if parts == 1:
        return [tensor]
    dim = meta_shard_dim(name)
    if dim is None:
        return [tensor] * parts
    sizes = [s[dim] for s in meta_split_sizes(name, tuple(tensor.shape), parts)]
    return list(torch.split(tensor, sizes, dim=dim))


def default_meta_shards(hidden_size: int) -> int:
    """How many ``consolidated.NN.pth`` files Meta used for this size (1 for unknown sizes)."""
    return META_SHARDS_BY_DIM.get(hidden_size, 1)


def llama_multiple_of(dim: int, intermediate: int) -> int | None:
    """The ``multiple_of`` that makes Meta's FFN size formula give ``intermediate`` (256 for LLaMA-1)."""
    base = int(2 * (4 * dim) / 3)
    for m in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if m * math.ceil(base / m) == intermediate:
            return m
    return None


def meta_params(config: dict, path: object = None) -> dict:
    """``params.json`` for an HF LLaMA ``config.json`` (keys and order as in Meta's and Chinese-LLaMA's files).
    A setting of the wrong type is an InputError naming the file (``path``, else ``config.path`` when read
    by read_json)."""
    where = path if path is not None else getattr(config, "path", None)
    sizes = {
        key: int_field(config, key, path=where)
        for key in ("hidden_size", "num_attention_heads", "intermediate_size", "num_key_value_heads")
    }
    sizes["num_hidden_layers"] = int_field(config, "num_hidden_layers", path=where, positive=False)
    if sizes["num_hidden_layers"] is not None and sizes["num_hidden_layers"] < 0:  # 0: a model of no layers
        raise InputError(
            f"num_hidden_layers must not be negative, found {sizes['num_hidden_layers']}",
            path=where,
            hint="the file is damaged or was edited by hand; download it again",
        )
    dim, heads, layers = sizes["hidden_size"], sizes["num_attention_heads"], sizes["num_hidden_layers"]
    if dim is None or heads is None or layers is None:
        raise InputError(
            "config.json lacks hidden_size / num_attention_heads / num_hidden_layers",
            path=where,
            hint="--format pth needs a LLaMA config.json beside the base weights",
        )
    eps = number_field(config, "rms_norm_eps", path=where)
    params: dict = {"dim": dim}
    intermediate = sizes["intermediate_size"]
    multiple_of = llama_multiple_of(dim, intermediate) if intermediate else 256
    params["multiple_of"] = multiple_of if multiple_of is not None else 256
    params["n_heads"] = heads
    params["n_layers"] = layers
    params["norm_eps"] = eps if eps is not None else 1e-6
    params["vocab_size"] = -1
    kv = sizes["num_key_value_heads"]
    if kv is not None and kv != heads:
        params["n_kv_heads"] = kv
    return params


# ---------------------------------------------------------------- Meta consolidated.NN.pth

_META_CAT_DIM0 = ("attention.wq.", "attention.wk.", "attention.wv.", "feed_forward.w1.", "feed_forward.w3.", "output.")
_META_CAT_DIM1 = ("attention.wo.", "feed_forward.w2.", "tok_embeddings.")


def meta_shard_dim(name: str) -> int | None:
    """The dim along which Meta model-parallel shards split ``name`` (SPEC.md section 4).

    None means replicated in every shard (norms, ``rope.freqs``): shard 0's copy is used.
    """
    if any(name.startswith(p) or f".{p}" in name for p in _META_CAT_DIM0):
        return 0
    if any(name.startswith(p) or f".{p}" in name for p in _META_CAT_DIM1):
        return 1
    return None


class MetaSource(TensorSource):
    """Meta ``consolidated.NN.pth`` shards presented as whole tensors (joined on demand)."""

    def __init__(self, path: Path, folder: Path, shard_files: list[TorchFile]):
        from llmkit.io import meta_checks as checks

        first = shard_files[0]
        paths = [f.path for f in shard_files]
        checks.check_shard_names(paths, folder)
        self.params = self._read_params(folder)
        checks.check_shard_count(paths, first.infos, folder, (self.params or {}).get("dim"))
        for other in shard_files[1:]:
            if set(other.infos) != set(first.infos):
                missing = sorted(set(first.infos) ^ set(other.infos))[:3]
                raise InputError(
                    f"Meta shards disagree on tensor names (e.g. {', '.join(missing)})",
                    path=other.path,
                    hint="all consolidated.NN.pth files must come from one model",
                )
        super().__init__(
            path=path,
            layout="meta-pth",
            files=list(shard_files),
            weight_map=dict.fromkeys(first.infos, first),
            folder=folder,
        )
        self._joined: dict[str, TensorInfo] = {}
        for name, info in first.infos.items():
            dim = meta_shard_dim(name) if len(shard_files) > 1 else None
            shape = list(info.shape)
            if dim is not None:
                shape[dim] = sum(f.infos[name].shape[dim] for f in shard_files)
            self._joined[name] = TensorInfo(name, info.dtype, tuple(shape), path)
        if self.params is not None:
            checks.check_params_against_tensors(self.params, self._joined, folder / PARAMS_JSON)
        settled, split_note = (
            (True, None) if len(paths) == 1 else checks.uneven_split_order(paths, [f.infos for f in shard_files])
        )
        if split_note is not None:
            self.warnings.append(split_note)
        self.shape_facts = checks.shape_facts(self._joined, len(paths))
        # The order of model-parallel shards: settled by the shapes, else by the published hashes (hashed
        # by MetaHFView, which reads every byte anyway), else unverified; inspect reads headers only.
        self.order_note: str | None = None
        if not settled:
            tables = checks.published_tables_for(self.shape_facts)
            self.order_note = (
                checks.order_unverified(len(paths), [])
                if not tables
                else f"inspect reads headers only, so the order of the {len(paths)} shards is not checked "
                f"here: llmkit verify {folder} compares them with the published table "
                f"{tables[0].name} (from-meta, recover and merge-lora check it themselves)"
            )
            self.warnings.append(self.order_note)

    @staticmethod
    def _read_params(folder: Path) -> dict | None:
        from llmkit.io.meta_checks import check_params_types

        p = folder / PARAMS_JSON
        if not (p.is_file() or is_special(p)):  # a FIFO or device is refused by read_json, not taken as absent
            return None
        return check_params_types(read_json(p), p)

    def info(self, name: str) -> TensorInfo:
        return self._joined[name]

    def get(self, name: str) -> torch.Tensor:
        if name not in self._joined:
            raise InputError(f"no tensor named {name!r}", path=self.path)
        dim = meta_shard_dim(name) if len(self.files) > 1 else None
        if dim is None:
            return self.files[0].get(name)
        joined = torch.cat([f.get(name) for f in self.files], dim=dim)  # a copy: the pieces can go
        for f in self.files:
            f.release(name)
        return joined

    def release(self, name: str) -> None:
        if meta_shard_dim(name) is None or len(self.files) == 1:
            self.files[0].release(name)

    def prefetch(self, name: str) -> None:
        for f in self.files:
            f.prefetch(name)


PARAMS_JSON = "params.json"


def meta_shard_name(index: int) -> str:
    return f"consolidated.{index:02d}.pth"


class MetaShardWriter(ShardSetWriter):
    """Write ``consolidated.00.pth`` ... and ``params.json``; a context manager.

    ``shard_specs[i]`` lists the tensors of shard ``i`` in file order. Use ``w.write(i, name, tensor)``
    in any order; on a clean exit the files are checked and renamed to their final names.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        shard_specs: list[list[TensorSpec]],
        *,
        params: dict,
        force: bool = False,
        extra_bytes: int = 0,
        inputs: Iterable[str | os.PathLike | None] | None = None,
    ):
        if not shard_specs:
            raise InputError("a Meta checkpoint needs at least one shard")
        super().__init__(
            out_dir,
            [(meta_shard_name(i), specs) for i, specs in enumerate(shard_specs)],
            fmt="bin",
            force=force,
            inputs=inputs,
        )
        self.smaller_files = "write more, smaller shards (to-meta --shards, merge-lora --pth-shards)"
        self.own_files = OWN_FILES["meta-pth"]
        self.files.append(PARAMS_JSON)
        self.add_file(PARAMS_JSON, (json.dumps(params) + "\n").encode())
        self._check_destination(extra_bytes)

    def write(self, shard: int, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor of shard ``shard``; it must have the planned dtype and shape."""
        self.write_to(shard, name, tensor)


@register_sink("meta-pth")
class MetaPthSink:
    """HF-named LLaMA tensors in; Meta ``consolidated.NN.pth`` shards and ``params.json`` out.

    Given the HF specs up front (as every sink), it maps names, un-permutes wq/wk to Meta's interleaved
    rotary rows and splits each tensor over ``shards`` files (default: Meta's count for the hidden size).
    Tensors Meta has no place for (``rotary_emb.inv_freq``) are dropped; ``config.json`` becomes
    ``params.json``, so only tokenizer files are carried.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        specs: list[TensorSpec],
        *,
        config: dict,
        shards: int | None = None,
        force: bool = False,
        extra_bytes: int = 0,
        inputs: Iterable[str | os.PathLike | None] | None = None,
        config_path: object = None,
    ):
        params = meta_params(config, config_path)
        self.shards = shards or default_meta_shards(params["dim"])
        kv = params.get("n_kv_heads", params["n_heads"])
        check_rotary_heads({s.name: s.shape for s in specs}, params["n_heads"], kv, path=config_path)
        if params["n_heads"] % self.shards or kv % self.shards:
            raise InputError(
                f"{self.shards} model-parallel shards do not divide the model's {params['n_heads']} "
                f"attention heads ({kv} key/value heads)",
                hint="choose a shard count that divides the heads (Meta: 7B 1, 13B 2, 33B 4, 65B 8)",
            )
        self._heads = {
            "attention.wq.weight": params["n_heads"],
            "attention.wk.weight": params.get("n_kv_heads", params["n_heads"]),
        }
        model = Path(str(config_path)).parent if config_path is not None else None
        self._names = {s.name: m for s in specs if (m := hf_to_meta_name(s.name, model)) is not None}
        shard_specs: list[list[TensorSpec]] = [[] for _ in range(self.shards)]
        for s in specs:
            meta = self._names.get(s.name)
            if meta is not None:
                for i, shape in enumerate(meta_split_sizes(meta, s.shape, self.shards)):
                    shard_specs[i].append(TensorSpec(meta, s.dtype, shape))
        self._writer = MetaShardWriter(
            out_dir, shard_specs, params=params, force=force, extra_bytes=extra_bytes, inputs=inputs
        )

    @property
    def files(self) -> list[str]:
        return self._writer.files

    def __getattr__(self, name: str):  # total_size, free_disk_bytes, space_margin, needed_disk_bytes
        if name in (
            "total_size",
            "free_disk_bytes",
            "space_margin",
            "needed_disk_bytes",
            "out_dir",
            "kept_files",
            "replaced_files",
        ):
            return getattr(self._writer, name)
        raise AttributeError(name)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        meta = self._names.get(name)
        if meta is None:
            return  # a buffer Meta's layout has no place for
        leaf = ".".join(meta.split(".")[-3:])
        if leaf in self._heads:  # HF rotate-half -> Meta's interleaved rotary rows
            tensor = unpermute_hf_to_meta(tensor, self._heads[leaf])
        for i, piece in enumerate(meta_split(meta, tensor, self.shards)):
            self._writer.write_to(i, meta, piece)

    def add_file(self, name: str, data: bytes) -> None:
        self._writer.add_file(name, data)

    def copy_aux_files(
        self,
        folder: Path | None,
        *,
        dtype: torch.dtype | None = None,
        vocab_size: int | None = None,
        skip: Iterable[str] = (),
        only: Iterable[str] | None = None,
    ) -> list[str]:
        wanted = set(TOKENIZER_FILES if only is None else only) - set(skip)
        return self._writer.copy_files(folder, [n for n in TOKENIZER_FILES if n in wanted])

    def __enter__(self) -> MetaPthSink:
        self._writer.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer.__exit__(exc_type, exc, tb)
