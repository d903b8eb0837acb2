"""``llmkit to-ckpt`` / ``llmkit from-ckpt``: Hugging Face ⇄ MindSpore ``.ckpt`` (MindFormers names, SPEC.md section 5)."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from llmkit.cli.helptext import CHECKS, INPUTS, OUTPUT, examples
from llmkit.cli.keys import DecKeyOpt, DecModeOpt, EncKeyOpt, EncMode, EncModeOpt, mode_value
from llmkit.cli.options import (
    DTYPES_OR_KEEP,
    DryRunOpt,
    ForceOpt,
    JobOutTypeOpt,
    SplitMaxSizeOpt,
    WeightFormat,
    WeightFormatOpt,
    choice_option,
    dtype_option,
    gguf_output,
    output_option,
    reads_remote,
    runs_on_ray,
    shard_size_option,
    tensor_output,
    with_output,
)
from llmkit.cli.output import Output, print_rows, run_rows

if TYPE_CHECKING:  # llmkit.convert (torch) is imported when a command runs, not at CLI start-up
    from llmkit.convert.ckpt import CkptResult

TO_CKPT_EXAMPLES = examples(
    "# TechGPT-2.0 for MindFormers r0.7 and later, with MindSpore's CRC trailer",
    "llmkit to-ckpt techgpt-2.0-atom -o techgpt-2.0-atom.ckpt --crc",
    "# for MindFormers r0.6 (the card's era): Meta's wq/wk row layout",
    "llmkit to-ckpt techgpt-2.0-atom -o techgpt2-atom-r0.6.ckpt --rotary meta",
    "# encrypted as save_checkpoint(enc_key=...) does, the key read from a file",
    "llmkit to-ckpt techgpt-2.0-atom -o atom.enc.ckpt --enc-key ms.key --enc-mode AES-GCM",
    "# the end of a pipe: the model on stdin, from llmkit recover/merge-lora/... -o - (docs/pipes.md)",
    "llmkit to-ckpt - -o zhixi-13b.ckpt",
)
FROM_CKPT_EXAMPLES = examples(
    "# back to Hugging Face, config and tokenizer from the original folder",
    "llmkit from-ckpt techgpt-2.0-atom.ckpt -o techgpt-2.0-atom-back --config techgpt-2.0-atom",
    "# a checkpoint written for MindFormers r0.6 (Meta's wq/wk rows)",
    "llmkit from-ckpt techgpt2-atom-r0.6.ckpt -o back-r0.6 --rotary meta --config techgpt-2.0-atom/config.json",
    "# an encrypted checkpoint, the key as hex in $MS_KEY",
    "llmkit from-ckpt atom.enc.ckpt -o atom-back --dec-key env:MS_KEY --config techgpt-2.0-atom",
)


class ToNames(str, Enum):
    mindformers = "mindformers"
    hf = "hf"


TO_NAMES_HELP = "Parameter names: mindformers (model.layers.N.attention.wq.weight, ...) or hf (as in the source)."


class FromNames(str, Enum):
    hf = "hf"
    keep = "keep"


FROM_NAMES_HELP = (
    "hf: MindFormers names become Hugging Face names and tensors that are not LLaMA weights are left out; "
    "keep: every tensor under its stored name."
)


class Rotary(str, Enum):
    hf = "hf"
    meta = "meta"


ROTARY_HELP = (
    "wq/wk row layout: hf (rotate-half, as stored by Hugging Face; what MindFormers r0.7 and later "
    "expect) or meta (Meta's interleaved rows; what MindFormers r0.6 of August 2023, the TechGPT-2.0 "
    "card's era, expects)."
)
FROM_ROTARY_HELP = (
    "wq/wk row layout stored in the checkpoint; meta rows are permuted back to Hugging Face's rotate-half. "
    + ROTARY_HELP.split(": ", 1)[1]
)


class CkptFormat(str, Enum):
    ckpt = "ckpt"
    safetensors = "safetensors"


CKPT_FORMAT_HELP = (
    "ckpt (one file, the bytes of mindspore.save_checkpoint) or safetensors (a folder of MindFormers-named "
    "safetensors, for newer MindFormers)."
)
StrictOpt = Annotated[
    bool,
    typer.Option(
        "--strict",
        rich_help_panel=CHECKS,
        help="Refuse tensors that have no name in the target naming "
        "instead of keeping (to-ckpt) or leaving them out "
        "(from-ckpt) with a warning.",
    ),
]
ShardOpt = Annotated[str, shard_size_option("Largest output shard for safetensors/bin")]


def _render(result: CkptResult) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        rows = [("source", result.source), ("names", result.names), ("rotary", result.rotary), ("dtype", result.dtype)]
        if result.config_from:
            rows.append(("config", result.config_from))
        if result.format == "ckpt" or result.command == "from-ckpt":
            rows.append(("crc trailer", "yes" if result.crc else "no"))
            rows.append(("encryption", result.encryption or "none"))
        if result.split:
            rows.append(("split", f"{len(result.split)} tensor(s) over 512 MiB stored as several records"))
        if result.unmapped:
            rows.append(("unmapped", f"{len(result.unmapped)} tensor(s) with no name in the target naming"))
        print_rows(console, rows + run_rows(result))

    return render


@with_output
@reads_remote
@runs_on_ray
def to_ckpt_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SOURCE",
            help="A model llmkit reads: a Hugging Face folder or "
            "weight file, a Meta folder, a recover or "
            "merge-lora output; or - for a stream on stdin; or a URL: hf://OWNER/NAME, s3://BUCKET/PREFIX.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path, output_option("The .ckpt file to write (with --format safetensors: a folder).", metavar="PATH")
    ],
    dtype: Annotated[
        str,
        dtype_option(
            DTYPES_OR_KEEP, "Output dtype: keep (default) copies the bytes; another dtype is one cast per tensor."
        ),
    ] = "keep",
    names: Annotated[ToNames, choice_option("--names", ToNames, TO_NAMES_HELP)] = ToNames.mindformers,
    rotary: Annotated[Rotary, choice_option("--rotary", Rotary, ROTARY_HELP)] = Rotary.hf,
    crc: Annotated[
        bool,
        typer.Option(
            "--crc",
            rich_help_panel=OUTPUT,
            help="Append MindSpore's CRC-32 trailer (what save_checkpoint("
            "crc_check=True) writes; load_checkpoint(crc_check=True) checks "
            "it). With --enc-key it is encrypted with the records, where "
            "load_checkpoint(dec_key=..., crc_check=True) checks it: the "
            "damage check AES-CBC and SM4-CBC lack.",
        ),
    ] = False,
    fmt: Annotated[CkptFormat, choice_option("--format", CkptFormat, CKPT_FORMAT_HELP)] = CkptFormat.ckpt,
    shard_size: ShardOpt = "5GB",
    strict: StrictOpt = False,
    enc_key: EncKeyOpt = None,
    enc_mode: EncModeOpt = EncMode.aes_gcm,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    *,
    out: Output,
) -> None:
    """Convert a model to a MindSpore .ckpt (MindFormers names).

    Streamed, without MindSpore: the bytes mindspore.save_checkpoint writes.
    """
    from llmkit.convert.ckpt import ToCkptOptions, to_ckpt

    options = ToCkptOptions(
        source,
        output,
        dtype=dtype,
        names=names.value,
        rotary=rotary.value,
        crc=crc,
        strict=strict,
        enc_key=enc_key,
        enc_mode=enc_mode.value,
        **tensor_output(fmt, shard_size, force=force, dry_run=dry_run),
    )
    result = to_ckpt(options, progress=out.progress)
    out.show(result, _render(result))


@with_output
@runs_on_ray
def from_ckpt_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="CKPT",
            help="A MindSpore .ckpt file (MindFormers or Hugging Face "
            "names; split records and a CRC trailer are "
            "handled).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        output_option(
            "Output folder (a Hugging Face LLaMA), a .gguf file with --format gguf, or - for a safetensors stream "
            "on stdout."
        ),
    ],
    names: Annotated[FromNames, choice_option("--names", FromNames, FROM_NAMES_HELP, panel=INPUTS)] = FromNames.hf,
    rotary: Annotated[Rotary, choice_option("--rotary", Rotary, FROM_ROTARY_HELP, panel=INPUTS)] = Rotary.hf,
    fmt: WeightFormatOpt = WeightFormat.safetensors,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="PATH",
            rich_help_panel=INPUTS,
            help="The model's config.json, or its Hugging Face folder (config and tokenizer files are "
            "carried). Needed unless the shapes are a published LLaMA size (7B, 13B, 33B, 65B, "
            "Llama-2-70B), whose config is then derived from them with a warning naming what was "
            "guessed.",
        ),
    ] = None,
    dtype: Annotated[
        str, dtype_option(DTYPES_OR_KEEP, "Output dtype: keep (default) or one cast per tensor.")
    ] = "keep",
    shard_size: ShardOpt = "5GB",
    outtype: JobOutTypeOpt = None,
    split_max_size: SplitMaxSizeOpt = None,
    strict: StrictOpt = False,
    dec_key: DecKeyOpt = None,
    dec_mode: DecModeOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    *,
    out: Output,
) -> None:
    """Convert a MindSpore .ckpt to a Hugging Face LLaMA folder.

    Streamed, without MindSpore; the CRC trailer, if any, is checked before the output gets its name.
    """
    from llmkit.convert.ckpt import FromCkptOptions, from_ckpt

    options = FromCkptOptions(
        source,
        output,
        names=names.value,
        rotary=rotary.value,
        config=config,
        dtype=dtype,
        strict=strict,
        dec_key=dec_key,
        dec_mode=mode_value(dec_mode),
        **tensor_output(fmt, shard_size, force=force, dry_run=dry_run),
        **gguf_output(outtype, split_max_size),
    )
    result = from_ckpt(options, progress=out.progress)
    out.show(result, _render(result))
