"""The options and result of ``to-ckpt`` / ``from-ckpt`` (:mod:`llmkit.convert.ckpt`), and what both
directions share: the choice checks, the heads for the rotary rows, short name lists for notices."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llmkit.convert.meta import ConvertResult, cast_dtype
from llmkit.errors import InputError
from llmkit.io.core.jsonfile import int_field
from llmkit.io.mindspore.mindformers import ROTARY_LAYOUTS, rotary_role
from llmkit.io.remote.url import shown
from llmkit.pipeline import Plan, PlanReport, ProgressFactory, run_plan
from llmkit.units import DEFAULT_SHARD_SIZE

if TYPE_CHECKING:
    from llmkit.io.core.sink import Sink
    from llmkit.io.core.source import TensorSource
    from llmkit.io.core.spec import TensorSpec
    from llmkit.io.mindspore.keys import CkptKey

TO_NAMES = ("mindformers", "hf")
FROM_NAMES = ("hf", "keep")


@dataclass(frozen=True)
class ToCkptOptions:
    """``llmkit to-ckpt``: a model -> one MindSpore ``.ckpt`` file (``fmt="ckpt"``, ``output`` a file) or a
    folder of MindFormers-named safetensors (``fmt="safetensors"``)."""

    source: Path
    output: Path
    dtype: str = "keep"
    names: str = "mindformers"
    rotary: str = "hf"
    crc: bool = False
    fmt: str = "ckpt"
    shard_size: int = DEFAULT_SHARD_SIZE
    strict: bool = False
    enc_key: str | None = None  # a key file path or env:VAR (hex): never the key itself
    enc_mode: str = "AES-GCM"
    force: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class FromCkptOptions:
    """``llmkit from-ckpt``: a MindSpore ``.ckpt`` -> a Hugging Face LLaMA folder. ``config``: a config.json,
    or a model folder (its config and tokenizer files are carried)."""

    source: Path
    output: Path
    names: str = "hf"
    rotary: str = "hf"
    fmt: str = "safetensors"
    config: Path | None = None
    dtype: str = "keep"
    shard_size: int = DEFAULT_SHARD_SIZE
    strict: bool = False
    dec_key: str | None = None  # a key file path or env:VAR (hex), for an encrypted checkpoint
    dec_mode: str | None = None  # None: read from the file
    force: bool = False
    dry_run: bool = False
    outtype: str | None = None  # fmt gguf: the GGUF tensor type (None: f16)
    split_max_size: int = 0  # fmt gguf: bytes per split file (0: one file)


@dataclass(kw_only=True)
class CkptResult(ConvertResult):
    """Result of ``to-ckpt`` / ``from-ckpt`` (docs/json.md). ``unmapped``: source tensors with no name in
    the target naming (kept by to-ckpt, left out by from-ckpt); ``split``: tensors stored as several
    512 MiB records; ``config_from``: the config file used, ``derived`` or None; ``encryption``: the
    cipher of the written (to-ckpt) or read (from-ckpt) checkpoint, or None."""

    names: str = ""
    rotary: str = "hf"
    crc: bool = False
    unmapped: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    config_from: str | None = None
    encryption: str | None = None


RowTransform = Callable[[str, torch.Tensor], torch.Tensor]  # (HF name, tensor) -> the tensor as written


def run_ckpt(
    command: str,
    plan: Plan,
    options: ToCkptOptions | FromCkptOptions,
    progress: ProgressFactory | None,
    **fields: Any,
) -> CkptResult:
    """Either direction's plan on the one runner, into its result: what both take from the options, then
    ``fields``, each one's own."""

    def result_for(report: PlanReport, sink: Sink) -> CkptResult:
        return CkptResult(
            plan=report,
            command=command,
            source=shown(options.source),  # a URL as given, not as a Path folds it
            format=options.fmt,
            dtype=options.dtype,
            names=options.names,
            rotary=options.rotary,
            **fields,
        )

    return run_plan(plan, options, result_for, progress)


def renaming_plan(
    job: str,
    options: ToCkptOptions | FromCkptOptions,
    src: TensorSource,
    specs: list[TensorSpec],
    src_of: dict[str, str],
    produce: Callable[[str], torch.Tensor],
    *,
    cache_bytes: int = 0,
    **fields: Any,
) -> Plan:
    """Either direction's plan: output tensors in ``specs`` order, each made by ``produce`` from one stored
    tensor of ``src`` (``src_of``: output name -> stored name). Working set: three times the largest tensor
    and what the reader caches (``cache_bytes``); ``fields``: the rest of the :class:`Plan`."""
    largest = max((s.nbytes for s in specs), default=0)
    return Plan(
        job=job,
        output=Path(options.output),
        fmt=options.fmt,
        specs=specs,
        produce=produce,
        reads=lambda out: [(src, src_of[out])],
        working_set_bytes=3 * (largest + cache_bytes),
        label="converting",
        sources=[src],
        **fields,
    )


def check_choice(value: str, choices: tuple[str, ...], flag: str) -> None:
    if value not in choices:
        raise InputError(f"{flag}: {value!r} is not one of {', '.join(choices)}")


def checked_dtype(
    options: ToCkptOptions | FromCkptOptions, names: tuple[str, ...], formats: tuple[str, ...]
) -> torch.dtype | None:
    """The choices of either direction checked (``--dtype``, ``--names``, ``--rotary``, ``--format``, in this
    order); the dtype to cast to (None: keep)."""
    dtype = cast_dtype(options.dtype)
    check_choice(options.names, names, "--names")
    check_choice(options.rotary, ROTARY_LAYOUTS, "--rotary")
    check_choice(options.fmt, formats, "--format")
    return dtype


def read_ckpt_key(spec: str | None, mode: str | None, flag: str) -> CkptKey | None:
    """The key of ``--enc-key``/``--dec-key`` (a key file or ``env:VAR``, never the key itself), or None."""
    if spec is None:
        return None
    from llmkit.io.mindspore.keys import read_key

    return read_key(spec, mode, flag=flag)


def config_heads(cfg: dict | None, where: str | os.PathLike, why: str) -> tuple[int, int]:
    """(attention heads, key/value heads) from a config, for the rotary permutation."""
    heads = (cfg or {}).get("num_attention_heads")
    if not isinstance(heads, int) or heads <= 0:
        raise InputError(
            f"{why} needs num_attention_heads from config.json, which is missing",
            path=where,
            hint="put the model's config.json beside its weights (or pass --config)",
        )
    assert cfg is not None
    kv = int_field(cfg, "num_key_value_heads", path=where)  # a string or fraction: one line naming the file
    return heads, kv or heads


def rotary_rows(heads: tuple[int, int], fn: Callable[[torch.Tensor, int], torch.Tensor]) -> RowTransform:
    """A transform applying ``fn`` (permute/unpermute) to q/k rows (HF name), identity otherwise."""

    def apply(hf_name: str, t: torch.Tensor) -> torch.Tensor:
        role = rotary_role(hf_name)
        if role is None:
            return t
        return fn(t, heads[0] if role == "q" else heads[1]).contiguous()

    return apply


def unchanged(hf_name: str, t: torch.Tensor) -> torch.Tensor:
    """The row transform of ``--rotary hf``: none."""
    return t


def few(names: list[str]) -> str:
    """Up to three names, and how many more."""
    return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")
