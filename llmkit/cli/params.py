"""Options several commands share, checked while the command line is parsed, so that a bad value is one
``error: --flag: ...`` line before any work: ``--dtype`` (every spelling of :mod:`llmkit.io.core.dtypes`),
``--shard-size`` (:func:`llmkit.units.parse_size`), ``--jobs``. Nothing here imports torch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import typer

from llmkit.cli.helptext import OUTPUT, PERFORMANCE
from llmkit.errors import InputError
from llmkit.io.core.dtypes import DTYPE_SPELLINGS, canonical_dtype
from llmkit.units import SIZE_EXAMPLES, parse_size


def _bad(e: InputError) -> typer.BadParameter:
    return typer.BadParameter(f"{e.message}; {e.hint}" if e.hint else e.message)


def _dtype_check(choices: Sequence[str]) -> Callable[[str | None], str | None]:
    def check(value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return canonical_dtype(value, choices)
        except InputError as e:
            raise _bad(e) from None

    return check


def dtype_option(choices: Sequence[str], help: str, **kwargs: Any) -> Any:
    """``--dtype`` taking ``choices`` (llmkit's names) or any other spelling of them (``float16``, ``f16``,
    ``half``, ``bfloat16``, ...); the command receives llmkit's name (``fp16``)."""
    others = [s for c in choices for s in DTYPE_SPELLINGS.get(c, ())]
    words = (*choices, *others)
    return typer.Option(
        "--dtype",
        metavar="|".join(choices),
        callback=_dtype_check(tuple(choices)),
        autocompletion=lambda incomplete: [w for w in words if w.startswith(incomplete.lower())],
        rich_help_panel=OUTPUT,
        help=f"{help} Also accepted: {', '.join(others)}.",
        **kwargs,
    )


def _size_check(value: str | None) -> str | None:
    if value is not None:
        try:
            parse_size(value)
        except InputError as e:
            raise _bad(e) from None
    return value


SIZE_HELP = f"e.g. {SIZE_EXAMPLES}; G and GB are 10^9 bytes (as transformers and llama.cpp), GiB 2^30"


def shard_size_option(help: str = "Largest output shard", **kwargs: Any) -> Any:
    """``--shard-size SIZE``, checked by :func:`parse_size` while parsing; the command still gets the text."""
    return typer.Option(
        "--shard-size",
        metavar="SIZE",
        callback=_size_check,
        rich_help_panel=OUTPUT,
        help=f"{help}: {SIZE_HELP}.",
        **kwargs,
    )


def jobs_option(help: str, **kwargs: Any) -> Any:
    """``--jobs N`` / ``-j N``."""
    return typer.Option("--jobs", "-j", metavar="N", rich_help_panel=PERFORMANCE, help=help, **kwargs)


def choice_metavar(enum: Any) -> str:
    """``safetensors|bin`` for an Enum of choices (Typer's own placeholder reads ``<safetensors|bin>``)."""
    return "|".join(str(member.value) for member in enum)
