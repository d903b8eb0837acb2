"""How a command's ``--help`` reads: a usage line with plain placeholders (``PATH``, ``[PATH]...``), the
arguments, the options in panels (:data:`PANELS`, each option's ``rich_help_panel``; the options every
command shares last, under ``Options``), and an ``Examples`` section from the command's ``epilog``.

The help stays plain text (the app's ``rich_markup_mode=None``), so these are Typer's public hooks only:
a :class:`typer.Typer` whose ``command()`` defaults to :class:`LlmkitCommand`, and click's formatting
methods (``collect_usage_pieces``, ``format_options``, ``format_epilog``) on a ``TyperCommand`` subclass.

    @app.command("recover", rich_help_panel="Rebuild", epilog=examples(
        "# ZhiXi-13B from LLaMA-13B in Hugging Face form",
        "llmkit recover --base llama-13b-hf --diff zhixi-13b-diff -o zhixi-13b"))
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand

# The option panels, in the order --help shows them; options without a panel (--json, --quiet, --debug,
# --help) come last, under "Options".
INPUTS, OUTPUT, CHECKS, PERFORMANCE = "Inputs", "Output", "Checks", "Performance"
PANELS = (INPUTS, OUTPUT, CHECKS, PERFORMANCE)
GENERAL = "Options"


def examples(*lines: str) -> str:
    """A command's ``epilog``: example command lines, each optionally after a ``# what it does`` line."""
    return "\n".join(lines)


def format_examples(epilog: str | None, formatter: Any) -> None:
    """The ``Examples`` section: the epilog's lines as written (never re-wrapped, so each stays one line)."""
    if not epilog:
        return
    with formatter.section("Examples"):
        for line in epilog.strip().splitlines():
            formatter.write(f"{'':>{formatter.current_indent}}{line.strip()}\n" if line.strip() else "\n")


def placeholder(param: Any) -> str:
    """An argument's name in help: its metavar (``PATH``), else its name in capitals."""
    return str(getattr(param, "metavar", None) or param.name.upper()).removesuffix("...")


def argument_usage(param: Any) -> str:
    """``PATH`` (required), ``[PATH]`` (optional), ``PATH...`` / ``[PATH]...`` (several)."""
    name = placeholder(param)
    name = name if param.required else f"[{name}]"
    return name + ("..." if param.nargs != 1 else "")


def _panel_order(title: str) -> int:
    return PANELS.index(title) if title in PANELS else len(PANELS) + (title == GENERAL)


class LlmkitCommand(TyperCommand):
    """A command whose help has plain placeholders, option panels and an Examples section."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(argument_usage(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments: list[tuple[str, str]] = []
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append((placeholder(param) + ("..." if param.nargs != 1 else ""), record[1]))
            else:
                panels.setdefault(getattr(param, "rich_help_panel", None) or GENERAL, []).append(record)
        if arguments:
            with formatter.section("Arguments"):
                formatter.write_dl(arguments)
        for title in sorted(panels, key=_panel_order):
            with formatter.section(title):
                formatter.write_dl(panels[title])

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        format_examples(self.epilog, formatter)


class LlmkitTyper(typer.Typer):
    """A Typer app whose commands are :class:`LlmkitCommand` unless a command asks for another class."""

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(name, cls=cls or LlmkitCommand, **kwargs)
