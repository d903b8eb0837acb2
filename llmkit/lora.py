"""Merge peft LoRA adapters into a base model, streaming (SPEC.md section 3).

The merge is peft's ``PeftModel.from_pretrained(base, adapter).merge_and_unload()``, applied for each adapter
in order, written out one tensor at a time:

- **delta**: ``W += transpose_if(fan_in_fan_out)(B @ A) * scaling`` with ``scaling = lora_alpha / r``
  (``lora_alpha / sqrt(r)`` with ``use_rslora``; ``rank_pattern``/``alpha_pattern`` per module). ``B @ A`` is
  computed in fp32 whatever the weight dtype.
- **rounding**: the fp32 delta is added to the weight in fp32 and the sum is rounded once to the weight
  dtype: ``W' = round(float(W) + delta)``. That is what peft 0.21 does by default (it loads LoRA weights as
  fp32, ``autocast_adapter_dtype=True``, and ``W += delta`` promotes), so fp32, fp16 and bf16 results equal
  peft's bit for bit. Older peft (and ``autocast_adapter_dtype=False``) rounded the delta to fp16 first and
  then added (two roundings); that differs from llmkit by at most one ulp.
- **dtype** (``--dtype``; ``keep`` = each tensor's own): a tensor that keeps its dtype is merged in it, each
  adapter's sum rounded, as peft merging into the model as loaded. A tensor converted to another dtype is
  merged in fp32 (the base exactly, every adapter's delta) and cast once: ``round_out(float32(W) + delta)``,
  not ``round_out(W) + delta`` (two roundings); a tensor no adapter changes is cast once.
- **fan_in_fan_out** is decided by the base weight's layout, as peft decides by the layer type: a Linear
  weight ``[out, in]`` never transposes (peft overrides ``fan_in_fan_out=true`` with a warning), a GPT-2
  ``Conv1D`` weight ``[in, out]`` always does. LoRA on an embedding adds ``(B @ A)^T``.
- **full tensors** in the adapter (``modules_to_save`` such as Chinese-LLaMA's ``embed_tokens``/``lm_head``,
  or saved embedding layers) **replace** the base tensor; with several adapters the last one wins.
- **vocabulary**: before an adapter is applied, the embedding and LM head grow to that adapter's size (its
  saved embedding rows, else its tokenizer), as the Chinese-LLaMA-Alpaca script calls
  ``resize_token_embeddings(len(tokenizer))``. New rows that no adapter replaces get the mean of the existing
  rows (computed in fp32, cast to the dtype): the centre of transformers' default ``mean_resizing``, which
  samples from N(mean, 1e-9 * covariance) - random, so only its mean is reproducible - and exactly what
  transformers writes when that covariance is not positive definite.

Memory: adapters are opened lazily (headers, mmap); each base tensor is read once, every adapter's delta or
replacement is applied, and it is written; peak ~ a few copies of the largest tensor.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from llmkit.errors import InputError
from llmkit.io.jsonfile import json_kind, read_json
from llmkit.io.sinks import AUX_FILES, DEFAULT_SHARD_SIZE, ShardedWriter, TensorSpec, ensure_output_is_new
from llmkit.io.sources import ADAPTER_CONFIG, TensorSource, open_source

DTYPE_CHOICES = {"keep": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FORMATS = ("safetensors", "bin", "pth")
MODEL_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = tuple(n for n in AUX_FILES if n not in MODEL_FILES)
ROUNDING = "W' = round_to_dtype(float32(W) + (B @ A in fp32) * scaling): one rounding, as peft 0.21 by default"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")

# Model types whose linear layers are transformers' Conv1D ([in, out] weights; peft forces fan_in_fan_out).
CONV1D_MODEL_TYPES = {"gpt2", "openai-gpt", "imagegpt", "decision_transformer"}
# Input embeddings and output heads: the tensors whose rows are the vocabulary.
INPUT_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "tok_embeddings.weight",
                    "embed_in.weight")
OUTPUT_HEADS = ("lm_head.weight", "lm_head.bias", "embed_out.weight")
# Chinese-LLaMA-Alpaca's vocabularies (SPEC.md section 3): named in the mixed-up-tokenizer messages.
KNOWN_VOCABS = {32000: "original LLaMA", 49953: "Chinese-LLaMA LoRA", 49954: "Chinese-Alpaca LoRA"}

_PEFT_PREFIXES = ("base_model.model.", "base_model.")
_LORA_LINEAR_RE = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.(?P<adapter>[^.]+))?\.(?P<param>weight|bias)$")
_LORA_EMBED_RE = re.compile(r"^(?P<module>.+)\.(?P<part>lora_embedding_A|lora_embedding_B)(?:\.(?P<adapter>[^.]+))?$")
_MODULES_TO_SAVE_RE = re.compile(r"\.modules_to_save(?:\.[^.]+)?\.")
_UNSUPPORTED_KEYS = {
    "lora_magnitude_vector": "a DoRA adapter (use_dora); llmkit merges plain LoRA only",
    "trainable_tokens_delta": "trainable-token deltas (trainable_token_indices), which llmkit does not merge",
    "lora_E": "an AdaLoRA adapter; llmkit merges plain LoRA only",
}


# ------------------------------------------------------------------ adapter_config.json

# Types peft accepts for the adapter_config.json fields llmkit reads (else a plain error, not a crash).
_CONFIG_FIELD_TYPES = {"target_modules": (list, str), "modules_to_save": list, "rank_pattern": dict,
                       "alpha_pattern": dict, "layers_to_transform": (int, list), "layers_pattern": (list, str),
                       "exclude_modules": (list, str)}


@dataclass
class LoraSettings:
    """The parts of ``adapter_config.json`` that decide the merge (the file is authoritative)."""

    path: Path
    r: int
    r_given: bool  # False: the file has no "r" and r is peft's default, 8
    lora_alpha: float
    target_modules: list[str] | str | None
    modules_to_save: list[str]
    fan_in_fan_out: bool
    use_rslora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    layers_to_transform: list[int] | int | None
    layers_pattern: list[str] | str | None
    exclude_modules: list[str] | str | None
    lora_bias: bool
    base_model: str | None
    init_lora_weights: object

    @classmethod
    def read(cls, path: Path) -> "LoraSettings":
        cfg = read_json(path, hint="download the adapter again")  # not a JSON object: an InputError naming it
        assert isinstance(cfg, dict)
        peft_type = str(cfg.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise InputError(f"this is a {peft_type} adapter; llmkit merges LoRA adapters only", path=path)
        if cfg.get("use_dora"):
            raise InputError("this is a DoRA adapter (use_dora: true); llmkit merges plain LoRA only", path=path,
                             hint="merge it with peft's merge_and_unload")
        if cfg.get("target_parameters"):
            raise InputError("the adapter targets parameters (target_parameters), which llmkit does not merge",
                             path=path, hint="merge it with peft's merge_and_unload")
        if cfg.get("trainable_token_indices"):
            raise InputError("the adapter trains single token rows (trainable_token_indices), which llmkit does "
                             "not merge", path=path, hint="merge it with peft's merge_and_unload")
        for key, kinds in _CONFIG_FIELD_TYPES.items():
            if cfg.get(key) is not None and not isinstance(cfg[key], kinds):
                expected = " or ".join(json_kind(k()) for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
                raise InputError(f"{key} is {json_kind(cfg[key])}; peft expects {expected}",
                                 path=path, hint="fix that field or download the adapter again")
        try:
            # Without "r" peft's LoraConfig uses its default r=8 (and lora_alpha=8); it then refuses weights of
            # another rank (a size mismatch). llmkit does the same, and says that r was not given.
            r = int(cfg.get("r", 8))
            alpha = float(cfg.get("lora_alpha", 8))
            rank_pattern = {str(k): int(v) for k, v in (cfg.get("rank_pattern") or {}).items()}
            alpha_pattern = {str(k): float(v) for k, v in (cfg.get("alpha_pattern") or {}).items()}
        except (TypeError, ValueError):
            raise InputError("r / lora_alpha (or rank_pattern / alpha_pattern values) are not numbers",
                             path=path, hint="fix them or download the adapter again") from None
        if r <= 0:
            raise InputError(f"r must be positive, found {r}", path=path)
        targets = cfg.get("target_modules")
        if isinstance(targets, (list, tuple, set)):
            targets = [str(t) for t in targets]
        return cls(
            path=path, r=r, r_given="r" in cfg, lora_alpha=alpha, target_modules=targets,
            modules_to_save=[str(m) for m in (cfg.get("modules_to_save") or [])],
            fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)),
            use_rslora=bool(cfg.get("use_rslora", False)),
            rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
            layers_to_transform=cfg.get("layers_to_transform"),
            layers_pattern=cfg.get("layers_pattern"),
            exclude_modules=cfg.get("exclude_modules"),
            lora_bias=bool(cfg.get("lora_bias", False)),
            base_model=cfg.get("base_model_name_or_path"),
            init_lora_weights=cfg.get("init_lora_weights", True),
        )

    @staticmethod
    def _pattern_key(patterns: dict, module: str) -> str | None:
        # peft.utils.other.get_pattern_key
        for key in patterns:
            if re.match(rf"(.*\.)?({key})$", module):
                return key
        return None

    def rank_alpha(self, module: str) -> tuple[int, float]:
        """r and lora_alpha for one module, after ``rank_pattern``/``alpha_pattern``."""
        rk = self._pattern_key(self.rank_pattern, module)
        ak = self._pattern_key(self.alpha_pattern, module)
        r = self.rank_pattern[rk] if rk is not None else self.r
        alpha = self.alpha_pattern[ak] if ak is not None else self.lora_alpha
        return r, alpha

    def scaling(self, module: str) -> float:
        r, alpha = self.rank_alpha(module)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def targets(self, module: str, *, is_output_head: bool = False) -> bool:
        """Whether peft would put a LoRA layer on ``module`` (peft's ``check_target_module_exists``)."""
        ex = self.exclude_modules
        if ex:
            if isinstance(ex, str):
                if re.fullmatch(ex, module):
                    return False
            elif module in ex or any(module.endswith(f".{e}") for e in ex):
                return False
        if any(re.match(rf"(^|.*\.){m}($|\..*)", module) for m in self.modules_to_save):
            return False
        t = self.target_modules
        if t is None:
            return False
        if isinstance(t, str):
            if t.lower() == "all-linear":
                return not is_output_head
            return re.fullmatch(t, module) is not None
        if module in t:
            return True
        found = any(module.endswith(f".{k}") for k in t)
        idx = self.layers_to_transform
        if found and idx is not None and (idx != [] if isinstance(idx, list) else True):
            pattern = self.layers_pattern
            match = None
            if not pattern:
                match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
            else:
                for p in [pattern] if isinstance(pattern, str) else pattern:
                    match = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", module)
                    if match:
                        break
            if match is None:
                return False
            layer = int(match.group("idx"))
            return layer == idx if isinstance(idx, int) else layer in idx
        return found


# ------------------------------------------------------------------ tokenizers

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def _token_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict:
    data = read_json(path, hint="put back the tokenizer files that came with the model or adapter")
    assert isinstance(data, dict)
    return data


def has_tokenizer(folder: Path | None) -> bool:
    return folder is not None and ((folder / "tokenizer.model").is_file() or (folder / "tokenizer.json").is_file())


def tokenizer_size(folder: Path) -> int | None:
    """``len(tokenizer)`` as transformers counts it, from the files alone (None: no tokenizer here).

    Vocabulary of ``tokenizer.json`` (or the pieces of SentencePiece ``tokenizer.model``), plus the tokens of
    ``added_tokens.json`` and ``added_tokens_decoder``, plus special tokens that are in neither (transformers
    adds those when it loads the tokenizer). Chinese-Alpaca: 49953 pieces + ``[PAD]`` = 49954.
    """
    tj, tm = folder / "tokenizer.json", folder / "tokenizer.model"
    ids: set[int] = set()
    pieces: set[str] = set()
    if tj.is_file():
        data = _read_json(tj)
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
    added = folder / "added_tokens.json"
    if added.is_file():
        for token, i in _read_json(added).items():
            ids.add(int(i))
            pieces.add(token)
    config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    for i, info in (config.get("added_tokens_decoder") or {}).items():
        ids.add(int(i))
        text = _token_text(info)
        if text is not None:
            pieces.add(text)
    special = _read_json(folder / "special_tokens_map.json") if (folder / "special_tokens_map.json").is_file() else {}
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


def _known(n: int) -> str:
    """`` (the Chinese-LLaMA LoRA size)`` for the vocabulary sizes of SPEC.md section 3, else nothing."""
    return f" (the {KNOWN_VOCABS[n]} size)" if n in KNOWN_VOCABS else ""


# ------------------------------------------------------------------ adapters

@dataclass
class LoraModule:
    """One LoRA layer of one adapter, resolved to the base tensor it changes."""

    module: str  # name as the adapter knows it (after the peft prefix), e.g. model.layers.0.self_attn.q_proj
    target: str  # base tensor it changes (the weight)
    a_key: str
    b_key: str
    bias_key: str | None  # lora_B.bias (lora_bias=True)
    bias_target: str | None
    embedding: bool
    scaling: float = 1.0
    transpose: bool = False  # Conv1D weight ([in, out]) or embedding: add (B @ A)^T


@dataclass
class Adapter:
    """A peft adapter folder, opened lazily, checked against the base."""

    folder: Path
    file: Path
    settings: LoraSettings
    source: TensorSource
    modules: dict[str, LoraModule] = field(default_factory=dict)  # base tensor name -> LoRA layer
    bias_modules: dict[str, LoraModule] = field(default_factory=dict)  # base bias name -> LoRA layer
    replacements: dict[str, str] = field(default_factory=dict)  # base tensor name -> adapter key
    tokenizer_size: int | None = None
    vocab_size: int | None = None  # rows of the vocabulary tensors once this adapter is applied
    ignored: list[str] = field(default_factory=list)  # LoRA layers peft would not load

    def close(self) -> None:
        self.source.close()


def _adapter_file(folder: Path) -> Path:
    for name in ADAPTER_FILES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    raise InputError("no adapter_model.safetensors or adapter_model.bin in the adapter folder", path=folder,
                     hint=f"found {', '.join(found)}" if found else "download the adapter again")


def _strip_peft_prefix(key: str) -> str:
    for p in _PEFT_PREFIXES:
        if key.startswith(p):
            return key[len(p):]
    return key


def _name_candidates(name: str) -> Iterator[str]:
    """Where an adapter-side tensor name may live in the base: as is, without leading parts, with ``model.``."""
    yield name
    parts = name.split(".")
    for i in range(1, len(parts) - 1):
        yield ".".join(parts[i:])
    yield f"model.{name}"


class _Resolver:
    """Map adapter-side names to base tensor names (any peft prefix, ``model.`` or not)."""

    def __init__(self, base: TensorSource):
        self.base = base
        self.keys = set(base.keys())

    def find(self, name: str) -> str | None:
        for c in _name_candidates(name):
            if c in self.keys:
                return c
        return None


# ------------------------------------------------------------------ the plan

@dataclass
class AdapterReport:
    path: str
    file: str
    r: int
    lora_alpha: float
    scaling: float
    use_rslora: bool
    fan_in_fan_out: bool  # as applied (decided by the base layer type, as peft does)
    lora_modules: int  # base tensors that receive a delta
    replaced: list[str]  # base tensors replaced by full tensors (modules_to_save)
    tokenizer_size: int | None
    vocab_size: int | None  # rows of the embedding after this adapter


@dataclass
class MergeResult:
    """Result of ``llmkit merge-lora``. Sizes in bytes."""

    base: str
    output: str
    format: str
    dtype: str
    dry_run: bool
    adapters: list[AdapterReport]
    vocab_before: int | None
    vocab_after: int | None
    mean_initialised_rows: dict[str, int]  # vocab tensor -> new rows no adapter supplied (set to the mean)
    tokenizer_from: str | None
    tensors: int
    total_bytes: int
    files: list[str]
    rounding: str
    seconds: float
    warnings: list[str] = field(default_factory=list)
    free_disk_bytes: int = 0  # free space found in the output folder's filesystem
    needed_disk_bytes: int = 0  # output + copied files + margin; less free space is refused
    disk_margin_bytes: int = 0  # free space kept beyond the output (llmkit.units.space_margin)


@dataclass
class PlannedOutput:
    """The output folder with its writer constructed (destination checked), before any byte is written."""

    out_dir: Path
    writer: object  # ShardedWriter or MetaShardWriter
    names: list[tuple[str, str]]  # (base tensor, output tensor name) in write order
    total_bytes: int


def _dtype_name(dtype: torch.dtype | None) -> str:
    return "keep" if dtype is None else {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]


class MergePlan:
    """Every input opened and checked, every output tensor planned; nothing written yet.

    Build it with :func:`plan_merge`, run it with :meth:`run`. Holds the base and adapter sources open
    (headers and file mappings only) until :meth:`close`.
    """

    def __init__(self, base: TensorSource, adapters: list[Adapter], *, out_dtype: torch.dtype | None, fmt: str,
                 vocab_tensors: dict[str, str], vocab_before: int | None, vocab_after: int | None,
                 final_vocab_step: int | None, tokenizer_folder: Path | None, config: dict | None,
                 pth_shards: int, warnings: list[str], mean_rows: dict[str, int]):
        self.base = base
        self.adapters = adapters
        self.out_dtype = out_dtype
        self.fmt = fmt
        self.vocab_tensors = vocab_tensors  # base name -> "input" | "output"
        self.vocab_before = vocab_before
        self.vocab_after = vocab_after
        self.final_vocab_step = final_vocab_step  # growth after the last adapter (--tokenizer), or None
        self.tokenizer_folder = tokenizer_folder
        self.config = config
        self.pth_shards = pth_shards
        self.warnings = warnings
        self.mean_rows = mean_rows

    # ---- shapes and dtypes of the output ----
    def output_dtype(self, name: str) -> torch.dtype:
        info = self.base.info(name)
        if self.out_dtype is None or not info.dtype.is_floating_point:
            return info.dtype
        return self.out_dtype

    def output_shape(self, name: str) -> tuple[int, ...]:
        shape = self.base.info(name).shape
        if name in self.vocab_tensors and self.vocab_after is not None:
            return (self.vocab_after, *shape[1:])
        return shape

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec(n, self.output_dtype(n), self.output_shape(n)) for n in self.base.keys()]

    # ---- one tensor ----
    def merged(self, name: str) -> torch.Tensor:
        """Base tensor ``name`` with every adapter applied in order.

        The base tensor is read once, or not at all when an adapter replaces it whole (then only the
        adapters from the last replacing one on matter).
        """
        dtype = self.output_dtype(name)
        # One rounding (SPEC.md section 3): converting to another dtype (--dtype) works in fp32 and casts once
        # at the end; in the tensor's own dtype each adapter rounds, as peft merging into a model loaded in it.
        work = dtype if dtype == self.base.info(name).dtype else torch.float32
        vocab = name in self.vocab_tensors
        last = max((i for i, ad in enumerate(self.adapters) if name in ad.replacements), default=None)
        t = self.base.get(name) if last is None else None
        for ad in self.adapters[last or 0:]:
            key = ad.replacements.get(name)
            if key is not None:  # replaced whole (its rows were checked against the vocabulary plan)
                t = ad.source.get(key).to(work)
            elif vocab and ad.vocab_size is not None and ad.vocab_size > t.shape[0]:
                t = grow_rows(t.to(work), ad.vocab_size)
            mod = ad.modules.get(name)
            if mod is not None:
                t = add_in_fp32(t, lora_delta(ad.source, mod), work)
            bias = ad.bias_modules.get(name)
            if bias is not None:
                assert bias.bias_key is not None
                t = add_in_fp32(t, ad.source.get(bias.bias_key).to(torch.float32).mul(bias.scaling), work)
        if vocab and self.final_vocab_step is not None and self.final_vocab_step > t.shape[0]:
            t = grow_rows(t.to(work), self.final_vocab_step)
        return t.to(dtype)  # the one cast (none when nothing changed the tensor's dtype)

    # ---- running ----
    def open_output(self, out_dir: str | Path, *, shard_size: int = DEFAULT_SHARD_SIZE,
                    force: bool = False) -> "PlannedOutput":
        """Plan the output files and check the destination (not an input, not existing without ``force``,
        enough free space). Nothing is written yet."""
        out_dir = Path(out_dir)
        ensure_output_is_new(out_dir, [self.base.path, *([self.base.folder] if self.base.folder else []),
                                       *(a.folder for a in self.adapters),
                                       *([self.tokenizer_folder] if self.tokenizer_folder else [])])
        if self.fmt != "pth":
            specs = self.specs()
            writer = ShardedWriter(out_dir, specs, fmt=self.fmt, shard_size=shard_size, force=force)
            return PlannedOutput(out_dir, writer, [(n, n) for n in self.base.keys()], sum(s.nbytes for s in specs))
        from llmkit.io.meta import MetaShardWriter, hf_to_meta_name, meta_params, meta_split_sizes

        assert self.config is not None
        names = [(n, m) for n in self.base.keys() if (m := hf_to_meta_name(n)) is not None]
        shard_specs: list[list[TensorSpec]] = [[] for _ in range(self.pth_shards)]
        for name, meta in names:
            for i, shape in enumerate(meta_split_sizes(meta, self.output_shape(name), self.pth_shards)):
                shard_specs[i].append(TensorSpec(meta, self.output_dtype(name), shape))
        writer = MetaShardWriter(out_dir, shard_specs, params=meta_params(self.config), force=force)
        return PlannedOutput(out_dir, writer, names, sum(s.nbytes for specs in shard_specs for s in specs))

    def write(self, output: "PlannedOutput", progress: Callable[[int], None] | None = None) -> MergeResult:
        """Stream every base tensor through the adapters into ``output``; ``progress(nbytes read)``."""
        start = time.perf_counter()
        advance = progress or (lambda n: None)
        tok = self.tokenizer_folder if has_tokenizer(self.tokenizer_folder) else None
        if self.fmt == "pth":
            from llmkit.io.meta import meta_params, meta_split, unpermute_hf_to_meta

            assert self.config is not None
            params = meta_params(self.config)
            heads = {"attention.wq.weight": params["n_heads"],
                     "attention.wk.weight": params.get("n_kv_heads", params["n_heads"])}
            with output.writer as writer:
                for name, meta in output.names:
                    t = self.merged(name)
                    leaf = ".".join(meta.split(".")[-3:])
                    if leaf in heads:  # HF rotate-half -> Meta's interleaved rotary rows
                        t = unpermute_hf_to_meta(t, heads[leaf])
                    for i, piece in enumerate(meta_split(meta, t, self.pth_shards)):
                        writer.write(i, meta, piece)
                    self.base.release(name)  # mapped .bin pages of the used tensor leave RSS
                    advance(self.base.info(name).nbytes)
                writer.copy_files(tok, TOKENIZER_FILES)
        else:
            with output.writer as writer:
                for name, _ in output.names:
                    writer.write(name, self.merged(name))
                    self.base.release(name)  # mapped .bin pages of the used tensor leave RSS
                    advance(self.base.info(name).nbytes)
                vocab = self.vocab_after if self.vocab_after != self.vocab_before else None
                writer.copy_aux_files(self.base.folder, dtype=self.out_dtype, vocab_size=vocab, skip=TOKENIZER_FILES)
                if tok is not None:
                    writer.copy_aux_files(tok, skip=MODEL_FILES)
        return self.result(output, dry_run=False, seconds=time.perf_counter() - start)

    def result(self, output: "PlannedOutput", *, dry_run: bool, seconds: float = 0.0) -> MergeResult:
        return MergeResult(
            base=str(self.base.path), output=str(output.out_dir), format=self.fmt, dtype=_dtype_name(self.out_dtype),
            dry_run=dry_run, adapters=[self._report(a) for a in self.adapters],
            vocab_before=self.vocab_before, vocab_after=self.vocab_after,
            mean_initialised_rows=dict(self.mean_rows),
            tokenizer_from=str(self.tokenizer_folder) if has_tokenizer(self.tokenizer_folder) else None,
            tensors=len(output.names), total_bytes=output.total_bytes, files=list(output.writer.files),
            rounding=ROUNDING, seconds=round(seconds, 3), warnings=list(self.warnings),
            free_disk_bytes=output.writer.free_disk_bytes, needed_disk_bytes=output.writer.needed_disk_bytes,
            disk_margin_bytes=output.writer.space_margin)

    def run(self, out_dir: str | Path, *, shard_size: int = DEFAULT_SHARD_SIZE, force: bool = False,
            dry_run: bool = False, progress: Callable[[int], None] | None = None) -> MergeResult:
        """:meth:`open_output` then :meth:`write` (or only the plan with ``dry_run``)."""
        output = self.open_output(out_dir, shard_size=shard_size, force=force)
        if dry_run:
            return self.result(output, dry_run=True)
        return self.write(output, progress)

    def _report(self, a: Adapter) -> AdapterReport:
        s = a.settings
        return AdapterReport(
            path=str(a.folder), file=a.file.name, r=s.r, lora_alpha=s.lora_alpha, scaling=s.scaling(""),
            use_rslora=s.use_rslora,
            fan_in_fan_out=any(m.transpose and not m.embedding for m in a.modules.values()),
            lora_modules=len(a.modules), replaced=sorted(a.replacements), tokenizer_size=a.tokenizer_size,
            vocab_size=a.vocab_size)

    def close(self) -> None:
        for a in self.adapters:
            a.close()
        self.base.close()

    def __enter__(self) -> "MergePlan":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ arithmetic

def lora_delta(source: TensorSource, mod: LoraModule) -> torch.Tensor:
    """``transpose_if(B @ A) * scaling`` in fp32 (peft's ``get_delta_weight``)."""
    a = source.get(mod.a_key).to(torch.float32)
    b = source.get(mod.b_key).to(torch.float32)
    delta = b @ a
    if mod.transpose:
        delta = delta.T
    return delta.mul_(mod.scaling)  # in place: the same values as peft's `... * scaling`, one buffer less


def add_in_fp32(weight: torch.Tensor, delta: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``round(float(weight) + delta)`` to ``dtype`` (default: the weight's): one rounding (peft's ``W += delta``).

    ``delta`` (fp32, owned by the caller) is overwritten: IEEE addition is commutative, so
    ``delta += weight`` gives the bits of ``float(weight) + delta`` without an fp32 copy of the weight.
    """
    if delta.dtype != torch.float32:
        delta = delta.to(torch.float32)
    delta.add_(weight)
    dtype = dtype or weight.dtype
    return delta if dtype == torch.float32 else delta.to(dtype)


def grow_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows set to the mean of the existing rows (fp32 mean, cast), like transformers' mean resizing."""
    mean = t.to(torch.float32).mean(dim=0).to(t.dtype)
    extra = mean.unsqueeze(0).expand(rows - t.shape[0], *t.shape[1:])
    return torch.cat([t, extra], dim=0)


# ------------------------------------------------------------------ planning

def _vocab_tensors(base: TensorSource) -> dict[str, str]:
    found: dict[str, str] = {}
    for name in base.keys():
        info = base.info(name)
        if any(name == n or name.endswith("." + n) for n in INPUT_EMBEDDINGS) and len(info.shape) == 2:
            found[name] = "input"
        elif any(name == n or name.endswith("." + n) for n in OUTPUT_HEADS) and len(info.shape) in (1, 2):
            found[name] = "output"
    return found


def _open_base(path: Path) -> TensorSource:
    if path.is_dir() and (path / ADAPTER_CONFIG).is_file():
        raise InputError("--base is a LoRA adapter folder, not a model", path=path,
                         hint="pass the base model as --base and the adapter as --lora")
    base = open_source(path)
    if base.layout == "meta-pth":
        base.close()
        raise InputError("the base is in Meta's consolidated.NN.pth layout; LoRA adapters are trained on the "
                         "Hugging Face layout", path=path,
                         hint="convert it to Hugging Face format first (transformers' convert_llama_weights_to_hf.py)")
    return base


def _load_adapter(folder: Path, base: TensorSource, resolver: _Resolver, model_type: str | None,
                  vocab: dict[str, str], warnings: list[str]) -> Adapter:
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError("no such adapter folder", path=folder, hint="pass a local peft adapter folder")
    cfg_path = folder / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise InputError("not a peft adapter folder: adapter_config.json is missing", path=folder,
                         hint="pass the folder that holds adapter_config.json and adapter_model.*")
    settings = LoraSettings.read(cfg_path)
    file = _adapter_file(folder)
    source = open_source(file)
    ad = Adapter(folder=folder, file=file, settings=settings, source=source)
    try:
        _index_adapter(ad, base, resolver, model_type, vocab, warnings)
    except BaseException:
        source.close()
        raise
    return ad


def _saved_modules(keys: list[str]) -> dict[str, str]:
    """Which full tensors of an adapter file end up in peft's merged model: adapter-side name -> adapter key.

    Every layout peft has written (SPEC.md section 3), as peft 0.21's ``set_peft_model_state_dict`` loads it
    and ``merge_and_unload`` keeps it (tests/test_lora_peft_layouts.py checks each against peft):

    - ``X.weight``: a ``modules_to_save`` module's trained copy (Chinese-LLaMA-Alpaca, peft 0.3-0.21) or an
      embedding layer saved because the vocabulary was resized. peft loads it and the merge keeps it: it wins.
    - ``X.base_layer.weight``: the saved base layer of an embedding LoRA targets; loaded, then the delta adds.
    - ``X.modules_to_save.weight`` + ``X.original_module.weight``: since peft 0.8, ``save_embedding_layers="auto"``
      saves a resized ``modules_to_save`` module as the whole wrapper, beside ``X.weight``. peft ignores the first
      (an unexpected key, equal to ``X.weight``) and loads the second into the untrained copy that
      ``merge_and_unload`` throws away: ``original_module`` never reaches the output.

    A ``modules_to_save`` copy (also ``.modules_to_save.<adapter>.``) is used only when the file has no
    ``X.weight`` (peft fails on such a file with a KeyError; llmkit reads it as the trained copy).
    """
    chosen: dict[str, tuple[bool, str]] = {}  # name -> (is a modules_to_save copy, key)
    for key in keys:
        name = _strip_peft_prefix(key)
        if ".original_module." in name:
            continue
        name, copies = _MODULES_TO_SAVE_RE.subn(".", name)
        name = name.replace(".base_layer.", ".")
        if name not in chosen or (chosen[name][0] and not copies):
            chosen[name] = (copies > 0, key)
    return {name: key for name, (_, key) in chosen.items()}


def _index_adapter(ad: Adapter, base: TensorSource, resolver: _Resolver, model_type: str | None,
                   vocab: dict[str, str], warnings: list[str]) -> None:
    s = ad.settings
    parts: dict[str, dict[str, str]] = {}  # module -> {"A": key, "B": key, "bias": key, "embedding": "1"}
    adapter_names: set[str] = set()
    full: list[str] = []  # keys of full tensors (saved modules), sorted out by _saved_modules
    for key in ad.source.keys():
        name = _strip_peft_prefix(key)
        for marker, why in _UNSUPPORTED_KEYS.items():
            if f".{marker}" in name:
                raise InputError(f"tensor {key!r} belongs to {why}", path=ad.file,
                                 hint="merge it with peft's merge_and_unload")
        m = _LORA_LINEAR_RE.match(name)
        if m:
            entry = parts.setdefault(m.group("module"), {})
            what = m.group("part")[-1] if m.group("param") == "weight" else "bias"
            if what == "bias" and m.group("part") == "lora_A":
                raise InputError(f"unexpected LoRA tensor {key!r}", path=ad.file)
            entry[what] = key
            if m.group("adapter"):
                adapter_names.add(m.group("adapter"))
            continue
        m = _LORA_EMBED_RE.match(name)
        if m:
            entry = parts.setdefault(m.group("module"), {})
            entry[m.group("part")[-1]] = key
            entry["embedding"] = "1"
            if m.group("adapter"):
                adapter_names.add(m.group("adapter"))
            continue
        if ".lora_" in name:
            raise InputError(f"unrecognised LoRA tensor {key!r}", path=ad.file,
                             hint="llmkit reads lora_A/lora_B and lora_embedding_A/B tensors")
        full.append(key)
    if len(adapter_names) > 1:
        raise InputError(f"the adapter file holds several adapters ({', '.join(sorted(adapter_names))})",
                         path=ad.file, hint="save each adapter into its own folder")

    base_shapes = {n: base.info(n).shape for n in base.keys()}
    # Full tensors (modules_to_save, saved embedding layers) replace base tensors.
    for plain, key in _saved_modules(full).items():
        target = resolver.find(plain)
        if target is None:
            raise InputError(f"the adapter holds {key!r}, which the base model does not have", path=ad.file,
                             hint="this adapter belongs to another model")
        ad.replacements[target] = key

    # LoRA layers.
    for module, entry in parts.items():
        if "A" not in entry or "B" not in entry:
            raise InputError(f"LoRA layer {module!r} lacks its {'A' if 'A' not in entry else 'B'} matrix",
                             path=ad.file, hint="the adapter file is incomplete; download it again")
        target = resolver.find(f"{module}.weight")
        if target is None:
            raise InputError(f"the adapter changes {module!r}, which the base model does not have", path=ad.file,
                             hint="this adapter belongs to another model (compare base_model_name_or_path in "
                                  "adapter_config.json)")
        if not s.targets(module, is_output_head=target.endswith(OUTPUT_HEADS)):
            ad.ignored.append(module)
            continue
        r, _ = s.rank_alpha(module)
        a_shape = ad.source.info(entry["A"]).shape
        b_shape = ad.source.info(entry["B"]).shape
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise InputError(f"LoRA layer {module!r} has mismatched A {list(a_shape)} and B {list(b_shape)}",
                             path=ad.file, hint="the adapter file is damaged; download it again")
        if a_shape[0] != r:
            if not s.r_given and s._pattern_key(s.rank_pattern, module) is None:
                raise InputError(f"adapter_config.json has no r (peft then uses its default, r=8) but lora_A of "
                                 f"{module!r} has {a_shape[0]} rows", path=s.path,
                                 hint=f"add \"r\": {a_shape[0]} to adapter_config.json if that is the adapter's "
                                      "rank; peft refuses this adapter as it is")
            raise InputError(f"adapter_config.json says r={r} for {module!r} but its lora_A has {a_shape[0]} rows",
                             path=ad.file, hint="the config and the weights belong to different adapters")
        mod = LoraModule(module=module, target=target, a_key=entry["A"], b_key=entry["B"],
                         bias_key=entry.get("bias"), bias_target=None, embedding="embedding" in entry,
                         scaling=s.scaling(module))
        w = tuple(base_shapes[target])
        if len(w) != 2:
            raise InputError(f"the adapter puts LoRA on {target!r}, a {len(w)}-d tensor in the base", path=ad.file,
                             hint="this adapter belongs to another model")
        out_f, in_f = b_shape[0], a_shape[1]
        if mod.embedding:
            # peft: transpose(B @ A, True); A spans the vocabulary (checked with the vocabulary plan).
            mod.transpose = True
            if w[1] != out_f:
                raise InputError(f"the adapter's embedding LoRA on {module!r} has width {out_f} but the base "
                                 f"embedding is {list(w)}", path=ad.file, hint="this adapter belongs to another model")
        elif target in vocab:
            # An output head grows with the vocabulary: only its input width is fixed here.
            if w[1] != in_f:
                raise InputError(f"the adapter's LoRA on {module!r} takes {in_f} inputs but the base {target} is "
                                 f"{list(w)}", path=ad.file, hint="this adapter belongs to another model")
        else:
            # peft picks fan_in_fan_out by layer type: Linear [out, in] never, Conv1D [in, out] always.
            is_linear, is_conv1d = w == (out_f, in_f), w == (in_f, out_f)
            if not is_linear and not is_conv1d:
                raise InputError(f"the adapter's LoRA on {module!r} is {out_f}x{in_f} (out x in) but the base "
                                 f"{target} is {list(w)}", path=ad.file, hint="this adapter belongs to another model")
            mod.transpose = model_type in CONV1D_MODEL_TYPES if (is_linear and is_conv1d) else is_conv1d
        if mod.bias_key is not None:
            bias_target = target[: -len("weight")] + "bias"
            if bias_target not in base_shapes:
                raise InputError(f"the adapter has a LoRA bias (lora_bias) for {module!r} but the base layer has no "
                                 "bias; peft cannot merge it either", path=ad.file)
            mod.bias_target = bias_target
            ad.bias_modules[bias_target] = mod
        ad.modules[target] = mod

    # peft decides fan_in_fan_out from the layer type and warns when the config disagrees.
    flips = {m.transpose for m in ad.modules.values() if not m.embedding}
    if flips and s.fan_in_fan_out not in flips:
        layer = "Conv1D" if True in flips else "Linear"
        warnings.append(f"{ad.settings.path}: fan_in_fan_out is {str(s.fan_in_fan_out).lower()} but the targeted "
                        f"layers are {layer}; like peft, llmkit uses {str(not s.fan_in_fan_out).lower()}")
    if ad.ignored:
        warnings.append(f"{ad.file}: {len(ad.ignored)} LoRA layer(s) are not in target_modules and are ignored, as "
                        f"peft ignores them (e.g. {ad.ignored[0]})")
    if not ad.modules and not ad.replacements:
        targets = s.target_modules if isinstance(s.target_modules, str) else ", ".join(s.target_modules or [])
        raise InputError(f"the adapter changes nothing in this base (target_modules: {targets or '-'})",
                         path=ad.folder, hint="this adapter belongs to another model")
    _check_targets_have_weights(ad, base, warnings)
    if isinstance(s.init_lora_weights, str) and s.init_lora_weights.lower().split("_")[0] in (
            "pissa", "olora", "corda", "loftq"):
        warnings.append(f"{ad.settings.path}: init_lora_weights={s.init_lora_weights} changes the base during "
                        "training; the merge is right only on the base the adapter was trained on")
    if s.modules_to_save and not ad.replacements:
        warnings.append(f"{ad.file}: modules_to_save lists {', '.join(s.modules_to_save)} but the file holds no "
                        "full tensors; the base tensors are kept")


def _check_targets_have_weights(ad: Adapter, base: TensorSource, warnings: list[str]) -> None:
    """Base layers peft would wrap with LoRA but that have no weights in the file (peft leaves them unchanged)."""
    if not ad.modules:
        return
    # How the adapter names base tensors: learn it from one resolved layer.
    sample = next(iter(ad.modules.values()))
    base_module = sample.target[: -len(".weight")]
    a_prefix = sample.module[: len(sample.module) - len(base_module)] if sample.module.endswith(base_module) else ""
    b_prefix = base_module[: len(base_module) - len(sample.module)] if base_module.endswith(sample.module) else ""
    missing = []
    for name in base.keys():
        if not name.endswith(".weight") or len(base.info(name).shape) != 2 or name in ad.modules:
            continue
        module = name[: -len(".weight")]
        if b_prefix and not module.startswith(b_prefix):
            continue
        adapter_side = a_prefix + module[len(b_prefix):]
        if ad.settings.targets(adapter_side, is_output_head=name.endswith(OUTPUT_HEADS)):
            missing.append(adapter_side)
    if missing:
        warnings.append(f"{ad.file}: {len(missing)} layer(s) matched by target_modules have no LoRA weights "
                        f"(e.g. {missing[0]}); like peft, llmkit leaves them unchanged")


def _mixed_up_hint(rows: int, tok: int) -> str:
    if {rows, tok} == {49953, 49954}:
        kind = "Chinese-Alpaca" if rows == 49954 else "Chinese-LLaMA"
        return (f"the weights are a {kind} LoRA ({rows} rows) but the tokenizer has {tok} tokens: put back the "
                f"tokenizer.model (and added_tokens.json) that came with the {kind} LoRA")
    return f"put back the tokenizer files that came with this adapter (its weights expect {rows} tokens)"


def _plan_vocabulary(base: TensorSource, adapters: list[Adapter], vocab: dict[str, str],
                     tokenizer: Path | None, warnings: list[str]) -> tuple[int | None, int | None, int | None,
                                                                             Path | None, dict[str, int]]:
    """Resize targets per adapter and at the end; checks order and tokenizer/embedding agreement.

    Returns (rows before, rows after, final growth for --tokenizer or None, output tokenizer folder,
    rows set to the mean per vocab tensor).
    """
    base_rows = {n: base.info(n).shape[0] for n in vocab}
    inputs = [n for n, k in vocab.items() if k == "input"]
    rows = base_rows[inputs[0]] if inputs else (next(iter(base_rows.values())) if base_rows else None)
    if rows is not None and any(r != rows for r in base_rows.values()) and any(
            a.tokenizer_size or any(t in vocab for t in a.replacements) for a in adapters):
        detail = ", ".join(f"{n} {r}" for n, r in base_rows.items())
        raise InputError(f"the base's vocabulary tensors disagree ({detail}); cannot resize them together",
                         path=base.path)
    cfg = base.config() or {}
    if rows is not None and isinstance(cfg.get("vocab_size"), int) and cfg["vocab_size"] != rows:
        warnings.append(f"{base.folder}/config.json says vocab_size {cfg['vocab_size']} but the embedding has "
                        f"{rows} rows")
    before = rows
    origin: Adapter | None = None  # the adapter that set the current vocabulary size
    mean_rows = {n: 0 for n in vocab}
    sizes = dict(base_rows)
    for ad in adapters:
        emb_rows = {t: ad.source.info(k).shape[0] for t, k in ad.replacements.items() if t in vocab}
        for t, k in ad.replacements.items():
            exp = base.info(t).shape
            got = ad.source.info(k).shape
            if (got[1:] if t in vocab else got) != (exp[1:] if t in vocab else exp):
                raise InputError(f"the adapter's {k} is {list(got)} but the base's {t} is {list(exp)}",
                                 path=ad.file, hint="this adapter belongs to another model")
        if len(set(emb_rows.values())) > 1:
            detail = ", ".join(f"{t} {r}" for t, r in emb_rows.items())
            raise InputError(f"the adapter's saved vocabulary tensors disagree ({detail})", path=ad.file,
                             hint="the adapter file is damaged; download it again")
        emb = next(iter(emb_rows.values()), None)
        lora_vocab = {ad.source.info(m.a_key).shape[1] for m in ad.modules.values() if m.embedding}
        tok = ad.tokenizer_size
        if emb is not None and tok is not None and emb != tok:
            raise InputError(f"{ad.file.name} holds embed_tokens/lm_head with {emb} rows{_known(emb)} but the "
                             f"tokenizer in this folder has {tok} tokens{_known(tok)}", path=ad.folder,
                             hint=_mixed_up_hint(emb, tok))
        if rows is None:
            if emb is not None or tok is not None:
                warnings.append(f"{ad.folder}: the base has no embedding to resize; the tokenizer size is not "
                                "checked")
            ad.vocab_size = None
            continue
        target = emb if emb is not None else (tok if tok is not None else rows)
        if target < rows:
            if origin is not None:
                raise InputError(
                    f"adapter {ad.folder} expects {target} tokens{_known(target)} but the adapter before it, "
                    f"{origin.folder}, already made the vocabulary {rows} tokens{_known(rows)}", path=ad.folder,
                    hint="adapters apply in order and vocabularies only grow: Chinese-LLaMA(-Plus) LoRA (49953) "
                         "first, then Chinese-Alpaca(-Plus) LoRA (49954); swap the --lora options")
            if emb is not None:
                raise InputError(f"the adapter's embeddings have {emb} rows, fewer than the base's {rows}",
                                 path=ad.file, hint="this adapter belongs to another base model")
            warnings.append(f"{ad.folder}: the tokenizer has {tok} tokens, fewer than the base's {rows} embedding "
                            "rows; the rows are kept")
            target = rows
        if target > rows:
            for n in vocab:
                mean_rows[n] += target - sizes[n]
                sizes[n] = target
            rows = target
        if emb is not None or (tok is not None and tok == rows):
            origin = ad
        for t in emb_rows:
            mean_rows[t] = 0
        if lora_vocab and lora_vocab != {rows}:
            raise InputError(f"the adapter's embedding LoRA spans {sorted(lora_vocab)[0]} tokens but the model has "
                             f"{rows} at this point", path=ad.file, hint=_mixed_up_hint(rows, sorted(lora_vocab)[0]))
        for m in ad.modules.values():
            if m.target in vocab and not m.embedding:
                out_rows = ad.source.info(m.b_key).shape[0]
                if out_rows != rows:
                    raise InputError(f"the adapter's LoRA on {m.module} has {out_rows} output rows but the model "
                                     f"has {rows} tokens at this point", path=ad.file,
                                     hint=_mixed_up_hint(rows, out_rows))
        ad.vocab_size = rows

    # The output tokenizer: --tokenizer, else the last adapter that carries one, else the base's.
    final_growth = None
    if tokenizer is not None:
        tok_folder = Path(tokenizer)
        if tok_folder.is_file():
            tok_folder = tok_folder.parent
        size = tokenizer_size(tok_folder) if tok_folder.is_dir() else None
        if size is None:
            raise InputError("no tokenizer.model or tokenizer.json in --tokenizer", path=tok_folder,
                             hint="pass the folder that holds the tokenizer files")
        if rows is not None:
            if size < rows:
                raise InputError(f"the tokenizer has {size} tokens but the merged model has {rows} embedding rows",
                                 path=tok_folder, hint=_mixed_up_hint(rows, size))
            if size > rows:
                warnings.append(f"--tokenizer has {size} tokens: the embedding grows from {rows} rows; the "
                                f"{size - rows} new rows are set to the mean of the existing rows")
                for n in vocab:
                    mean_rows[n] += size - sizes[n]
                    sizes[n] = size
                final_growth = size
                rows = size
    else:
        carriers = [a for a in adapters if a.tokenizer_size is not None]
        tok_folder = carriers[-1].folder if carriers else base.folder
        size = carriers[-1].tokenizer_size if carriers else (
            tokenizer_size(base.folder) if has_tokenizer(base.folder) else None)
        if rows is not None and rows != before and size is not None and size != rows:
            raise InputError(f"the merged model has {rows} embedding rows but the output tokenizer, from "
                             f"{tok_folder}, has {size} tokens", path=tok_folder,
                             hint="pass the matching tokenizer folder with --tokenizer")
    for n, count in mean_rows.items():
        if count:
            warnings.append(f"{n}: {count} new row(s) that no adapter supplies are set to the mean of the existing "
                            "rows (transformers' mean resizing, without its random 1e-9 jitter)")
    return before, rows, final_growth, tok_folder, {n: c for n, c in mean_rows.items() if c}


def plan_merge(base: str | Path, adapters: list[str | Path], *, dtype: str = "keep", fmt: str = "safetensors",
               tokenizer: str | Path | None = None, pth_shards: int | None = None) -> MergePlan:
    """Open and check every input, plan every output tensor. Raises before anything is written.

    Checks: each adapter is a LoRA adapter whose layers exist in the base with the right shapes (else
    "belongs to another model"); saved embedding rows = the adapter's tokenizer size (the 49953/49954
    mix-up); vocabularies only grow along the adapter order; the output tokenizer matches the final rows.
    """
    if not adapters:
        raise InputError("no adapter given", hint="pass one or more --lora ADAPTER")
    if dtype not in DTYPE_CHOICES:
        raise InputError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPE_CHOICES)}")
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    folders = [Path(a) for a in adapters]
    seen: set[Path] = set()
    for f in folders:
        key = Path(os.path.realpath(f))  # never raises on a symlink loop (open_source names it below)
        if key in seen:
            raise InputError("the same adapter is given twice", path=f, hint="pass each --lora once")
        seen.add(key)
    warnings: list[str] = []
    base_src = _open_base(Path(base))
    loaded: list[Adapter] = []
    try:
        cfg = base_src.config()  # a config.json that is not a JSON object is an InputError
        model_type = (cfg or {}).get("model_type")
        resolver = _Resolver(base_src)
        vocab = _vocab_tensors(base_src)
        for f in folders:
            ad = _load_adapter(f, base_src, resolver, model_type, vocab, warnings)
            loaded.append(ad)
            if has_tokenizer(ad.folder):
                ad.tokenizer_size = tokenizer_size(ad.folder)
        before, after, final, tok_folder, mean_rows = _plan_vocabulary(
            base_src, loaded, vocab, Path(tokenizer) if tokenizer else None, warnings)
        shards = 1
        if fmt == "pth":
            from llmkit.io.meta import default_meta_shards, hf_to_meta_name, meta_params, meta_split_sizes

            if cfg is None:
                raise InputError("--format pth needs the base's config.json (heads, layers)", path=base_src.path)
            params = meta_params(cfg)
            shards = pth_shards or default_meta_shards(params["dim"])
            dropped = []
            for name in base_src.keys():
                meta = hf_to_meta_name(name)
                if meta is None:
                    dropped.append(name)
                    continue
                shape = base_src.info(name).shape
                if name in vocab and after is not None:
                    shape = (after, *shape[1:])
                meta_split_sizes(meta, shape, shards)  # raises if a tensor does not split evenly
            if dropped:
                warnings.append(f"{len(dropped)} rotary_emb.inv_freq buffer(s) are not part of Meta's layout and "
                                "are left out (as the Chinese-LLaMA-Alpaca script does)")
        elif pth_shards:
            raise InputError("--pth-shards applies to --format pth only")
        return MergePlan(base_src, loaded, out_dtype=DTYPE_CHOICES[dtype], fmt=fmt, vocab_tensors=vocab,
                         vocab_before=before, vocab_after=after, final_vocab_step=final,
                         tokenizer_folder=tok_folder, config=cfg, pth_shards=shards, warnings=warnings,
                         mean_rows=mean_rows)
    except BaseException:
        for a in loaded:
            a.close()
        base_src.close()
        raise


def merge_lora(base: str | Path, adapters: list[str | Path], out_dir: str | Path, *, dtype: str = "keep",
               fmt: str = "safetensors", shard_size: int = DEFAULT_SHARD_SIZE, tokenizer: str | Path | None = None,
               pth_shards: int | None = None, dry_run: bool = False, force: bool = False,
               progress: Callable[[int], None] | None = None) -> MergeResult:
    """Merge ``adapters`` (in order) into ``base`` and write the result to ``out_dir``.

    Peak memory ~ a few copies of the largest tensor; every base tensor is read once.
    """
    with plan_merge(base, adapters, dtype=dtype, fmt=fmt, tokenizer=tokenizer, pth_shards=pth_shards) as plan:
        return plan.run(out_dir, shard_size=shard_size, force=force, dry_run=dry_run, progress=progress)
