"""The ``llmkit`` command line: the Typer app and its commands, registered here explicitly.

Each command is a function in a ``*_cmd`` module: it takes its options (:mod:`llmkit.cli.options`), validates
them, makes one library call and hands the result to ``out`` (:class:`~llmkit.cli.output.Output`, given by
:func:`~llmkit.cli.options.with_output` with ``--json``/``--quiet``/``--debug``, the body run inside
:func:`~llmkit.cli.errors.command_guard`). The command modules do not know :data:`app`: the list below is
the whole command line, by the lifecycle stage ``llmkit --help`` shows each under (``usage.STAGES``).

Exit codes: 0 ok; 1 a check failed; 2 bad usage or bad input; 3 internal error; 130 interrupted; 143 terminated;
141 stdout closed by its reader (``| head``), quietly.
Every failure is one ``error:`` line on stderr and, with ``--json``, one JSON object on stdout
(:class:`~llmkit.cli.output.Failure`, :data:`~llmkit.cli.errors.ERROR_TABLE`); usage errors (bad flags) are
handled by :class:`~llmkit.cli.usage.LlmkitGroup`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from llmkit import __version__
from llmkit.cli import (
    ckpt_cmd,
    convert_cmd,
    crypto_cmd,
    demo_cmd,
    download_cmd,
    gguf_cmd,
    inspect_cmd,
    merge_lora_cmd,
    models_cmd,
    recipe_cmd,
    recover_cmd,
    verify_cmd,
)
from llmkit.cli.errors import ERROR_TABLE, command_guard, describe_error
from llmkit.cli.helptext import LlmkitTyper, examples
from llmkit.cli.usage import LlmkitGroup

__all__ = ["ERROR_TABLE", "app", "command_guard", "describe_error", "main"]

app = LlmkitTyper(
    name="llmkit",
    cls=LlmkitGroup,
    help="Exact, streaming tools for Chinese LLaMA-family weights: inspect, decrypt, recover, merge LoRA, "
    "convert and verify. Results go to stdout, progress and errors to stderr. "
    "Exit codes: 0 ok, 1 a check failed, 2 bad usage or input, 3 internal error.",
    epilog=examples(
        "# what llmkit knows, then one model's whole chain",
        "llmkit models",
        "llmkit recipe run techgpt-2.0-atom --workdir work",
        "# one command's options and examples",
        "llmkit recover --help",
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """llmkit: exact, streaming tools for Chinese LLaMA-family weights."""


def _add(group: typer.Typer, name: str, command: Callable[..., None], epilog: str, stage: str | None = None) -> None:
    if stage is None:
        group.command(name, epilog=epilog)(command)
    else:
        group.command(name, rich_help_panel=stage, epilog=epilog)(command)


# Every command: its stage in `llmkit --help` (usage.STAGES), listed in this order within each stage.
app.add_typer(recipe_cmd.recipe_app, name="recipe", rich_help_panel="Recipes")
_add(recipe_cmd.recipe_app, "list", recipe_cmd.list_command, recipe_cmd.LIST_EXAMPLES)
_add(recipe_cmd.recipe_app, "show", recipe_cmd.show_command, recipe_cmd.SHOW_EXAMPLES)
_add(recipe_cmd.recipe_app, "run", recipe_cmd.run_command, recipe_cmd.RUN_EXAMPLES)
_add(app, "download", download_cmd.download_command, download_cmd.DOWNLOAD_EXAMPLES, "Get")
_add(app, "models", models_cmd.models_command, models_cmd.MODELS_EXAMPLES, "Get")
_add(app, "decrypt", crypto_cmd.decrypt_command, crypto_cmd.DECRYPT_EXAMPLES, "Unlock")
_add(app, "encrypt", crypto_cmd.encrypt_command, crypto_cmd.ENCRYPT_EXAMPLES, "Unlock")
_add(app, "merge-lora", merge_lora_cmd.merge_lora_command, merge_lora_cmd.MERGE_LORA_EXAMPLES, "Rebuild")
_add(app, "recover", recover_cmd.recover_command, recover_cmd.RECOVER_EXAMPLES, "Rebuild")
_add(app, "make-diff", recover_cmd.make_diff_command, recover_cmd.MAKE_DIFF_EXAMPLES, "Rebuild")
_add(app, "from-meta", convert_cmd.from_meta_command, convert_cmd.FROM_META_EXAMPLES, "Convert")
_add(app, "to-meta", convert_cmd.to_meta_command, convert_cmd.TO_META_EXAMPLES, "Convert")
_add(app, "to-ckpt", ckpt_cmd.to_ckpt_command, ckpt_cmd.TO_CKPT_EXAMPLES, "Convert")
_add(app, "from-ckpt", ckpt_cmd.from_ckpt_command, ckpt_cmd.FROM_CKPT_EXAMPLES, "Convert")
_add(app, "to-gguf", gguf_cmd.to_gguf_command, gguf_cmd.TO_GGUF_EXAMPLES, "Convert")
_add(app, "from-gguf", gguf_cmd.from_gguf_command, gguf_cmd.FROM_GGUF_EXAMPLES, "Convert")
_add(app, "inspect", inspect_cmd.inspect_command, inspect_cmd.INSPECT_EXAMPLES, "Check")
_add(app, "verify", verify_cmd.verify_command, verify_cmd.VERIFY_EXAMPLES, "Check")
_add(app, "checksum", verify_cmd.checksum_command, verify_cmd.CHECKSUM_EXAMPLES, "Check")
_add(app, "demo", demo_cmd.demo_command, demo_cmd.DEMO_EXAMPLES, "Try")


def main() -> None:
    """Run the CLI (the ``llmkit`` executable is :func:`llmkit.entry.main`, which handles signals first)."""
    from llmkit.entry import main as entry_main

    entry_main()
