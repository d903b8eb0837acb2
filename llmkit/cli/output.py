"""The single output sink of every command.

stdout carries results only (a rich rendering, or JSON with ``--json``); stderr carries progress
bars, log lines, warnings and errors. ``--quiet`` silences progress and log lines (results and
errors still print). ``--json`` implies no progress and no logs.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, torch dtypes and tuples -> plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


class Output:
    """Where a command's words go. One per command invocation."""

    def __init__(self, *, json_mode: bool = False, quiet: bool = False, debug: bool = False):
        self.json_mode = json_mode
        self.silent = quiet  # the user's --quiet: no warnings either
        self.quiet = quiet or json_mode
        self.debug = debug
        self.out = Console(file=sys.stdout, soft_wrap=True, highlight=False)
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)

    def log(self, message: str) -> None:
        """An informational line on stderr (hidden by --quiet and --json)."""
        if not self.quiet:
            self.err.print(message, markup=False)

    def warn(self, message: str) -> None:
        """A warning on stderr (hidden only by --quiet)."""
        if not self.silent:
            self.err.print(f"warning: {message}", markup=False, style="yellow")

    def result(self, data: Any, render: Callable[[Console], None]) -> None:
        """The command's result: JSON on stdout with --json, otherwise ``render`` draws it on stdout."""
        if self.json_mode:
            sys.stdout.write(json.dumps(to_jsonable(data), indent=2, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            render(self.out)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A rich byte progress bar on stderr; yields ``advance(nbytes)``. Silent with --quiet/--json."""
        if self.quiet:
            yield lambda n: None
            return
        bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn(), console=self.err, transient=False)
        with bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)
