"""Weight-diff recovery and creation (SPEC.md section 2): ``tuned = diff + base``, ``diff = tuned - base``.

ZhiXi-13B (KnowLM, from stanford_alpaca's ``weight_diff.py``) is published as ``diff = tuned - base`` for
**every** tensor of the state dict, LLaMA-13B (converted to Hugging Face) being the base. Each output
tensor needs only ``base[k]`` and ``diff[k]``, so the job is a loop over names: read the pair, add,
hand the result to :class:`~llmkit.io.ShardedWriter`, drop everything. Peak memory is about three times
the largest tensor plus a constant (Python and torch), whatever the number of layers; upstream loads both
full models at once (about 100 GB of RAM for 13B in fp32).

Arithmetic, exactly:

- ``fp32`` (the default for an fp32 diff): ``diff.float() + base.float()``; fp16/bf16 inputs widen to
  fp32 exactly, so this is one rounding of the exact sum, as upstream with ``torch_dtype=float32``.
- ``fp16`` (the default for an fp16 diff): ``diff.half() + base.half()``, the fp16 sum with one rounding,
  as upstream ``--is_fp16`` (which loads both models with ``torch_dtype=float16``). An fp32 diff is
  therefore rounded to fp16 before the sum, exactly as upstream does.
- ``bf16`` (no upstream equivalent): ``(diff.float() + base.float()).bfloat16()``, the fp32 sum rounded
  once to bf16 (more accurate than rounding both inputs to bf16 first).
- ``make-diff``: ``tuned.float() - base.float()`` in fp32 for every tensor (upstream ``make_diff``),
  stored in fp32, or rounded once to fp16 when asked.

Old checkpoints hold ``rotary_emb.inv_freq`` buffers; upstream adds them like any tensor. A base converted
with a current transformers has none: upstream's model object then supplies its freshly computed buffer,
so llmkit computes that buffer from ``config.json`` the same way (the old ``LlamaRotaryEmbedding`` formula).

The upstream "naive integrity" check sums every tensor of the recovered model (94052.2891 for ZhiXi-13B
in fp32, atol 1e-2). llmkit computes it in fp64 while streaming (and the upstream fp32 accumulation
beside it); the published value counts 40 layers of ``inv_freq`` buffers (about 7.46 each).
"""

from __future__ import annotations

import math
import mmap
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from llmkit.errors import CheckFailed, InputError
from llmkit.io import DEFAULT_SHARD_SIZE, ShardedWriter, TensorSpec, open_source
from llmkit.io.dtypes import CLI_DTYPES, st_code
from llmkit.io.jsonfile import int_field
from llmkit.io.sinks import AUX_FILES, human_bytes
from llmkit.io.sources import TensorInfo, TensorSource

# The published integrity sum of the recovered ZhiXi-13B in fp32 (KnowLM tools/weight_diff.py).
ZHIXI_13B_FP32_SUM = 94052.2891
CHECK_SUM_ATOL = 1e-2
ROTARY_BUFFER = "rotary_emb.inv_freq"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt")
CONFIG_FILES = ("config.json", "generation_config.json")
_EMBED_SUFFIXES = ("embed_tokens.weight", "lm_head.weight")
_SUM_CHUNK = 1 << 22  # elements per fp64 chunk when summing (32 MB of fp64)

# progress("what", total_bytes) -> context manager yielding advance(nbytes); llmkit.cli.output.Output.progress fits.
ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


# ------------------------------------------------------------------ results

@dataclass
class WeightDiffPlan:
    """What a recover / make-diff run will do, known before any tensor data is read. Sizes in bytes."""

    operation: str  # "recover" or "make-diff"
    base: str
    other: str  # the diff (recover) or the tuned model (make-diff)
    output: str
    dtype: str  # output dtype: fp32, fp16 or bf16
    arithmetic: str  # the formula, as applied
    format: str
    shard_size: int
    tensors: int
    parameters: int
    base_dtypes: dict[str, int]  # safetensors dtype code -> tensor count
    other_dtypes: dict[str, int]
    output_bytes: int
    input_bytes: int  # bytes read from both inputs
    files: list[str]
    largest_tensor: str
    largest_tensor_bytes: int
    memory_estimate_bytes: int  # peak RSS estimate: per-tensor working set + this process now
    free_disk_bytes: int
    needed_disk_bytes: int  # output + config/tokenizer files + the margin below; less free space is refused
    disk_margin_bytes: int  # free space kept beyond the output (llmkit.units.space_margin)
    computed_buffers: list[str] = field(default_factory=list)  # base inv_freq buffers computed from config
    aux_files: dict[str, str] = field(default_factory=dict)  # output file -> folder it is copied from
    notes: list[str] = field(default_factory=list)


@dataclass
class SumCheck:
    """The upstream naive integrity check: the sum of every value of the output model."""

    expected: float
    atol: float
    sum_fp64: float  # llmkit's sum, fp64 accumulation
    sum_fp32_upstream: float | None  # upstream's way: fp32 tensor sums added in fp32 (fp32 output only)
    passed: bool
    rotary_buffers: int  # how many rotary_emb.inv_freq tensors the output holds (counted in the sum)
    missing_buffer_sum: float | None = None  # what absent inv_freq buffers would add (when absent)
    explanation: str | None = None


@dataclass
class PublishedCheck:
    """An output file whose name appears in a published ZhiXi MD5 table."""

    file: str
    md5: str
    tables: list[str]
    matched_table: str | None


@dataclass
class ReferenceCheck:
    """The output compared tensor by tensor with a reference model (llmkit.verify)."""

    reference: str
    identical: int
    differing: list[str]
    only_output: list[str]
    only_reference: list[str]

    @property
    def passed(self) -> bool:
        return not self.differing and not self.only_output and not self.only_reference


@dataclass
class WeightDiffResult:
    """Result of ``recover`` / ``make_diff``. ``files`` are final output names (empty for a dry run)."""

    plan: WeightDiffPlan
    dry_run: bool
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    check_sum: SumCheck | None = None
    published: list[PublishedCheck] = field(default_factory=list)
    reference: ReferenceCheck | None = None


# ------------------------------------------------------------------ arithmetic (SPEC.md section 2)

def _combine(op, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``op(x.to(dtype), y.to(dtype))`` writing into a converted copy when there is one.

    Both operands are cast first: a mixed-dtype op on CPU would allocate a converted temporary itself.
    Memory beyond the inputs: one ``dtype`` tensor (a converted copy, or the fresh result). Inputs are
    never modified (they may be memory-mapped files).
    """
    xc, yc = x.to(dtype), y.to(dtype)
    if xc is not x:
        return op(xc, yc, out=xc)
    if yc is not y:
        return op(xc, yc, out=yc)
    return op(xc, yc)


def recover_tensor(diff: torch.Tensor, base: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One recovered tensor: ``diff + base`` in ``dtype`` (see the module docstring for the rounding)."""
    if dtype == torch.float16:
        # Upstream --is_fp16 loads both models in fp16, then adds: round each input, then one rounding.
        return _combine(torch.add, diff, base, torch.float16)
    # fp32 (and bf16 via fp32): fp16/bf16/fp32 -> fp32 is exact, so this is one rounding of the exact sum.
    out = _combine(torch.add, diff, base, torch.float32)
    return out if dtype == torch.float32 else out.to(dtype)


def diff_tensor(tuned: torch.Tensor, base: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One diff tensor: ``tuned - base`` computed in fp32, stored in ``dtype`` (one rounding)."""
    out = _combine(torch.sub, tuned, base, torch.float32)
    return out if dtype == torch.float32 else out.to(dtype)


def legacy_inv_freq(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """The ``rotary_emb.inv_freq`` buffer of transformers' 2023 LLaMA (fp32), as upstream's model computes it."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))


def fp64_sum(t: torch.Tensor) -> float:
    """Sum of every value, accumulated in fp64 (numpy's buffered reduction: no fp64 copy of the tensor)."""
    flat = t.detach().reshape(-1)
    if flat.dtype in (torch.float32, torch.float16, torch.float64):
        return float(flat.numpy().sum(dtype=np.float64))
    total = 0.0  # bf16: numpy has no such dtype; widen one chunk at a time
    for start in range(0, flat.numel(), _SUM_CHUNK):
        total += float(flat[start:start + _SUM_CHUNK].sum(dtype=torch.float64))
    return total


# ------------------------------------------------------------------ checks before the long work

def _dtype_counts(infos: list[TensorInfo]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in infos:
        code = st_code(i.dtype)
        counts[code] = counts.get(code, 0) + 1
    return counts


def _cli_name(dtype: torch.dtype) -> str:
    return next(k for k, v in CLI_DTYPES.items() if v == dtype)


def _open_model(path: str | os.PathLike, role: str) -> TensorSource:
    src = open_source(path)
    if src.adapter is not None:
        src.close()
        raise InputError(f"the {role} is a LoRA adapter, not a full model", path=path,
                         hint="weight diffs are full state dicts; LoRA adapters are merged with merge-lora")
    if src.layout == "meta-pth":
        src.close()
        raise InputError(f"the {role} is in Meta consolidated.NN.pth layout, whose tensor names differ "
                         "from the Hugging Face names of weight diffs", path=path,
                         hint="convert it to Hugging Face format first (as upstream does with "
                              "convert_llama_weights_to_hf.py)")
    for info in src.infos():
        if not info.dtype.is_floating_point or info.dtype.itemsize == 1:
            src.close()
            raise InputError(f"tensor {info.name!r} has dtype {info.dtype}; weight diffs need fp32, fp16 or bf16",
                             path=path)
    return src


def _layer_count(names: list[str]) -> int | None:
    layers = set()
    for n in names:
        parts = n.split(".")
        for i, p in enumerate(parts[:-1]):
            if p == "layers" and parts[i + 1].isdigit():
                layers.add(int(parts[i + 1]))
    return max(layers) + 1 if layers else None


def _rope_settings(*sources: TensorSource) -> tuple[int, float] | None:
    """(head_dim, rope theta) from the first config.json that has them."""
    for src in sources:
        cfg = src.config() or {}
        where = src.folder / "config.json" if src.folder else None
        hidden = int_field(cfg, "hidden_size", path=where)
        heads = int_field(cfg, "num_attention_heads", path=where)
        head_dim = int_field(cfg, "head_dim", path=where) or (hidden // heads if hidden and heads else None)
        if head_dim:
            rope = cfg.get("rope_parameters")
            theta = cfg.get("rope_theta") or (rope.get("rope_theta") if isinstance(rope, dict) else None) or 10000.0
            if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
                raise InputError(f"rope_theta must be a positive number, found {theta!r}", path=where,
                                 hint="the file is damaged or was edited by hand; download it again")
            return int(head_dim), float(theta)
    return None


def _describe_role(role: str) -> str:
    return "diff" if role == "diff" else "tuned model"


def _check_names(other: TensorSource, base: TensorSource, role: str) -> tuple[list[str], list[str]]:
    """Key-set check; returns (base buffers to compute, base tensors ignored). Raises on a real mismatch."""
    o_keys, b_keys = set(other.keys()), set(base.keys())
    missing = [k for k in other.keys() if k not in b_keys]
    computed = [k for k in missing if k.endswith(ROTARY_BUFFER)]
    missing = [k for k in missing if not k.endswith(ROTARY_BUFFER)]
    extra = [k for k in base.keys() if k not in o_keys]
    ignored = [k for k in extra if k.endswith(ROTARY_BUFFER)]
    extra = [k for k in extra if not k.endswith(ROTARY_BUFFER)]
    what = _describe_role(role)
    layers = (_layer_count(base.keys()), _layer_count(other.keys()))
    layer_note = (f"; the base has {layers[0]} layers, the {what} {layers[1]}"
                  if layers[0] != layers[1] and None not in layers else "")
    if missing:
        raise InputError(f"the base lacks {len(missing)} tensor(s) the {what} has, e.g. "
                         f"{', '.join(missing[:3])}{layer_note}", path=base.path,
                         hint=f"use the base model the {what} was made from (for ZhiXi-13B: LLaMA-13B "
                              "converted to Hugging Face)")
    if extra:
        raise InputError(f"the {what} lacks {len(extra)} tensor(s) the base has, e.g. {', '.join(extra[:3])}"
                         f"{layer_note}", path=other.path,
                         hint=f"the {what} is incomplete (download it again) or was made from another base")
    return computed, ignored


def _check_shapes(other: TensorSource, base: TensorSource, role: str, computed: list[str],
                  rope: tuple[int, float] | None) -> None:
    what = _describe_role(role)
    bad = []
    for name in other.keys():
        o_shape = other.info(name).shape
        if name in computed:
            b_shape = (rope[0] // 2,) if rope else None
        else:
            b_shape = base.info(name).shape
        if b_shape != o_shape:
            bad.append((name, b_shape, o_shape))
    if not bad:
        return
    listing = "; ".join(f"{n}: base {list(b) if b else '?'} vs {what} {list(o)}" for n, b, o in bad[:3])
    message = f"shapes differ for {len(bad)} tensor(s): {listing}"
    hint = f"use the base model the {what} was made from"
    embed = next(((n, b, o) for n, b, o in bad if n.endswith(_EMBED_SUFFIXES) and b and len(b) == 2
                  and b[1] == o[1]), None)
    if embed is not None:
        _, b, o = embed
        if b[0] < o[0]:
            if role == "diff":
                message += (f". The base has a {b[0]}-token vocabulary but the diff {o[0]}: this is the wrong base "
                            f"(the diff was made against a model with an extended {o[0]}-token vocabulary)")
                hint = f"recover from the {o[0]}-token model the diff was made from, not from the original LLaMA"
            else:
                message += (f". The base has a {b[0]}-token vocabulary but the tuned model {o[0]}: a diff needs "
                            f"both with the same vocabulary (the tuned model was trained from a model with an "
                            f"extended {o[0]}-token vocabulary)")
                hint = (f"pass the {o[0]}-token model the tuned model was trained from as --base, e.g. the "
                        "vocabulary-extended base rather than the original LLaMA")
        else:
            message += (f". The base has a {b[0]}-token vocabulary but the {what} only {o[0]}: this is the wrong "
                        "base (perhaps an already-extended or merged model)")
    else:
        hidden = next(((b[-1], o[-1]) for n, b, o in bad if n.endswith(_EMBED_SUFFIXES) and b and len(b) == 2),
                      None)
        if hidden and hidden[0] != hidden[1]:
            from llmkit.summary import describe_hidden_size

            message += (f". The base is {describe_hidden_size(hidden[0])} but the {what} is "
                        f"{describe_hidden_size(hidden[1])}: wrong base")
    raise InputError(message, path=base.path, hint=hint)


def _current_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _working_set(numel: int, o_dtype: torch.dtype, b_dtype: torch.dtype, out: torch.dtype,
                 operation: str) -> int:
    """Bytes alive while one tensor is processed: both inputs, converted copies, the result, an fp64 chunk."""
    compute = torch.float16 if (operation == "recover" and out == torch.float16) else torch.float32
    size = numel * (o_dtype.itemsize + b_dtype.itemsize)
    copies = (o_dtype != compute) + (b_dtype != compute)
    size += numel * compute.itemsize * max(copies, 1)  # the result lives in a copy, or is fresh
    if out != compute:
        size += numel * out.itemsize
    return size + min(numel, _SUM_CHUNK) * 8


def _aux_plan(other: TensorSource, base: TensorSource, role: str) -> tuple[dict[str, str], list[str]]:
    """Which config/tokenizer file comes from where: the diff's folder first (SPEC.md section 2)."""
    plan: dict[str, str] = {}
    notes: list[str] = []
    ofolder, bfolder = other.folder, base.folder
    what = _describe_role(role)
    for name in CONFIG_FILES:
        if ofolder and (ofolder / name).is_file():
            plan[name] = str(ofolder)
        elif bfolder and (bfolder / name).is_file():
            plan[name] = str(bfolder)
            notes.append(f"{name} copied from the base folder: the {what} folder has none")
    tok_from = ofolder if ofolder and any((ofolder / n).is_file() for n in TOKENIZER_FILES) else None
    if tok_from is None and bfolder and any((bfolder / n).is_file() for n in TOKENIZER_FILES):
        tok_from = bfolder
        notes.append(f"tokenizer files copied from the base folder: the {what} folder has none")
    if tok_from is not None:
        for name in TOKENIZER_FILES:
            if (tok_from / name).is_file():
                plan[name] = str(tok_from)
    if not any(n in plan for n in TOKENIZER_FILES):
        notes.append("no tokenizer files found in either folder; the output has none")
    return plan, notes


@dataclass
class _Job:
    plan: WeightDiffPlan
    other: TensorSource
    base: TensorSource
    out_dtype: torch.dtype
    rope: tuple[int, float] | None
    writer: ShardedWriter
    specs: list[TensorSpec]

    def close(self) -> None:
        self.other.close()
        self.base.close()


def _prepare(operation: str, base_path, other_path, out, *, dtype: str | None, fmt: str, shard_size: int,
             force: bool) -> _Job:
    role = "diff" if operation == "recover" else "tuned"
    base = _open_model(base_path, "base")
    try:
        other = _open_model(other_path, _describe_role(role))
    except BaseException:
        base.close()
        raise
    try:
        return _plan(operation, base, other, Path(out), role=role, dtype=dtype, fmt=fmt, shard_size=shard_size,
                     force=force)
    except BaseException:
        base.close()
        other.close()
        raise


def _plan(operation: str, base: TensorSource, other: TensorSource, out: Path, *, role: str, dtype: str | None,
          fmt: str, shard_size: int, force: bool) -> _Job:
    if len(other) == 0:
        raise InputError(f"the {_describe_role(role)} holds no tensors", path=other.path)
    computed, ignored = _check_names(other, base, role)
    rope = _rope_settings(other, base)
    if computed and rope is None:
        raise InputError(f"the {_describe_role(role)} has {len(computed)} rotary_emb.inv_freq buffer(s) the base "
                         "lacks, and no config.json says how to compute them", path=base.path,
                         hint="put the model's config.json beside the base or the diff")
    _check_shapes(other, base, role, computed, rope)

    o_infos = other.infos()
    if dtype is None:
        if operation == "make-diff":
            out_dtype = torch.float32
        else:  # the diff's dtype: the one holding most bytes
            by_dtype: dict[torch.dtype, int] = {}
            for i in o_infos:
                by_dtype[i.dtype] = by_dtype.get(i.dtype, 0) + i.nbytes
            out_dtype = max(by_dtype, key=by_dtype.__getitem__)
            if out_dtype not in CLI_DTYPES.values():
                raise InputError(f"the diff is {out_dtype}; choose the output dtype", path=other.path,
                                 hint=f"pass --dtype ({', '.join(CLI_DTYPES)})")
    else:
        if dtype not in CLI_DTYPES:
            raise InputError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(CLI_DTYPES)}")
        out_dtype = CLI_DTYPES[dtype]
    if operation == "make-diff" and out_dtype not in (torch.float32, torch.float16):
        raise InputError(f"make-diff writes fp32 or fp16, not {_cli_name(out_dtype)}",
                         hint="diffs are computed in fp32; store them as fp32 (exact) or fp16")

    specs = [TensorSpec(i.name, out_dtype, i.shape) for i in o_infos]
    aux, notes = _aux_plan(other, base, role)
    aux_bytes = sum((Path(folder) / name).stat().st_size for name, folder in aux.items())
    # The writer refuses an output that is, is inside or contains an input (the weight files and the
    # folders config/tokenizer files are read from), before anything is created.
    inputs = [base.path, base.folder, other.path, other.folder]
    writer = ShardedWriter(out, specs, fmt=fmt, shard_size=shard_size, force=force, extra_bytes=aux_bytes,
                           inputs=inputs)

    def b_dtype(name: str) -> torch.dtype:
        return torch.float32 if name in computed else base.info(name).dtype

    largest = max(o_infos, key=lambda i: i.numel * out_dtype.itemsize)
    working = max(_working_set(i.numel, i.dtype, b_dtype(i.name), out_dtype, operation) for i in o_infos)
    if computed:
        notes.append(f"the base has no rotary_emb.inv_freq buffers; the {len(computed)} the "
                     f"{_describe_role(role)} holds are added to buffers computed from config.json "
                     f"(head dim {rope[0]}, theta {rope[1]:g}), as upstream's model supplies them")
    if ignored:
        notes.append(f"{len(ignored)} rotary_emb.inv_freq buffer(s) of the base are not in the "
                     f"{_describe_role(role)} and are left out of the output")
    if operation == "recover" and out_dtype == torch.float16 and any(i.dtype == torch.float32 for i in o_infos):
        notes.append("fp16 from an fp32 diff: the diff is rounded to fp16 before the sum, as upstream --is_fp16 "
                     "does; for the closest fp16 model recover in fp32 and convert")
    base_bytes = sum(base.info(n).nbytes for n in other.keys() if n not in computed)
    arithmetic = {
        ("recover", torch.float32): "out = fp32(diff) + fp32(base)",
        ("recover", torch.float16): "out = fp16(diff) + fp16(base), one rounding of the fp16 sum",
        ("recover", torch.bfloat16): "out = bf16(fp32(diff) + fp32(base)), one rounding",
        ("make-diff", torch.float32): "diff = fp32(tuned) - fp32(base)",
        ("make-diff", torch.float16): "diff = fp16(fp32(tuned) - fp32(base)), one rounding",
    }[(operation, out_dtype)]
    plan = WeightDiffPlan(
        operation=operation,
        base=str(base.path),
        other=str(other.path),
        output=str(out),
        dtype=_cli_name(out_dtype),
        arithmetic=arithmetic,
        format=fmt,
        shard_size=shard_size,
        tensors=len(specs),
        parameters=sum(i.numel for i in o_infos),
        base_dtypes=_dtype_counts([base.info(n) for n in base.keys()]),
        other_dtypes=_dtype_counts(o_infos),
        output_bytes=writer.total_size,
        input_bytes=other.total_bytes + base_bytes,
        files=list(writer.files) + sorted(aux),
        largest_tensor=largest.name,
        largest_tensor_bytes=largest.numel * out_dtype.itemsize,
        memory_estimate_bytes=working + _current_rss(),
        free_disk_bytes=writer.free_disk_bytes,
        needed_disk_bytes=writer.needed_disk_bytes,
        disk_margin_bytes=writer.space_margin,
        computed_buffers=computed,
        aux_files=aux,
        notes=notes,
    )
    return _Job(plan, other, base, out_dtype, rope, writer, specs)


# ------------------------------------------------------------------ after the output is written

def _rotary_sum(rope: tuple[int, float] | None, count: int) -> float | None:
    if rope is None or count <= 0:
        return None
    return count * fp64_sum(legacy_inv_freq(rope[0], rope[1]))


def _judge_sum(expected: float, atol: float, s64: float, s32: float | None, buffers: int, layers: int | None,
               rope: tuple[int, float] | None) -> SumCheck:
    passed = abs(s64 - expected) <= atol or (s32 is not None and abs(s32 - expected) <= atol)
    check = SumCheck(expected=expected, atol=atol, sum_fp64=s64, sum_fp32_upstream=s32, passed=passed,
                     rotary_buffers=buffers)
    if passed:
        return check
    text = (f"sum of all output values is {s64:.4f}, expected {expected:.4f} "
            f"(atol {atol:g}; off by {s64 - expected:+.4f})")
    if buffers == 0 and layers:
        missing = _rotary_sum(rope, layers)
        if missing is not None:
            check.missing_buffer_sum = missing
            with_buffers = s64 + missing
            agrees = abs(with_buffers - expected) <= atol
            text += (f". The published value counts the rotary_emb.inv_freq buffers that checkpoints saved by "
                     f"older transformers hold ({layers} layers x {missing / layers:.4f}); this output has none "
                     f"because the diff has none. With them the sum would be {with_buffers:.4f}, which "
                     + ("agrees with the published value: the weights look right, but the check as published "
                        "cannot pass without those buffers" if agrees else "does not agree either"))
        else:
            text += (". The published value counts rotary_emb.inv_freq buffers, which this output lacks, and no "
                     "config.json says how to compute them")
    check.explanation = text
    return check


def _published_tables(operation: str) -> set[str] | None:
    """Names of the published tables an output of ``operation`` can match: recovered models, or diffs."""
    try:
        from llmkit.registry import MODELS
    except ImportError:
        return None
    stage = "recovered" if operation == "recover" else "download"
    return {m.tables[stage] for m in MODELS if m.kind == "diff" and stage in m.tables}


def _published_checks(out_dir: Path, files: list[str], operation: str,
                      progress: ProgressFactory | None) -> list[PublishedCheck]:
    """MD5 of output files whose names appear in a published table of this kind (llmkit.registry)."""
    try:
        from llmkit.registry import find_expected
        from llmkit.verify import hash_file
    except ImportError:
        return []
    tables = _published_tables(operation)
    todo: list[tuple[str, list[tuple[str, str]]]] = []
    for name in files:
        entries = [(str(t), str(h).lower()) for t, h in find_expected(name, "md5")]
        entries = [(t, h) for t, h in entries if (t in tables if tables is not None else "zhixi" in t.lower())]
        if entries:
            todo.append((name, entries))
    checks: list[PublishedCheck] = []
    total = sum((out_dir / n).stat().st_size for n, _ in todo)
    with (progress("hashing", total) if progress and todo else nullcontext(lambda n: None)) as advance:
        for name, entries in todo:
            digest = hash_file(out_dir / name, "md5", progress=advance)
            matched = next((t for t, h in entries if h == digest), None)
            checks.append(PublishedCheck(name, digest, sorted({t for t, _ in entries}), matched))
    return checks


def compare_by_tensors(output: Path, reference: str | os.PathLike) -> ReferenceCheck:
    """Compare two models tensor by tensor (names, dtypes, shapes, bytes) with llmkit.verify."""
    from llmkit.verify import compare_sources

    cmp = compare_sources(Path(output), Path(reference))
    return ReferenceCheck(str(reference), cmp.compared - len(cmp.differing), list(cmp.differing), list(cmp.only_a),
                          list(cmp.only_b))


# ------------------------------------------------------------------ the streaming loop

def _pairs(job: _Job) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, other[name], base[name]) in the other's order; the next pair is prefetched and used
    tensors released, so mapped ``.bin`` pages do not pile up in RSS (see ``TensorSource.release``)."""
    inv_freq = legacy_inv_freq(job.rope[0], job.rope[1]) if job.plan.computed_buffers and job.rope else None
    computed = set(job.plan.computed_buffers)
    names = job.other.keys()
    for i, name in enumerate(names):
        if i + 1 < len(names):
            job.other.prefetch(names[i + 1])
            if names[i + 1] not in computed:
                job.base.prefetch(names[i + 1])
        o = job.other.get(name)
        b = inv_freq if name in computed else job.base.get(name)
        yield name, o, b
        job.other.release(name)
        if name not in computed:
            job.base.release(name)


def _write(writer: ShardedWriter, name: str, tensor: torch.Tensor) -> int:
    writer.write(name, tensor)
    return tensor.numel() * tensor.element_size()


def _run(job: _Job, *, check_sum: float | None, reference, progress: ProgressFactory | None) -> WeightDiffResult:
    plan = job.plan
    compute = recover_tensor if plan.operation == "recover" else diff_tensor
    s64, s32 = 0.0, (torch.zeros((), dtype=torch.float32) if job.out_dtype == torch.float32 else None)
    buffers = 0
    start = time.perf_counter()
    label = "recovering" if plan.operation == "recover" else "making diff"
    result = WeightDiffResult(plan=plan, dry_run=False)
    # One background thread writes tensor N while tensor N+1 is read and computed (file writes and torch
    # ops release the GIL); at most one finished tensor waits, so memory stays ~ one pair + two results.
    with job.writer as writer, ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmkit-write") as pool:
        with (progress(label, plan.output_bytes) if progress else nullcontext(lambda n: None)) as advance:
            pending: Future | None = None
            for name, o, b in _pairs(job):
                out = compute(o, b, job.out_dtype)
                del o, b
                if check_sum is not None:
                    s64 += fp64_sum(out)
                    if s32 is not None:
                        s32 = s32 + out.sum()  # upstream: Python sum of fp32 tensor sums
                    buffers += name.endswith(ROTARY_BUFFER)
                if pending is not None:
                    advance(pending.result())
                pending = pool.submit(_write, writer, name, out)
                del out
            if pending is not None:
                advance(pending.result())
        aux_groups: dict[str, list[str]] = {}
        for fname, folder in plan.aux_files.items():
            aux_groups.setdefault(folder, []).append(fname)
        for folder, names in aux_groups.items():
            writer.copy_aux_files(Path(folder), dtype=job.out_dtype,
                                  skip=[n for n in AUX_FILES if n not in names])
        if check_sum is not None:
            # Decided before the rename: a failed check leaves no output (upstream asserts before saving).
            layers = _layer_count(job.other.keys())
            result.check_sum = _judge_sum(check_sum, CHECK_SUM_ATOL, s64, float(s32) if s32 is not None else None,
                                          buffers, layers, job.rope)
            if not result.check_sum.passed:
                raise CheckFailed(result.check_sum.explanation or "integrity sum mismatch", path=plan.output,
                                  hint="no output was kept; check that the base is the model the diff was made "
                                       "from (for ZhiXi-13B: LLaMA-13B converted to Hugging Face in fp16)")
    result.seconds = round(time.perf_counter() - start, 3)
    result.files = list(writer.files)
    out_dir = Path(plan.output)
    result.published = _published_checks(out_dir, result.files, plan.operation, progress)
    if reference is not None:
        result.reference = compare_by_tensors(out_dir, reference)
    return result


def _execute(operation: str, base, other, out, *, dtype, fmt, shard_size, force, dry_run, check_sum, reference,
             progress, on_plan) -> WeightDiffResult:
    if check_sum is not None and not math.isfinite(check_sum):
        raise InputError(f"--check-sum must be a finite number, got {check_sum}")
    if reference is not None and not Path(reference).exists():
        raise InputError("no such file or folder", path=reference, hint="check the --reference path")
    job = _prepare(operation, base, other, out, dtype=dtype, fmt=fmt, shard_size=shard_size, force=force)
    try:
        if on_plan is not None:
            on_plan(job.plan)
        if dry_run:
            return WeightDiffResult(plan=job.plan, dry_run=True)
        return _run(job, check_sum=check_sum, reference=reference, progress=progress)
    finally:
        job.close()


def recover(base: str | os.PathLike, diff: str | os.PathLike, out: str | os.PathLike, *, dtype: str | None = None,
            fmt: str = "safetensors", shard_size: int = DEFAULT_SHARD_SIZE, force: bool = False,
            dry_run: bool = False, check_sum: float | None = None, reference: str | os.PathLike | None = None,
            progress: ProgressFactory | None = None,
            on_plan: Callable[[WeightDiffPlan], None] | None = None) -> WeightDiffResult:
    """Recover ``tuned = diff + base`` for every tensor of the diff into ``out`` (SPEC.md section 2).

    Every check (names, shapes, dtypes, disk space, existing output) runs before the first tensor is
    read. ``dtype`` is fp32/fp16/bf16 (default: the diff's). ``check_sum`` runs the upstream naive
    integrity check (fp64 sum of every output value, atol 1e-2); on a mismatch :class:`CheckFailed` is
    raised and no output is kept. ``reference`` compares the output tensor by tensor with another model.
    Peak memory ~ 3 x the largest tensor + a constant.
    """
    return _execute("recover", base, diff, out, dtype=dtype, fmt=fmt, shard_size=shard_size, force=force,
                    dry_run=dry_run, check_sum=check_sum, reference=reference, progress=progress, on_plan=on_plan)


def make_diff(base: str | os.PathLike, target: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "fp32",
              fmt: str = "safetensors", shard_size: int = DEFAULT_SHARD_SIZE, force: bool = False,
              dry_run: bool = False, progress: ProgressFactory | None = None,
              on_plan: Callable[[WeightDiffPlan], None] | None = None) -> WeightDiffResult:
    """Write ``diff = target - base`` (computed in fp32) for every tensor of ``target`` into ``out``.

    The inverse of :func:`recover`; config and tokenizer files come from ``target``'s folder.
    """
    return _execute("make-diff", base, target, out, dtype=dtype, fmt=fmt, shard_size=shard_size, force=force,
                    dry_run=dry_run, check_sum=None, reference=None, progress=progress, on_plan=on_plan)


def describe_plan(plan: WeightDiffPlan) -> list[tuple[str, str]]:
    """Rows for a human rendering of a plan (shared by the CLI and the demo)."""
    role = "diff" if plan.operation == "recover" else "tuned"
    return [
        ("base", f"{plan.base} ({', '.join(f'{k} x{v}' for k, v in plan.base_dtypes.items())})"),
        (role, f"{plan.other} ({', '.join(f'{k} x{v}' for k, v in plan.other_dtypes.items())})"),
        ("output", f"{plan.output} ({plan.format}, {len([f for f in plan.files if f not in plan.aux_files])} "
                   f"weight/index file(s))"),
        ("dtype", f"{plan.dtype}: {plan.arithmetic}"),
        ("tensors", f"{plan.tensors} ({plan.parameters:,} parameters)"),
        ("output size", (f"{human_bytes(plan.output_bytes)} (needs {human_bytes(plan.needed_disk_bytes)} free with "
                         f"a {human_bytes(plan.disk_margin_bytes)} margin; free: {human_bytes(plan.free_disk_bytes)})")),
        ("largest tensor", f"{plan.largest_tensor} ({human_bytes(plan.largest_tensor_bytes)})"),
        ("memory", f"about {human_bytes(plan.memory_estimate_bytes)} peak"),
    ]
