"""``llmkit from-meta`` / ``llmkit to-meta``: Meta LLaMA-1 originals ⇄ Hugging Face (SPEC.md sections 3, 4)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from llmkit.cli import DebugOpt, ForceOpt, JsonOpt, QuietOpt, app, command_guard
from llmkit.cli.output import Output, print_rows, run_rows
from llmkit.units import parse_size


class Dtype(str, Enum):
    keep = "keep"
    fp16 = "fp16"
    bf16 = "bf16"
    fp32 = "fp32"


class Format(str, Enum):
    safetensors = "safetensors"
    bin = "bin"


OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Output folder (must not be, be in or contain an "
                                                             "input folder).", show_default=False)]
DtypeOpt = Annotated[Dtype, typer.Option("--dtype", help="Output dtype. keep (default) copies the bytes (LLaMA-1 "
                                                         "originals are fp16: no lossy bf16 cast); another dtype "
                                                         "is one cast per tensor.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Run every check and print the plan (sizes, disk "
                                                            "space, memory estimate); write nothing.")]


def _render(result):  # result: llmkit.convert.ConvertResult
    def render(console: Console) -> None:
        rows = [("source", result.source), ("dtype", result.dtype)]
        if result.tokenizer_from:
            rows.append(("tokenizer", result.tokenizer_from))
        print_rows(console, rows + run_rows(result))
    return render


@app.command("from-meta", rich_help_panel="Convert")
def from_meta_command(
    source: Annotated[Path, typer.Argument(help="Folder with Meta's consolidated.NN.pth and params.json "
                                                "(7B: 1 shard, 13B: 2, 33B: 4, 65B: 8).", show_default=False)],
    output: OutOpt,
    dtype: DtypeOpt = Dtype.keep,
    fmt: Annotated[Format, typer.Option("--format", help="Output weight format.")] = Format.safetensors,
    shard_size: Annotated[str, typer.Option("--shard-size", help="Largest output shard, e.g. 5GB, 10GB.")] = "5GB",
    tokenizer: Annotated[Optional[Path], typer.Option(
        "--tokenizer", help="tokenizer.model or a tokenizer folder (default: tokenizer.model beside SOURCE or in "
                            "its parent, Meta's download layout).")] = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Convert Meta's LLaMA-1 originals to Hugging Face: shards joined, wq/wk permuted, dtype kept, streamed."""
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    with command_guard(out):
        from llmkit.convert import FromMetaOptions, from_meta

        options = FromMetaOptions(source, output, dtype=dtype.value, fmt=fmt.value, shard_size=parse_size(shard_size),
                                  tokenizer=tokenizer, force=force, dry_run=dry_run)
        result = from_meta(options, progress=out.progress)
        out.notices(result)
        out.result(result, _render(result))


@app.command("to-meta", rich_help_panel="Convert")
def to_meta_command(
    source: Annotated[Path, typer.Argument(help="A Hugging Face LLaMA folder (any layout llmkit reads).",
                                           show_default=False)],
    output: OutOpt,
    shards: Annotated[Optional[int], typer.Option(
        "--shards", min=1, max=64, help="consolidated.NN.pth files (default: Meta's count for the hidden size: "
                                        "4096->1, 5120->2, 6656->4, 8192->8).")] = None,
    dtype: DtypeOpt = Dtype.keep,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Convert a Hugging Face LLaMA to Meta's consolidated.NN.pth + params.json (wq/wk un-permuted, split)."""
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    with command_guard(out):
        from llmkit.convert import ToMetaOptions, to_meta

        options = ToMetaOptions(source, output, shards=shards, dtype=dtype.value, force=force, dry_run=dry_run)
        result = to_meta(options, progress=out.progress)
        out.notices(result)
        out.result(result, _render(result))
