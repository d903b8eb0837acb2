"""The ``llmkit`` executable: signals handled before anything heavy is imported.

Ctrl-C or SIGTERM while Typer, rich and the commands load (the first tenths of a second) would otherwise
print a Python traceback; here it is the same one error line (and JSON error object with ``--json``) and
exit code (130, SIGTERM 143) as anywhere else. Once the command has finished, late signals are ignored
so the exit code stays the command's.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

from llmkit.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated
from llmkit.signals import block_late_signals, install_signal_handlers


def _interrupted(e: KeyboardInterrupt) -> int:
    """Report an interrupt that came before any command could (while loading): nothing was written."""
    code = EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    what = "terminated (SIGTERM)" if code == EXIT_TERMINATED else "interrupted"
    message = f"{what} before the command started; nothing was written"
    if "--json" in sys.argv[1:]:
        print(json.dumps({"ok": False, "error": message, "path": None, "hint": None, "exit_code": code}, indent=2))
    print(f"error: {message}", file=sys.stderr)
    return code


def _exit_now(code: int) -> None:
    """End an interrupted run with ``code`` now: the command has cleaned up and said so; the interpreter's
    shutdown could still re-deliver the interrupt as a death by SIGINT (exit -2 instead of 130)."""
    block_late_signals()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def main() -> None:
    install_signal_handlers()
    try:
        from llmkit.cli import app
        from llmkit.cli.output import STDOUT_CLOSED, flush_stdout

        try:
            app()
        except SystemExit as e:
            if not flush_stdout() and not e.code:  # the last bytes of a result met a closed pipe
                raise SystemExit(STDOUT_CLOSED.exit_code) from None
            if e.code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
                _exit_now(int(e.code))
            raise
    except KeyboardInterrupt as e:
        block_late_signals()
        sys.exit(_interrupted(e))
    finally:
        block_late_signals()
