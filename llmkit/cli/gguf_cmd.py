"""``llmkit to-gguf``: a LLaMA as the GGUF file llama.cpp and ollama run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from llmkit.cli.helptext import examples
from llmkit.cli.options import (
    DryRunOpt,
    ForceOpt,
    GGUFOutType,
    ModelNameOpt,
    OutTypeOpt,
    SplitMaxSizeOpt,
    output_option,
    with_output,
)
from llmkit.cli.output import Output, print_rows, run_rows

if TYPE_CHECKING:  # llmkit.convert (torch) is imported when a command runs, not at CLI start-up
    from llmkit.convert.gguf import GGUFResult

TO_GGUF_EXAMPLES = examples(
    "# a Hugging Face folder to an f16 GGUF file for llama.cpp / ollama",
    "llmkit to-gguf chinese-alpaca-7b-hf -o chinese-alpaca-7b-f16.gguf",
    "# 8-bit, in files of at most 2 GB (llama.cpp's -0000N-of-0000M.gguf names, in the folder -o names)",
    "llmkit to-gguf zhixi-13b -o zhixi-13b-q8_0 --outtype q8_0 --split-max-size 2G",
)

GGUFOutOpt = Annotated[
    Path,
    output_option(
        "Output .gguf file (with --split-max-size: the folder of the split files); never in an input folder.",
        metavar="PATH",
    ),
]


def render_types(result: GGUFResult) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(result.tensor_types.items()))


def _render(result: GGUFResult) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        rows = [("source", result.source), ("outtype", result.outtype), ("tensor types", render_types(result))]
        print_rows(console, rows + run_rows(result))

    return render


@with_output
def to_gguf_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SOURCE",
            help="A LLaMA: a Hugging Face folder, a Meta folder (consolidated.NN.pth), or - for a stream on stdin.",
            show_default=False,
        ),
    ],
    output: GGUFOutOpt,
    outtype: OutTypeOpt = GGUFOutType.f16,
    split_max_size: SplitMaxSizeOpt = None,
    model_name: ModelNameOpt = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    *,
    out: Output,
) -> None:
    """Convert a LLaMA to GGUF for llama.cpp and ollama.

    The bytes of llama.cpp's convert_hf_to_gguf.py --outtype X: names, q/k rows, types, metadata, vocabulary.
    """
    from llmkit.convert.gguf import ToGGUFOptions, to_gguf
    from llmkit.units import parse_size

    options = ToGGUFOptions(
        source,
        output,
        outtype=outtype.value,
        split_max_size=parse_size(split_max_size) if split_max_size else 0,
        model_name=model_name,
        force=force,
        dry_run=dry_run,
    )
    result = to_gguf(options, progress=out.progress)
    out.show(result, _render(result))
