"""``llmkit demo``: run the whole lifecycle on a generated tiny model, offline, in under a minute."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from llmkit.cli.helptext import OUTPUT, examples
from llmkit.cli.options import force_option, with_output
from llmkit.cli.output import Failure, Output
from llmkit.errors import EXIT_CHECK_FAILED, OutputExistsError

if TYPE_CHECKING:  # llmkit.demo (torch) is imported when the command runs, not at CLI start-up
    from llmkit.demo import DemoResult, DemoStep

DEMO_EXAMPLES = examples(
    "# every step on a tiny generated model, offline, in a temporary folder",
    "llmkit demo",
    "# keep the files to look at them",
    "llmkit demo --keep --workdir llmkit-demo",
)


def _render(result: DemoResult, keep: bool) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        width = max((len(s.name) for s in result.steps), default=4)
        console.print(f"{'step':<{width}}  result  seconds  detail", markup=False)
        for s in result.steps:
            console.print(
                f"{s.name:<{width}}  {'ok' if s.ok else 'FAILED':<6}  {s.seconds:>7.2f}  {s.detail}",
                markup=False,
                soft_wrap=True,
            )
        total = sum(s.seconds for s in result.steps)
        console.print(f"{'total':<{width}}  {'ok' if result.ok else 'FAILED':<6}  {total:>7.2f}", markup=False)
        if keep:
            console.print(f"files kept in {result.workdir}", markup=False)

    return render


def _remove_made(folder: Path, had: set[Path] | None) -> None:
    """Delete what the demo made: the whole folder if it was new or empty, else only the entries it added."""
    if not had:
        shutil.rmtree(folder, ignore_errors=True)
        return
    for entry in set(folder.iterdir()) - had:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@with_output
def demo_command(
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            metavar="DIR",
            rich_help_panel=OUTPUT,
            help="Folder to work in (default: a new temporary folder).",
        ),
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", rich_help_panel=OUTPUT, help="Keep the generated files instead of deleting them.")
    ] = False,
    force: Annotated[
        bool,
        force_option(
            "Run in a --workdir that is not empty: the demo's files of an earlier run are replaced, other files left alone."
        ),
    ] = False,
    *,
    out: Output,
) -> None:
    """Run every step on a generated tiny LLaMA.

    Each step's result is checked against an independent reference; offline, in under a minute.
    """
    if workdir is not None and workdir.exists() and any(workdir.iterdir()) and not force:
        raise OutputExistsError(
            "demo folder is not empty", path=workdir, hint="choose an empty --workdir or pass --force"
        )
    folder = workdir or Path(tempfile.mkdtemp(prefix="llmkit-demo-"))
    had = set(folder.iterdir()) if folder.is_dir() else None  # what the demo must not delete

    from llmkit.demo import run_demo  # imported here: torch loads only when a command needs it

    def on_step(step: DemoStep) -> None:
        out.log(f"{'ok' if step.ok else 'FAILED':>6}  {step.name} ({step.seconds:.2f} s)")

    try:
        result = run_demo(folder, force=force, on_step=on_step)
    finally:
        if not keep:
            _remove_made(folder, had)
    failed = None
    if not result.ok:
        names = ", ".join(step.name for step in result.steps if not step.ok) or "a step"
        failed = Failure(f"demo failed: {names} did not pass", exit_code=EXIT_CHECK_FAILED)
    out.result(result, _render(result, keep), failed=failed)
    if not result.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)
