"""``llmkit merge-lora --base BASE --lora ADAPTER [--lora ...] -o OUT``: peft LoRA adapters -> a plain model."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from llmkit.cli.helptext import INPUTS, OUTPUT, examples
from llmkit.cli.options import (
    DTYPES_OR_KEEP,
    ForceOpt,
    JobOutTypeOpt,
    SplitMaxSizeOpt,
    choice_option,
    dry_run_option,
    dtype_option,
    gguf_output,
    output_option,
    reads_remote,
    runs_on_ray,
    shard_size_option,
    with_output,
)
from llmkit.cli.output import Output, plan_rows
from llmkit.units import human_bytes, parse_size

if TYPE_CHECKING:  # llmkit.lora (torch) is imported when the command runs, not at CLI start-up
    from llmkit.lora import MergeResult

MERGE_LORA_EXAMPLES = examples(
    "# CuteGPT-13B-ift: the LoRA into its base",
    "llmkit merge-lora --base kw-cutegpt-13b-base --lora kw-cutegpt-13b-ift-lora -o cutegpt-13b-ift",
    "# Chinese-Alpaca-Plus-7B: two adapters in order, the checks and plan first",
    "llmkit merge-lora --base llama-7b-hf --lora chinese-llama-plus-lora-7b --lora chinese-alpaca-plus-lora-7b "
    "-o chinese-alpaca-plus-7b --dry-run",
    "# Meta .pth for llama.cpp, in fp16",
    "llmkit merge-lora --base llama-7b-hf --lora chinese-alpaca-lora-7b -o chinese-alpaca-7b-pth --format pth "
    "--dtype float16",
)


class FormatChoice(str, Enum):
    safetensors = "safetensors"
    bin = "bin"
    pth = "pth"
    gguf = "gguf"


def _render(r: MergeResult) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        p = lambda text: console.print(text, markup=False)  # noqa: E731
        p(f"base        {r.base}")
        for i, a in enumerate(r.adapters, 1):
            extra = []
            if a.replaced:
                extra.append(f"replaces {', '.join(a.replaced)}")
            if a.tokenizer_size is not None:
                extra.append(f"tokenizer {a.tokenizer_size}")
            if a.fan_in_fan_out:
                extra.append("fan_in_fan_out")
            p(
                f"lora {i:<6} {a.path}  (r={a.r}, alpha={a.lora_alpha:g}, scaling={a.scaling:g}"
                f"{', rslora' if a.use_rslora else ''}; {a.lora_modules} module{'' if a.lora_modules == 1 else 's'}"
                + (f"; {'; '.join(extra)}" if extra else "")
                + ")"
            )
        if r.vocab_before is not None:
            change = f"{r.vocab_before} -> {r.vocab_after}" if r.vocab_after != r.vocab_before else str(r.vocab_after)
            p(f"vocabulary  {change}")
        for name, rows in r.mean_initialised_rows.items():
            p(f"mean rows   {name}: {rows} new row(s) set to the mean of the existing rows")
        p(f"tokenizer   {r.tokenizer_from or '-'}")
        p(f"output      {r.output}  ({r.format}, dtype {r.dtype}, {r.tensors} tensors, {human_bytes(r.total_bytes)})")
        if r.dry_run:
            for key, value in plan_rows(r.plan):  # the rows every --dry-run shows (the output line is above)
                if key != "output":
                    p(f"{key:<11} {value}")
            p("dry run     nothing written")
        else:
            p(f"files       {', '.join(r.files) or '- (a stream on stdout)'}")
            p(f"time        {r.seconds:.2f} s")

    return render


@with_output
@reads_remote
@runs_on_ray
def merge_lora_command(
    base: Annotated[
        Path,
        typer.Option(
            "--base",
            metavar="PATH",
            rich_help_panel=INPUTS,
            help="The base model folder (Hugging Face layout: safetensors or .bin, sharded or not), or - for a "
            "stream on stdin (llmkit ... -o - | llmkit merge-lora --base - ...), or a URL: hf://OWNER/NAME, "
            "s3://BUCKET/PREFIX.",
        ),
    ],
    lora: Annotated[
        list[Path],
        typer.Option(
            "--lora",
            metavar="ADAPTER",
            rich_help_panel=INPUTS,
            help="A local peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors/.bin). Repeat it "
            "to apply several adapters in order, e.g. Chinese-LLaMA-Plus then Chinese-Alpaca-Plus.",
        ),
    ],
    output: Annotated[
        Path, output_option("Output folder for the merged model, or - for a safetensors stream on stdout.")
    ],
    dtype: Annotated[
        str,
        dtype_option(DTYPES_OR_KEEP, "Output dtype; the merge is done in it (keep: each tensor's own dtype)."),
    ] = "keep",
    fmt: Annotated[
        FormatChoice,
        choice_option(
            "--format",
            FormatChoice,
            "safetensors or bin (Hugging Face shards), pth (Meta consolidated.NN.pth + params.json, q/k in "
            "Meta's rotary layout), or gguf (-o is one .gguf file for llama.cpp / ollama).",
        ),
    ] = FormatChoice.safetensors,
    shard_size: Annotated[str | None, shard_size_option("Largest shard for safetensors/bin (default 5GB)")] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer",
            metavar="DIR",
            rich_help_panel=INPUTS,
            help="Tokenizer folder for the output (default: the last adapter that has one, else the base's).",
        ),
    ] = None,
    pth_shards: Annotated[
        int | None,
        typer.Option(
            "--pth-shards",
            min=1,
            metavar="N",
            rich_help_panel=OUTPUT,
            help="Number of consolidated.NN.pth files (default: Meta's, by hidden size: 7B 1, 13B 2, 33B 4, 65B 8).",
        ),
    ] = None,
    outtype: JobOutTypeOpt = None,
    split_max_size: SplitMaxSizeOpt = None,
    dry_run: Annotated[bool, dry_run_option("Run every check and show the plan; write nothing.")] = False,
    force: ForceOpt = False,
    *,
    out: Output,
) -> None:
    """Merge peft LoRA adapters into a base model.

    ZhiXi, CuteGPT, Chinese-LLaMA/Alpaca (Plus): one adapter or several in order, streamed.
    """
    from llmkit.lora import MergeOptions, run  # imported here: torch loads only when a command runs

    options = MergeOptions(
        base,
        tuple(lora),
        output,
        dtype=dtype,
        fmt=fmt.value,
        shard_size=parse_size(shard_size) if shard_size else None,
        tokenizer=tokenizer,
        pth_shards=pth_shards,
        **gguf_output(outtype, split_max_size),
        dry_run=dry_run,
        force=force,
    )
    result = run(options, progress=out.progress, on_plan=out.notices)  # notices print before the work
    out.result(result, _render(result))
