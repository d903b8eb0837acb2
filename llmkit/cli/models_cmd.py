"""``llmkit models``: the models and published checksum tables llmkit knows."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from llmkit.cli.helptext import OUTPUT, examples
from llmkit.cli.options import with_output
from llmkit.cli.output import Output

if TYPE_CHECKING:  # the registry is read when the command runs
    from llmkit.registry import ModelsListing

MODELS_EXAMPLES = examples(
    "llmkit models",
    "# every file and digest of each published table",
    "llmkit models --files",
    "llmkit models --json",
)


def _render(listing: ModelsListing, show_files: bool) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        rows = [("name", "kind", "hub repo", "dtype", "vocab")]
        rows += [
            (
                m["name"],
                m["kind"],
                m["repo_id"] or "-",
                m["dtype"] or "-",
                str(m["vocab_size"]) if m["vocab_size"] else "-",
            )
            for m in listing.models
        ]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:  # plain columns: never truncated, whatever the terminal width
            console.print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), markup=False)
        console.print()
        for m in listing.models:
            if m["tables"] or m["needs"]:
                tables = ", ".join(f"{stage}: {name}" for stage, name in m["tables"].items()) or "-"
                console.print(f"{m['name']}: tables {tables}; needs {m['needs'] or '-'}", markup=False)
        console.print()
        console.print("checksum tables (llmkit verify --table NAME):", markup=False)
        for tab in listing.tables:
            console.print(f"  {tab.name:<22} {tab.algorithm:<6} {len(tab.files)} files  {tab.file}", markup=False)
            if show_files:
                for f in tab.files:
                    console.print(f"      {f['digest']}  {f['path']}", markup=False)

    return render


@with_output
def models_command(
    files: Annotated[
        bool, typer.Option("--files", rich_help_panel=OUTPUT, help="Also list every file and digest of each table.")
    ] = False,
    *,
    out: Output,
) -> None:
    """List the known models and published checksum tables.

    Per model: hub repo, dtype, vocab size and what it needs.
    """
    from llmkit.registry import list_models

    listing = list_models()
    out.result(listing, _render(listing, files))
