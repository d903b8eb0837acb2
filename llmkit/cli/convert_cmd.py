"""``llmkit from-meta`` / ``llmkit to-meta``: Meta LLaMA-1 originals ⇄ Hugging Face (SPEC.md sections 3, 4)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from llmkit.cli.helptext import INPUTS, OUTPUT, examples
from llmkit.cli.options import (
    DTYPES_OR_KEEP,
    DryRunOpt,
    ForceOpt,
    JobOutTypeOpt,
    ShardSizeOpt,
    SplitMaxSizeOpt,
    WeightFormat,
    WeightFormatOpt,
    dtype_option,
    gguf_output,
    output_option,
    reads_remote,
    runs_on_ray,
    tensor_output,
    with_output,
)
from llmkit.cli.output import Output, print_rows, run_rows

if TYPE_CHECKING:  # llmkit.convert (torch) is imported when a command runs, not at CLI start-up
    from llmkit.convert import ConvertResult

FROM_META_EXAMPLES = examples(
    "# Meta's LLaMA-13B (2 shards) to a Hugging Face folder, fp16 kept",
    "llmkit from-meta LLaMA/13B -o llama-13b-hf",
    "# .bin shards of 2 GB, the tokenizer from another folder",
    "llmkit from-meta LLaMA/7B -o llama-7b-hf --format bin --shard-size 2G --tokenizer LLaMA/tokenizer.model",
)
TO_META_EXAMPLES = examples(
    "# Meta's consolidated.NN.pth + params.json, e.g. for llama.cpp's converter",
    "llmkit to-meta chinese-alpaca-13b-hf -o chinese-alpaca-13b-pth",
    "# one shard whatever the size, cast to fp16",
    "llmkit to-meta chinese-alpaca-13b-hf -o chinese-alpaca-13b-pth --shards 1 --dtype f16",
)

OutOpt = Annotated[Path, output_option("Output folder (must not be, be in or contain an input folder).")]
FromOutOpt = Annotated[
    Path,
    output_option(
        "Output folder (must not be, be in or contain an input folder), or - for a safetensors stream on stdout."
    ),
]
DtypeOpt = Annotated[
    str,
    dtype_option(
        DTYPES_OR_KEEP,
        "Output dtype. keep (default) copies the bytes (LLaMA-1 originals "
        "are fp16: no lossy bf16 cast); another dtype is one cast per "
        "tensor.",
    ),
]


def _render(result: ConvertResult) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        rows = [("source", result.source), ("dtype", result.dtype)]
        if result.tokenizer_from:
            rows.append(("tokenizer", result.tokenizer_from))
        print_rows(console, rows + run_rows(result))

    return render


@with_output
@runs_on_ray
def from_meta_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SOURCE",
            help="Folder with Meta's consolidated.NN.pth and params.json (7B: 1 shard, 13B: 2, 33B: 4, 65B: 8).",
            show_default=False,
        ),
    ],
    output: FromOutOpt,
    dtype: DtypeOpt = "keep",
    fmt: WeightFormatOpt = WeightFormat.safetensors,
    shard_size: ShardSizeOpt = "5GB",
    outtype: JobOutTypeOpt = None,
    split_max_size: SplitMaxSizeOpt = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer",
            metavar="PATH",
            rich_help_panel=INPUTS,
            help="tokenizer.model or a tokenizer folder (default: tokenizer.model beside SOURCE or in "
            "its parent, Meta's download layout).",
        ),
    ] = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    *,
    out: Output,
) -> None:
    """Convert Meta's LLaMA-1 originals to Hugging Face.

    Shards joined, wq/wk permuted, dtype kept, streamed.
    """
    from llmkit.convert import FromMetaOptions, from_meta

    options = FromMetaOptions(
        source,
        output,
        dtype=dtype,
        tokenizer=tokenizer,
        **tensor_output(fmt, shard_size, force=force, dry_run=dry_run),
        **gguf_output(outtype, split_max_size),
    )
    result = from_meta(options, progress=out.progress)
    out.show(result, _render(result))


@with_output
@reads_remote
def to_meta_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SOURCE",
            help="A Hugging Face LLaMA folder (any layout llmkit reads), or - for a stream on stdin; or a URL: hf://OWNER/NAME, s3://BUCKET/PREFIX.",
            show_default=False,
        ),
    ],
    output: OutOpt,
    shards: Annotated[
        int | None,
        typer.Option(
            "--shards",
            min=1,
            max=64,
            metavar="N",
            rich_help_panel=OUTPUT,
            help="consolidated.NN.pth files (default: Meta's count for the hidden size: "
            "4096->1, 5120->2, 6656->4, 8192->8).",
        ),
    ] = None,
    dtype: DtypeOpt = "keep",
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    *,
    out: Output,
) -> None:
    """Convert a Hugging Face LLaMA to Meta's consolidated.NN.pth.

    Writes consolidated.NN.pth + params.json: wq/wk un-permuted, split into Meta's model-parallel shards.
    """
    from llmkit.convert import ToMetaOptions, to_meta

    options = ToMetaOptions(source, output, shards=shards, dtype=dtype, force=force, dry_run=dry_run)
    result = to_meta(options, progress=out.progress)
    out.show(result, _render(result))
