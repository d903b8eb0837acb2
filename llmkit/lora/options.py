"""``llmkit merge-lora``'s options and the checks of them alone (before any input is opened)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import InputError
from llmkit.io.core.dtypes import DTYPE_CHOICES

FORMATS = ("safetensors", "bin", "pth", "gguf")
SINK_FORMATS = {"safetensors": "safetensors", "bin": "bin", "pth": "meta-pth", "gguf": "gguf"}


@dataclass(frozen=True)
class MergeOptions:
    """``llmkit merge-lora``: merge ``adapters`` (in order) into ``base``, write ``output``.

    ``dtype``: keep (each tensor's own), fp16, bf16 or fp32. ``fmt``: safetensors, bin or pth (Meta
    ``consolidated.NN.pth``). ``shard_size`` in bytes (safetensors/bin; None: 5 GB). ``tokenizer``: the
    output's tokenizer folder (None: the last adapter that has one, else the base's). ``pth_shards``: the
    number of ``.pth`` files (None: Meta's for the hidden size). ``output`` may be None only to open and
    check the inputs (:func:`llmkit.lora.merge.plan_merge`).
    """

    base: Path
    adapters: tuple[Path, ...]
    output: Path | None = None
    dtype: str = "keep"
    fmt: str = "safetensors"
    shard_size: int | None = None
    tokenizer: Path | None = None
    pth_shards: int | None = None
    outtype: str | None = None  # fmt gguf: the GGUF tensor type (None: f16)
    split_max_size: int = 0  # fmt gguf: bytes per split file (0: one file)
    dry_run: bool = False
    force: bool = False


def check_options(options: MergeOptions) -> None:
    """Refuse options that cannot work whatever the inputs: no adapter, an unknown dtype or format,
    ``--pth-shards`` without ``--format pth``, the same adapter twice."""
    if not options.adapters:
        raise InputError("no adapter given", hint="pass one or more --lora ADAPTER")
    if options.dtype not in DTYPE_CHOICES:
        raise InputError(f"unknown dtype {options.dtype!r}", hint=f"use one of {', '.join(DTYPE_CHOICES)}")
    if options.fmt not in FORMATS:
        raise InputError(f"unknown format {options.fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    if options.pth_shards and options.fmt != "pth":
        raise InputError("--pth-shards applies to --format pth only")
    if options.shard_size and options.fmt == "gguf":
        raise InputError("--shard-size applies to safetensors/bin", hint="for GGUF files use --split-max-size")
    seen: set[Path] = set()
    for f in options.adapters:
        key = Path(os.path.realpath(f))  # never raises on a symlink loop (open_source names it below)
        if key in seen:
            raise InputError("the same adapter is given twice", path=f, hint="pass each --lora once")
        seen.add(key)
