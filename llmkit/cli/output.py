"""The single output sink of every command.

stdout carries results only (a rich rendering, or JSON with ``--json``); stderr carries progress
bars, log lines, warnings and errors. ``--quiet`` silences progress and log lines (results and
errors still print). ``--json`` implies no progress and no logs.

With ``--json`` every outcome is exactly one JSON value on stdout: the result on success; on a failure
the error object of :class:`Failure` (``{"ok": false, "error", "path", "hint", "exit_code"}``), or, for a
check that ran and failed (exit 1), the command's report with those five keys added.

A reader that stops early (``llmkit ... | head``) closes stdout: that is not a failure of the command's
input, so it ends the command quietly with :data:`EXIT_STDOUT_CLOSED` (141 = 128 + SIGPIPE, what a shell
reports for any tool stopped that way), no ``error:`` line; staged outputs are cleaned up as on any failure.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import select
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any, cast

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from llmkit.errors import InputError
from llmkit.pipeline import plan_rows
from llmkit.redact import redact

EXIT_STDOUT_CLOSED = 141  # 128 + SIGPIPE: `yes | head` under `set -o pipefail`
NOTHING_WRITTEN = "all checks passed; nothing was written"  # the last row of a --dry-run


def stdout_closed() -> bool:
    """True if stdout is a pipe (or socket) whose reader has gone away."""
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return False
        poller = select.poll()
        poller.register(fd, 0)  # POLLERR / POLLHUP are always reported: no reader is left
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def is_stdout_closed_error(e: BaseException) -> bool:
    """``e`` is the failed write to a stdout whose reader is gone (not, say, a dropped network connection)."""
    return isinstance(e, OSError) and e.errno == errno.EPIPE and stdout_closed()


def silence_stdout() -> None:
    """Point stdout at /dev/null, so nothing (Python's final flush included) writes to the closed pipe again."""
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError):
        pass


def flush_stdout() -> bool:
    """Flush stdout at the end of a run; False (and stdout silenced) if its reader had gone."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError) as e:
        if isinstance(e, OSError) and e.errno == errno.EPIPE:
            silence_stdout()
            return False
    return True


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


@dataclasses.dataclass
class Failure:
    """Why a command failed: ``error: <path>: <message> (<hint>)`` on stderr, the error object with --json."""

    message: str
    path: str | None = None
    hint: str | None = None
    exit_code: int = 2

    def line(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"error: {text} ({self.hint})" if self.hint else f"error: {text}"

    def to_json(self) -> dict[str, Any]:
        return {"ok": False, "error": self.message, "path": self.path, "hint": self.hint, "exit_code": self.exit_code}


STDOUT_CLOSED = Failure("stdout was closed by its reader", exit_code=EXIT_STDOUT_CLOSED)  # never printed


class _Console(Console):
    """A rich console whose closed pipe ends the command with 141 (rich's own default is exit 1)."""

    def on_broken_pipe(self) -> None:
        silence_stdout()
        raise SystemExit(EXIT_STDOUT_CLOSED)


def write_text(stream: Any, text: str) -> None:
    """All of ``text`` to ``stream``, or an error. (A text stream's ``write`` drops the rest of a large write
    that a signal interrupted part way, e.g. the SIGPIPE of a reader that went away, and reports nothing.)"""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(text)
        stream.flush()
        return
    stream.flush()
    view = memoryview(text.encode(stream.encoding or "utf-8", stream.errors or "strict"))
    while len(view):
        n = buffer.write(view)
        if n is None:  # a non-blocking stream took it all into its buffer
            break
        view = view[n:]
    buffer.flush()


def write_json(data: Any) -> None:
    write_text(sys.stdout, redact(json.dumps(to_jsonable(data), indent=2, ensure_ascii=False)) + "\n")


class RedactingFile:
    """A text stream that passes everything written through :func:`llmkit.redact.redact` (no key or
    token is ever printed); everything else (``isatty``, ``fileno``, ``encoding``) is the stream's."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        write_text(self._stream, redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class Output:
    """Where a command's words go. One per command invocation."""

    def __init__(self, *, json_mode: bool = False, quiet: bool = False, debug: bool = False):
        self.json_mode = json_mode
        self.silent = quiet  # the user's --quiet: no warnings either
        self.quiet = quiet or json_mode
        self.debug = debug
        self.printed_json = False  # a JSON value is on stdout: never print a second one
        self.data_on_stdout = False  # stdout carries data (-o -): the result goes to stderr
        # A RedactingFile is a text stream by delegation (rich only writes to it and asks it what it is).
        self.out = _Console(file=cast(IO[str], RedactingFile(sys.stdout)), soft_wrap=True, highlight=False)
        self.err = Console(file=cast(IO[str], RedactingFile(sys.stderr)), highlight=False, soft_wrap=True)

    def stdout_carries_data(self) -> None:
        """``-o -``: stdout carries the data (a tensor stream), so the result is rendered on stderr (hidden by
        --quiet) and ``--json``, which wants stdout too, is refused (the one error line on stderr only)."""
        if self.json_mode:
            self.json_mode = False  # the refusal goes to stderr: stdout is the data's
            raise InputError("--json prints to stdout, which -o - uses for the data", hint="drop --json or use -o DIR")
        self.data_on_stdout = True

    def log(self, message: str) -> None:
        """An informational line on stderr (hidden by --quiet and --json)."""
        if not self.quiet:
            self.err.print(message, markup=False)

    def warn(self, message: str) -> None:
        """A warning on stderr (hidden only by --quiet)."""
        if not self.silent:
            self.err.print(f"warning: {message}", markup=False, style="yellow")

    def notices(self, result: Any) -> None:
        """A result's notices on stderr: ``info`` as log lines, ``warning`` as warnings (llmkit.pipeline.Notice)."""
        for n in getattr(result, "notices", ()):
            (self.warn if n.level == "warning" else self.log)(n.text)

    def show(self, result: Any, render: Callable[[Console], None]) -> None:
        """A job's ending: its notices on stderr (:meth:`notices`), then the result (:meth:`result`)."""
        self.notices(result)
        self.result(result, render)

    def result(self, data: Any, render: Callable[[Console], None], *, failed: Failure | None = None) -> None:
        """The command's result: JSON on stdout with --json, otherwise ``render`` draws it on stdout.

        ``failed``: the result is the report of a check that did not pass (the caller then exits with
        ``failed.exit_code``); with --json its five error keys are added to the report object.
        """
        if self.data_on_stdout:
            if not self.quiet:
                render(self.err)
        elif self.json_mode:
            payload = to_jsonable(data)
            if failed is not None and isinstance(payload, dict):
                payload = {**payload, **failed.to_json()}
            write_json(payload)
            self.printed_json = True
        else:
            render(self.out)

    def fail(self, failure: Failure) -> None:
        """Report a failure: the one ``error:`` line on stderr, and with --json the error object on stdout
        (unless a result is already there). A closed stdout (:data:`STDOUT_CLOSED`) prints nothing."""
        if failure.exit_code == EXIT_STDOUT_CLOSED:
            silence_stdout()
            return
        if self.json_mode and not self.printed_json:
            self.printed_json = True
            with suppress(OSError):  # stdout is gone (a closed pipe): the stderr line still says what happened
                write_json(failure.to_json())
        self.err.print(failure.line(), markup=False, style="red", soft_wrap=True)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A rich byte progress bar on stderr; yields ``advance(nbytes)``. Silent with --quiet/--json."""
        if self.quiet:
            yield lambda n: None
            return
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.err,
            transient=False,
        )
        with bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)


def run_rows(result: Any) -> list[tuple[str, str]]:
    """The rows every tensor job ends with: its plan (:func:`plan_rows`), then the dry-run line or the time
    and write rate, then one row per check. ``result`` carries ``plan``, ``dry_run``, ``seconds``, ``checks``."""
    from llmkit.units import human_bytes

    rows = plan_rows(result.plan)
    if result.dry_run:
        rows.append(("dry run", NOTHING_WRITTEN))
    else:
        rate = result.plan.output_bytes / result.seconds if result.seconds > 0 else 0.0
        rows.append(("time", f"{result.seconds:.1f} s ({human_bytes(rate)}/s written)"))
    return rows + [(c.name, f"{c.status}: {c.detail}") for c in result.checks]


def print_rows(console: Console, rows: list[tuple[str, str]]) -> None:
    """``label  value`` lines, labels padded to one width."""
    width = max((len(k) for k, _ in rows), default=0)
    for k, v in rows:
        console.print(f"{k:<{width}}  {v}", markup=False)
