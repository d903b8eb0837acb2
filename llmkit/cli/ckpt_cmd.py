"""``llmkit to-ckpt`` / ``llmkit from-ckpt``: Hugging Face ⇄ MindSpore ``.ckpt`` (MindFormers names, SPEC.md section 5)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from llmkit.cli import DebugOpt, ForceOpt, JsonOpt, QuietOpt, app, command_guard
from llmkit.cli.convert_cmd import DTYPES, DryRunOpt
from llmkit.cli.helptext import CHECKS, INPUTS, OUTPUT, examples
from llmkit.cli.keys import DecKeyOpt, DecModeOpt, EncKeyOpt, EncMode, EncModeOpt
from llmkit.cli.output import Output, print_rows, run_rows
from llmkit.cli.params import choice_metavar, dtype_option, shard_size_option
from llmkit.units import parse_size


class ToNames(str, Enum):
    mindformers = "mindformers"
    hf = "hf"


class FromNames(str, Enum):
    hf = "hf"
    keep = "keep"


class Rotary(str, Enum):
    hf = "hf"
    meta = "meta"


class CkptFormat(str, Enum):
    ckpt = "ckpt"
    safetensors = "safetensors"


class HFFormat(str, Enum):
    safetensors = "safetensors"
    bin = "bin"


ROTARY_HELP = (
    "wq/wk row layout: hf (rotate-half, as stored by Hugging Face; what MindFormers r0.7 and later "
    "expect) or meta (Meta's interleaved rows; what MindFormers r0.6 of August 2023, the TechGPT-2.0 "
    "card's era, expects)."
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


def _render(result):  # result: llmkit.convert.ckpt.CkptResult
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


@app.command(
    "to-ckpt",
    rich_help_panel="Convert",
    epilog=examples(
        "# TechGPT-2.0 for MindFormers r0.7 and later, with MindSpore's CRC trailer",
        "llmkit to-ckpt techgpt-2.0-atom -o techgpt-2.0-atom.ckpt --crc",
        "# for MindFormers r0.6 (the card's era): Meta's wq/wk row layout",
        "llmkit to-ckpt techgpt-2.0-atom -o techgpt2-atom-r0.6.ckpt --rotary meta",
        "# encrypted as save_checkpoint(enc_key=...) does, the key read from a file",
        "llmkit to-ckpt techgpt-2.0-atom -o atom.enc.ckpt --enc-key ms.key --enc-mode AES-GCM",
    ),
)
def to_ckpt_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SOURCE",
            help="A model llmkit reads: a Hugging Face folder or "
            "weight file, a Meta folder, a recover or "
            "merge-lora output.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            rich_help_panel=OUTPUT,
            help="The .ckpt file to write (with --format safetensors: a folder).",
            show_default=False,
        ),
    ],
    dtype: Annotated[
        str,
        dtype_option(DTYPES, "Output dtype: keep (default) copies the bytes; another dtype is one cast per tensor."),
    ] = "keep",
    names: Annotated[
        ToNames,
        typer.Option(
            "--names",
            metavar=choice_metavar(ToNames),
            rich_help_panel=OUTPUT,
            help="Parameter names: mindformers (model.layers.N.attention.wq.weight, ...) or hf (as in the source).",
        ),
    ] = ToNames.mindformers,
    rotary: Annotated[
        Rotary, typer.Option("--rotary", metavar=choice_metavar(Rotary), rich_help_panel=OUTPUT, help=ROTARY_HELP)
    ] = Rotary.hf,
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
    fmt: Annotated[
        CkptFormat,
        typer.Option(
            "--format",
            metavar=choice_metavar(CkptFormat),
            rich_help_panel=OUTPUT,
            help="ckpt (one file, the bytes of mindspore."
            "save_checkpoint) or safetensors (a folder of "
            "MindFormers-named safetensors, for newer "
            "MindFormers).",
        ),
    ] = CkptFormat.ckpt,
    shard_size: ShardOpt = "5GB",
    strict: StrictOpt = False,
    enc_key: EncKeyOpt = None,
    enc_mode: EncModeOpt = EncMode.aes_gcm,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Convert a model to a MindSpore .ckpt (MindFormers names).

    Streamed, without MindSpore: the bytes mindspore.save_checkpoint writes.
    """
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    with command_guard(out):
        from llmkit.convert.ckpt import ToCkptOptions, to_ckpt

        options = ToCkptOptions(
            source,
            output,
            dtype=dtype,
            names=names.value,
            rotary=rotary.value,
            crc=crc,
            fmt=fmt.value,
            shard_size=parse_size(shard_size),
            strict=strict,
            enc_key=enc_key,
            enc_mode=enc_mode.value,
            force=force,
            dry_run=dry_run,
        )
        result = to_ckpt(options, progress=out.progress)
        out.notices(result)
        out.result(result, _render(result))


@app.command(
    "from-ckpt",
    rich_help_panel="Convert",
    epilog=examples(
        "# back to Hugging Face, config and tokenizer from the original folder",
        "llmkit from-ckpt techgpt-2.0-atom.ckpt -o techgpt-2.0-atom-back --config techgpt-2.0-atom",
        "# a checkpoint written for MindFormers r0.6 (Meta's wq/wk rows)",
        "llmkit from-ckpt techgpt2-atom-r0.6.ckpt -o back-r0.6 --rotary meta --config techgpt-2.0-atom/config.json",
        "# an encrypted checkpoint, the key as hex in $MS_KEY",
        "llmkit from-ckpt atom.enc.ckpt -o atom-back --dec-key env:MS_KEY --config techgpt-2.0-atom",
    ),
)
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
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            rich_help_panel=OUTPUT,
            help="Output folder (a Hugging Face LLaMA).",
            show_default=False,
        ),
    ],
    names: Annotated[
        FromNames,
        typer.Option(
            "--names",
            metavar=choice_metavar(FromNames),
            rich_help_panel=INPUTS,
            help="hf: MindFormers names become Hugging Face names and "
            "tensors that are not LLaMA weights are left out; keep: "
            "every tensor under its stored name.",
        ),
    ] = FromNames.hf,
    rotary: Annotated[
        Rotary,
        typer.Option(
            "--rotary",
            metavar=choice_metavar(Rotary),
            rich_help_panel=INPUTS,
            help="wq/wk row layout stored in the checkpoint; meta "
            "rows are permuted back to Hugging Face's "
            "rotate-half. " + ROTARY_HELP.split(": ", 1)[1],
        ),
    ] = Rotary.hf,
    fmt: Annotated[
        HFFormat,
        typer.Option(
            "--format", metavar=choice_metavar(HFFormat), rich_help_panel=OUTPUT, help="Output weight format."
        ),
    ] = HFFormat.safetensors,
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
    dtype: Annotated[str, dtype_option(DTYPES, "Output dtype: keep (default) or one cast per tensor.")] = "keep",
    shard_size: ShardOpt = "5GB",
    strict: StrictOpt = False,
    dec_key: DecKeyOpt = None,
    dec_mode: DecModeOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Convert a MindSpore .ckpt to a Hugging Face LLaMA folder.

    Streamed, without MindSpore; the CRC trailer, if any, is checked before the output gets its name.
    """
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    with command_guard(out):
        from llmkit.convert.ckpt import FromCkptOptions, from_ckpt

        options = FromCkptOptions(
            source,
            output,
            names=names.value,
            rotary=rotary.value,
            fmt=fmt.value,
            config=config,
            dtype=dtype,
            shard_size=parse_size(shard_size),
            strict=strict,
            dec_key=dec_key,
            dec_mode=dec_mode.value if dec_mode else None,
            force=force,
            dry_run=dry_run,
        )
        result = from_ckpt(options, progress=out.progress)
        out.notices(result)
        out.result(result, _render(result))
