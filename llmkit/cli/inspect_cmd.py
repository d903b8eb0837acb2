"""``llmkit inspect PATH``: what a model or adapter holds, from headers only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from llmkit.cli.helptext import OUTPUT, examples
from llmkit.cli.keys import DecKeyOpt, DecModeOpt, mode_value
from llmkit.cli.options import reads_remote, with_output
from llmkit.cli.output import Failure, Output, print_rows
from llmkit.errors import EXIT_CHECK_FAILED
from llmkit.units import human_bytes

if TYPE_CHECKING:  # llmkit.summary (torch) is imported when the command runs, not at CLI start-up
    from llmkit.summary import ModelSummary

INSPECT_EXAMPLES = examples(
    "# a model folder: format, tensors, parameters, config",
    "llmkit inspect zhixi-13b-diff",
    "# a LoRA adapter's settings as JSON",
    "llmkit inspect chinese-alpaca-lora-7b --json --no-tensors",
    "# one Meta shard, or an encrypted .ckpt (the key as hex in $MS_KEY)",
    "llmkit inspect LLaMA/13B/consolidated.00.pth --no-tensors",
    "llmkit inspect atom.enc.ckpt --dec-key env:MS_KEY",
)


def _gguf_rows(s: ModelSummary) -> list[tuple[str, str]]:
    """A GGUF file's facts: its metadata's architecture, name, file type, quantized tensors, context length."""
    g = s.gguf
    if g is None:
        return []
    ftype = g.file_type_name or "not stated"
    if g.file_type is not None:
        ftype += f" ({g.file_type}" + (f"; to-gguf --outtype {g.outtype})" if g.outtype else ")")
    parts = f", {g.parts} parts" if g.parts > 1 else ""
    rows = [("gguf", f"version {g.version}, architecture {g.architecture}{parts}")]
    if g.name:
        rows.append(("model name", g.name))
    rows.append(("file type", ftype))
    if g.quantized:  # the types are the dtypes row's
        n, types = sum(g.quantized.values()), ", ".join(g.quantized)
        rows.append(("quantized", f"{n} tensors ({types}), read as their dequantized float32 values"))
    if g.context_length is not None:
        rows.append(("context length", str(g.context_length)))
    return rows


def _render(s: ModelSummary, show_tensors: bool) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        rows = [
            ("path", s.path),
            ("kind", s.kind),
            ("layout", s.layout + (f" (encrypted, {s.encryption})" if s.encryption else "")),
            ("files", str(len(s.files))),
            ("tensors", str(s.tensor_count)),
            ("parameters", f"{s.parameters:,}"),
            ("size", f"{human_bytes(s.total_bytes)} ({s.total_bytes:,} bytes)"),
            ("dtypes", ", ".join(f"{k} x{v}" for k, v in s.dtypes.items())),
        ]
        rows += _gguf_rows(s)
        if s.architecture:
            rows.append(("architecture", s.architecture))
        if s.num_layers is not None:
            rows.append(("layers", str(s.num_layers)))
        if s.hidden_size is not None:
            rows.append(("hidden size", str(s.hidden_size)))
        if s.vocab_size is not None:
            rows.append(("vocab size", str(s.vocab_size)))
        if s.adapter is not None:
            a = s.adapter
            rows += [
                ("lora r", str(a.r)),
                ("lora alpha", f"{a.lora_alpha:g}"),
                ("target modules", ", ".join(a.target_modules) or "-"),
                ("modules to save", ", ".join(a.modules_to_save) or "-"),
                ("fan_in_fan_out", str(a.fan_in_fan_out).lower()),
                ("use_rslora", str(a.use_rslora).lower()),
            ]
            if a.base_model:
                rows.append(("base model", a.base_model))
        print_rows(console, rows)
        if show_tensors:
            table = Table(box=None, pad_edge=False, show_edge=False)
            for col in ("name", "dtype", "shape", "bytes"):
                table.add_column(col, justify="right" if col == "bytes" else "left")
            for t in s.tensors:
                table.add_row(t.name, t.dtype, "x".join(map(str, t.shape)) or "scalar", f"{t.nbytes:,}")
            console.print()
            console.print(table)

    return render


@with_output
@reads_remote
def inspect_command(
    path: Annotated[
        Path,
        typer.Argument(
            metavar="PATH",
            help="A model or adapter folder, a weight file, a shard index, or - for a stream on stdin; or a URL: hf://OWNER/NAME, s3://BUCKET/PREFIX.",
        ),
    ],
    tensors: Annotated[
        bool, typer.Option("--tensors/--no-tensors", rich_help_panel=OUTPUT, help="List every tensor.")
    ] = True,
    dec_key: DecKeyOpt = None,
    dec_mode: DecModeOpt = None,
    *,
    out: Output,
) -> None:
    """Show what a model or adapter holds (headers only).

    Format, tensors, parameter count, size, architecture, vocab and LoRA settings; no tensor data is read.
    A LLaMA lacking a weight of its config (or holding one twice, or a damaged name of one) is described
    with a warning, and the exit code is 1.
    """
    from llmkit.summary import InspectOptions, inspect_model  # imported here: torch loads only when needed

    summary = inspect_model(InspectOptions(path, dec_key=dec_key, dec_mode=mode_value(dec_mode)))
    out.notices(summary)
    failed = next((Failure(c.detail, exit_code=EXIT_CHECK_FAILED) for c in summary.checks if c.status != "ok"), None)
    out.result(summary, _render(summary, tensors), failed=failed)
    if failed is not None:  # an incomplete model is described, and is not a success
        raise typer.Exit(EXIT_CHECK_FAILED)
