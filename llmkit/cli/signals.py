"""Signals a command turns into its ordinary clean-up path.

``terminate_as_interrupt()``: while the block runs, SIGTERM (what ``kill``, ``timeout``, systemd and container
runtimes send) raises :class:`Terminated` in the main thread, a ``KeyboardInterrupt``, so the command cleans
up exactly as on Ctrl-C (``finally`` blocks run, temporary files go, exit 130) instead of dying on the spot.
Outside the block, and in any thread other than the main one, SIGTERM keeps the handler it had.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM received: handled like Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (a ``KeyboardInterrupt``) in the main thread while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
