"""The hook through which :func:`llmkit.pipeline.run_plan` runs a plan as one stage of a chain (``llmkit.chain``).

A leaf module: the protocol the chain implements and the context variable that holds the running chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from llmkit.pipeline import Plan, PlanReport, RunOptions


class ChainHook(Protocol):
    """What :func:`run_plan` asks a running chain (``llmkit.chain``): the last stage's plan takes on the
    chain's inputs and judgements (``absorb``); an inner stage's plan is handed over (``capture``)."""

    @property
    def at_last(self) -> bool: ...

    def capture(self, plan: Plan, options: RunOptions, result_for: Callable[[PlanReport, Any], Any]) -> Any: ...

    def absorb(self, plan: Plan) -> None: ...

    @property
    def entry(self) -> tuple[str, Any] | None:
        """(job, options) that run the whole chain again (``llmkit.cluster.jobs``), or None: a Ray task
        rebuilds the chain from it."""
        ...

    def inner_parts(self) -> list[dict[str, list[object]]]:
        """In a Ray task: each inner stage's split-tap parts, filled as its tensors are computed."""
        ...

    def take_inner_parts(self, plan: Plan, order: list[str], parts: list[dict[str, list[object]]]) -> None:
        """On the driver: each inner stage's split taps take the pieces' parts in the one-process order."""
        ...


_CHAIN: ContextVar[ChainHook | None] = ContextVar("llmkit_chain", default=None)


@contextmanager
def chain_hook(chain: ChainHook) -> Iterator[None]:
    """Within the block, :func:`run_plan` runs plans as stages of ``chain``."""
    token = _CHAIN.set(chain)
    try:
        yield
    finally:
        _CHAIN.reset(token)


def current_chain() -> ChainHook | None:
    """The chain whose stage is running now, or None (a job on its own)."""
    return _CHAIN.get()
