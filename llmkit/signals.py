"""Signals the CLI turns into its ordinary clean-up path.

:func:`install_signal_handlers` (called first by ``llmkit.cli.main``): SIGTERM (what ``kill``, ``timeout``,
systemd and container runtimes send) raises :class:`~llmkit.errors.Terminated` in the main thread, a
``KeyboardInterrupt``, so every command cleans up exactly as on Ctrl-C (``finally`` blocks run, staged
outputs and temporary files go) and exits 143 with its one error line (and the JSON error object with
``--json``) instead of dying on the spot.
"""

from __future__ import annotations

import signal
import threading

from llmkit.errors import Terminated


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def install_signal_handlers() -> None:
    """SIGTERM unwinds like Ctrl-C for the rest of this process (main thread only, as Python requires)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def block_late_signals() -> None:
    """Once the command has finished (its output final, its result printed), a Ctrl-C or SIGTERM changes
    nothing: ignore both, so that the exit code stays the command's. (Python's shutdown puts the default
    handler back where it had installed one, which would turn a late signal into a death by signal after
    "ok"; an ignored signal stays ignored.)"""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
