"""``llmkit to-gguf`` / ``llmkit from-gguf``: a LLaMA as the GGUF file llama.cpp and ollama run, and back."""

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
    GGUFOutType,
    HFFormat,
    HFFormatOpt,
    ModelNameOpt,
    OutTypeOpt,
    ShardSizeOpt,
    SplitMaxSizeOpt,
    dtype_option,
    output_option,
    reads_remote,
    runs_on_ray,
    tensor_output,
    with_output,
)
from llmkit.cli.output import Output, print_rows, run_rows

if TYPE_CHECKING:  # llmkit.convert (torch) is imported when a command runs, not at CLI start-up
    from llmkit.convert.from_gguf import FromGGUFResult
    from llmkit.convert.gguf import GGUFResult

TO_GGUF_EXAMPLES = examples(
    "# a Hugging Face folder to an f16 GGUF file for llama.cpp / ollama",
    "llmkit to-gguf chinese-alpaca-7b-hf -o chinese-alpaca-7b-f16.gguf",
    "# 8-bit, in files of at most 2 GB (llama.cpp's -0000N-of-0000M.gguf names, in the folder -o names)",
    "llmkit to-gguf zhixi-13b -o zhixi-13b-q8_0 --outtype q8_0 --split-max-size 2G",
)

FROM_GGUF_EXAMPLES = examples(
    "# an f16 GGUF back to a Hugging Face folder, the tokenizer from the original download",
    "llmkit from-gguf chinese-alpaca-7b-f16.gguf -o chinese-alpaca-7b-hf --tokenizer chinese-alpaca-7b/tokenizer.model",
    "# a split model (its first part), the norms back to fp16 as the original had them",
    "llmkit from-gguf zhixi-13b-f16/zhixi-13b-f16-00001-of-00003.gguf -o zhixi-13b-hf --dtype fp16",
    "# a q8_0 file: its dequantized values as float32 (not the original weights)",
    "llmkit from-gguf zhixi-13b-q8_0.gguf -o zhixi-13b-dequantized --dequantize",
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
@reads_remote
@runs_on_ray
def to_gguf_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SOURCE",
            help="A LLaMA: a Hugging Face folder, a Meta folder (consolidated.NN.pth), or - for a stream on stdin; or a URL: hf://OWNER/NAME, s3://BUCKET/PREFIX.",
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


def _render_from(result: FromGGUFResult) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        types = ", ".join(f"{n} {k}" for k, n in result.tensor_types.items())
        rows = [("source", result.source), ("tensor types", types), ("dtype", result.dtype)]
        if result.dequantized:
            rows.append(("dequantized", ", ".join(f"{n} {k} -> F32" for k, n in result.dequantized.items())))
        rows.append(("tokenizer", result.tokenizer_from or "none"))
        if result.left_out:
            rows.append(("left out", ", ".join(result.left_out)))
        print_rows(console, rows + run_rows(result))

    return render


@with_output
@runs_on_ray
def from_gguf_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="GGUF",
            help="A LLaMA .gguf file, the first part of a split one (NAME-00001-of-0000N.gguf), or the folder "
            "holding it.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        output_option(
            "Output folder (must not be, be in or contain an input folder), or - for a safetensors stream on stdout."
        ),
    ],
    fmt: HFFormatOpt = HFFormat.safetensors,
    shard_size: ShardSizeOpt = "5GB",
    dtype: Annotated[
        str,
        dtype_option(
            DTYPES_OR_KEEP,
            "Output dtype: keep (default) writes each tensor as the file stores it (norms are f32 in any GGUF); "
            "another dtype is one cast per tensor.",
        ),
    ] = "keep",
    dequantize: Annotated[
        bool,
        typer.Option(
            "--dequantize",
            rich_help_panel=OUTPUT,
            help="Write quantized tensors (Q8_0, Q4_K, ...) as float32, their dequantized values; without it a "
            "file holding any is refused.",
        ),
    ] = False,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer",
            metavar="PATH",
            rich_help_panel=INPUTS,
            help="tokenizer.model or a tokenizer folder to carry, checked against the file's vocabulary (a GGUF "
            "holds no tokenizer.model; default: none is written).",
        ),
    ] = None,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    *,
    out: Output,
) -> None:
    """Convert a LLaMA GGUF back to Hugging Face.

    Exact for f32/f16/bf16 files: HF names, q/k rows back to rotate-half, each tensor in its own dtype;
    config.json from the file's metadata.
    """
    from llmkit.convert.from_gguf import FromGGUFOptions, from_gguf

    options = FromGGUFOptions(
        source,
        output,
        dtype=dtype,
        dequantize=dequantize,
        tokenizer=tokenizer,
        **tensor_output(fmt, shard_size, force=force, dry_run=dry_run),
    )
    result = from_gguf(options, progress=out.progress)
    out.show(result, _render_from(result))
