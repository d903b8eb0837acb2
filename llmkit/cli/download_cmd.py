"""``llmkit download``: a registry model (or any repo) through the hub or a mirror, content-verified."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from llmkit.cli.helptext import CHECKS, INPUTS, examples
from llmkit.cli.options import ForceOpt, dry_run_option, endpoint_option, jobs_option, output_option, with_output
from llmkit.cli.output import Output
from llmkit.units import human_bytes

if TYPE_CHECKING:  # llmkit.hub (huggingface_hub) is imported when the command runs, not at CLI start-up
    from llmkit.hub import DownloadResult

DOWNLOAD_EXAMPLES = examples(
    "# a known model: its repo, folder (./zhixi-13b-diff) and published table",
    "llmkit download zhixi-13b-diff",
    "# what would be downloaded, and the free disk",
    "llmkit download techgpt-7b --dry-run",
    "# any repo, only some files, through a mirror",
    "llmkit download neukg/TechGPT-2.0-atom-hf --include '*.json' --endpoint https://hf-mirror.com",
)


def _glob_option(flag: str, help: str) -> Any:
    return typer.Option(flag, metavar="GLOB", rich_help_panel=INPUTS, help=help)


def _render(result: DownloadResult) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        for f in result.files:
            how = f" ({f.verified})" if f.verified else ""
            console.print(f"{f.status:<15} {f.path}  {human_bytes(f.size)}{how}", markup=False)
        verb = "would download" if result.dry_run else "downloaded"
        moved = sum(f.size for f in result.files if f.status == verb)
        console.print(
            f"{result.repo}@{result.revision[:12]} -> {result.output}: {len(result.files)} file(s), "
            f"{human_bytes(result.total_bytes)}; {verb} {human_bytes(moved)} in {result.seconds:.1f} s",
            markup=False,
        )
        if result.dry_run:
            console.print(f"free disk: {human_bytes(result.free_disk_bytes)}; nothing was written", markup=False)
        elif result.next_step:
            console.print(f"next: {result.next_step}", markup=False)

    return render


@with_output
def download_command(
    model: Annotated[
        str,
        typer.Argument(
            help="A model name from 'llmkit models' (picks the repo, the folder and "
            "the published checksum table) or any owner/name repo id.",
            show_default=False,
            metavar="MODEL",
        ),
    ],
    output: Annotated[Path | None, output_option("Output folder (default: ./<model name>).")] = None,
    include: Annotated[
        list[str] | None,
        _glob_option(
            "--include",
            "Only files matching this glob (repeatable), as hf download reads it: case-sensitive, '*' crosses "
            "'/', 'dir/' is the whole folder. A pattern that matches no file is an error.",
        ),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        _glob_option("--exclude", "Skip files matching this glob (repeatable; the same rules as --include)."),
    ] = None,
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision", metavar="REV", rich_help_panel=INPUTS, help="Branch, tag or commit (default: main)."
        ),
    ] = None,
    endpoint: Annotated[
        str | None,
        endpoint_option(
            "Hub or mirror URL (default: HF_ENDPOINT, else huggingface.co). Tokens come from "
            "HF_TOKEN or 'hf auth login', never from the command line."
        ),
    ] = None,
    jobs: Annotated[
        int,
        jobs_option(
            "Files downloaded in parallel. Default 4: each file is one connection, so a "
            "few at once fill the line; more rarely helps and can be throttled by the "
            "hub.",
            min=1,
            max=16,
        ),
    ] = 4,
    dry_run: Annotated[bool, dry_run_option("List the files, sizes and free disk; write nothing.")] = False,
    no_verify: Annotated[
        bool,
        typer.Option(
            "--no-verify",
            rich_help_panel=CHECKS,
            help="Check sizes only (files present with the right size are skipped).",
        ),
    ] = False,
    force: ForceOpt = False,
    *,
    out: Output,
) -> None:
    """Download a model through the hub or a mirror.

    Every file is verified by content; files already there and verified are skipped.
    """
    from llmkit.hub import DownloadOptions, download

    options = DownloadOptions(
        model,
        output,
        include=tuple(include or ()),
        exclude=tuple(exclude or ()),
        revision=revision,
        endpoint=endpoint,
        jobs=jobs,
        dry_run=dry_run,
        verify=not no_verify,
        force=force,
    )
    result = download(options, progress=out.progress)
    out.show(result, _render(result))
