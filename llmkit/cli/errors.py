"""Exceptions -> what the user reads: :data:`ERROR_TABLE` (first match wins, the hf CLI pattern),
:func:`describe_error` and :func:`command_guard`, the one place a command's exception becomes one ``error:``
line on stderr (the error object with ``--json``) and an exit code.

Exit codes: 0 ok; 1 a check failed; 2 bad usage or bad input; 3 internal error; 130 interrupted; 143 terminated;
141 stdout closed by its reader (``| head``), quietly.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

from llmkit.cli.output import STDOUT_CLOSED, Failure, Output, is_stdout_closed_error
from llmkit.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED, LlmkitError, Terminated


def _os_error(e: OSError) -> Failure:
    if is_stdout_closed_error(e):  # `llmkit ... | head`: the reader stopped, nothing is wrong with a path
        return STDOUT_CLOSED
    path = str(e.filename) if getattr(e, "filename", None) else None
    if isinstance(e, FileNotFoundError):
        return Failure("no such file or folder", path, "check the path")
    if isinstance(e, PermissionError):
        return Failure("permission denied", path, "check the file's permissions or choose another path")
    if isinstance(e, IsADirectoryError):
        return Failure("is a folder where a file was expected", path, "pass the file")
    if isinstance(e, NotADirectoryError):
        return Failure("is a file where a folder was expected", path, "pass the folder")
    if e.errno == errno.ENOSPC:
        return Failure("disk full", path, "free some space or choose another output folder")
    return Failure(str(e.strerror or e), path, "check the path and try again")


def _llmkit_error(e: LlmkitError) -> Failure:
    return Failure(e.message, e.path, e.hint, e.exit_code)


# The exception -> Failure (message, path, hint, exit code) table, first match wins (the hf CLI pattern).
ERROR_TABLE: list[tuple[type[BaseException], Callable[[Any], Failure]]] = [
    (LlmkitError, _llmkit_error),
    (Terminated, lambda e: Failure("terminated (SIGTERM); no partial output was kept", exit_code=EXIT_TERMINATED)),
    (KeyboardInterrupt, lambda e: Failure("interrupted; no partial output was kept", exit_code=EXIT_INTERRUPTED)),
    (
        MemoryError,
        lambda e: Failure(
            "out of memory", hint="close other programs, or use a smaller --shard-size", exit_code=EXIT_INTERNAL
        ),
    ),
    (OSError, _os_error),
]


def _download_hint(failure: Failure) -> Failure:
    """A missing input named like a known model (``llmkit to-ckpt techgpt-2.0-atom``, the model not downloaded yet)
    gets the download command as its hint. Every "no such file" (folder, adapter folder, key file) of every command passes here."""
    if not failure.path or not failure.message.startswith("no such ") or os.path.lexists(failure.path):
        return failure
    from llmkit.registry import model_for_path

    model = model_for_path(failure.path)
    if model is None:
        return failure
    if model.repo_id is None:
        hint = f"{model.name} is a known model that is not on the hub; llmkit models says where it comes from"
    else:
        into = "" if failure.path.rstrip("/") in (model.name, f"./{model.name}") else f" -o {failure.path}"
        hint = f"a known model's name: download it first with llmkit download {model.name}{into}"
    return Failure(failure.message, failure.path, hint, failure.exit_code)


def _stop_inside(e: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM that ``e`` wraps, if any. Python 3.11 turns an exception raised while a class
    is made (a dataclass of a module imported mid-run, in ``__set_name__``) into a RuntimeError caused by it:
    the run was still stopped by a signal, not by a bug. So is an error raised by the clean-up that the
    signal started (its ``__context__``: e.g. a file the unwinding closed under a thread still writing)."""
    seen: set[int] = set()
    while id(e) not in seen:
        seen.add(id(e))
        nxt = e.__cause__ or e.__context__
        if nxt is None:
            return None
        e = nxt
        if isinstance(e, (KeyboardInterrupt, Terminated)):
            return e
    return None


def describe_error(e: BaseException) -> Failure:
    e = _stop_inside(e) or e
    for kind, explain in ERROR_TABLE:
        if isinstance(e, kind):
            return _download_hint(explain(e))
    return Failure(
        f"internal error: {type(e).__name__}: {e}",
        hint="rerun with --debug and report the traceback",
        exit_code=EXIT_INTERNAL,
    )


@contextmanager
def command_guard(out: Output) -> Iterator[None]:
    """Run a command body: any exception becomes one line on stderr (and the error object with --json)
    and an exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except BaseException as e:
        if isinstance(e, (SystemExit, GeneratorExit)):
            raise
        failure = describe_error(e)
        if out.debug:
            from llmkit.redact import redact

            sys.stderr.write(redact(traceback.format_exc()))
        out.fail(failure)
        raise typer.Exit(failure.exit_code) from None
