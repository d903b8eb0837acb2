"""Usage errors (bad flags) as one line, like every other error.

Typer prints click's four-line Usage/Try/Error block for a bad option value, a missing or unknown
option, a missing argument or an unknown command. :class:`LlmkitGroup` (the app's group class, so it
works for the console script and for ``CliRunner().invoke(app, ...)`` alike) turns them into

    error: --jobs: 0 is not in the range 1<=x<=16 (see llmkit decrypt --help)

on stderr, exit 2, and with ``--json`` in the arguments the error object on stdout. It is also the
last net for an exception that escapes a command's ``command_guard``. ``--help``, ``--version`` and
the help shown for a bare ``llmkit`` are untouched.

Only Typer's public API is used: :class:`typer.TyperException` (the base of every usage error) and
duck-typed attributes (``param``, ``option_name``, ``possibilities``, ``ctx``); the kind of error is
read from the class names in its MRO, so nothing private is imported.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from difflib import SequenceMatcher
from typing import Any

import typer
from typer.core import TyperGroup

from llmkit.cli.helptext import format_examples
from llmkit.cli.output import Failure, Output
from llmkit.errors import EXIT_BAD_INPUT

_ARGV_KEY = "llmkit.argv"


def _kinds(e: BaseException) -> set[str]:
    return {c.__name__ for c in type(e).__mro__}


def _shows_help(e: BaseException) -> bool:
    """A bare ``llmkit`` (no_args_is_help): keep Typer's help text and exit code."""
    return "NoArgsIsHelpError" in _kinds(e)


def _flags(argv: list[str]) -> list[str]:
    return argv[: argv.index("--")] if "--" in argv else argv


def _lcfirst(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:] if text[1:2].islower() or len(text) == 1 else text


def _param_name(param: Any) -> str:
    """``--jobs`` for an option (its long name), ``PATH`` / ``inputs`` for an argument."""
    opts = [o for o in getattr(param, "opts", None) or [] if isinstance(o, str)]
    if getattr(param, "param_type_name", None) == "option" and opts:
        return next((o for o in opts if o.startswith("--")), opts[0])
    name = getattr(param, "metavar", None) or getattr(param, "name", None) or (opts[0] if opts else "argument")
    return str(name).removesuffix("...")


def _range_text(param: Any, details: dict) -> str | None:
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    ctx = details.get("ctx") or {}
    if low is None and high is None:
        low = ctx.get("ge", ctx.get("gt"))
        high = ctx.get("le", ctx.get("lt"))
    if low is None and high is None:
        return None
    if low is None:
        return f"x<={high}"
    if high is None:
        return f"x>={low}"
    return f"{low}<=x<={high}"


_CHOICES = re.compile(r"^(?:Value error, )?(?P<value>.*) is not one of (?P<choices>.*?)\.?$", re.DOTALL)
_RANGE_ERRORS = {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}


def _bad_value(e: Any) -> str:
    """What is wrong with the value of a parameter, naming the allowed values where there is a list or range."""
    message = str(getattr(e, "message", "") or "")
    cause = e.__cause__
    details: dict = {}
    if cause is not None and callable(getattr(cause, "errors", None)):  # a pydantic ValidationError
        try:
            details = dict(cause.errors()[0])
        except Exception:
            details = {}
    has_value = "input" in details
    value = details.get("input")
    shown = repr(value) if isinstance(value, str) else str(value)
    choices = _CHOICES.match(message)
    if choices:
        allowed = ", ".join(c.strip().strip("'\"") for c in choices.group("choices").split(", "))
        return f"{choices.group('value')} is not one of {allowed}"
    kind = details.get("type")
    if kind in _RANGE_ERRORS and has_value:
        span = _range_text(e.param, details)
        if span:
            return f"{value} is not in the range {span}"
    if kind == "int_parsing" and has_value:
        return f"{shown} is not a valid integer"
    if kind == "float_parsing" and has_value:
        return f"{shown} is not a valid number"
    if has_value:
        return f"{shown}: {_lcfirst(message)}"
    return _lcfirst(message) or "invalid value"


def _command(e: Any, ctx: Any, argv: list[str], group: TyperGroup) -> tuple[str, Any]:
    """(``llmkit decrypt``, its command): the command whose ``--help`` explains the mistake."""
    err_ctx = getattr(e, "ctx", None)
    if err_ctx is not None:
        return err_ctx.command_path, err_ctx.command
    root = ctx.command_path if ctx is not None else (group.name or "llmkit")
    first = next((a for a in _flags(argv) if not a.startswith("-")), None)  # the root takes no option values
    if first is not None and first in group.commands:
        return f"{root} {first}", group.commands[first]
    return root, group


def _option_name(typed: str, command: Any) -> str:
    """The long name of the option the user typed as ``typed`` (``-k`` -> ``--key``)."""
    for param in getattr(command, "params", None) or []:
        if typed in (getattr(param, "opts", None) or []):
            return _param_name(param)
    return typed


# Other tools' names for llmkit's options (llama.cpp's convert: --outfile, --outtype; transformers: max_shard_size,
# torch_dtype; mergekit: --out-shard-size; hf download: --local-dir; llama.cpp's gguf-split: --split-max-size).
OTHER_TOOLS: dict[str, tuple[str, ...]] = {
    "--output": ("--outfile", "--out", "--outdir", "--out-dir", "--output-dir", "--output-path", "--local-dir"),
    "--dtype": ("--outtype", "--torch-dtype", "--torch_dtype", "--out-dtype", "--precision"),
    "--shard-size": ("--max-shard-size", "--max_shard_size", "--out-shard-size", "--split-max-size"),
    "--base": ("--base-model", "--base_model", "--base-model-path"),
    "--lora": ("--lora-model", "--lora_model", "--adapter", "--lora-path"),
}


def _likeness(typed: str, name: str) -> float:
    """How close a typed option is to an option name: difflib's ratio (either way round) plus the shared prefix."""
    a, b = typed.lstrip("-").replace("_", "-").lower(), name.lstrip("-")
    ratio = max(SequenceMatcher(None, a, b).ratio(), SequenceMatcher(None, b, a).ratio())
    prefix = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )  # shared characters
    return ratio + 0.5 * prefix / max(len(a), len(b), 1)


def closest_options(typed: str, command: Any) -> list[str]:
    """The option(s) of ``command`` a mistyped ``typed`` most likely meant, closest first (none if none is close);
    each as ``--long`` or ``--long (-s)``."""
    params = [
        p
        for p in getattr(command, "params", None) or []
        if getattr(p, "param_type_name", "") == "option" and not getattr(p, "hidden", False)
    ]
    names = {o: p for p in params for o in [*p.opts, *p.secondary_opts] if o.startswith("--")}
    if not names:
        return []
    known = next((t for t, spellings in OTHER_TOOLS.items() if typed in spellings and t in names), None)
    scores = {n: _likeness(typed, n) for n in names}
    best = max(scores.values())
    picked = [known] if known else [n for n in sorted(names) if scores[n] >= 0.6 and scores[n] >= best - 0.02]
    shorts = {n: [o for o in names[n].opts if not o.startswith("--")] for n in picked}
    return [f"{n} ({shorts[n][0]})" if shorts[n] else n for n in picked]


def usage_failure(e: Any, *, command_path: str, commands: list[str], command: Any = None) -> Failure:
    """A Typer usage error -> ``<option or command>: <what is wrong>`` with the command's --help as the hint."""
    kinds = _kinds(e)
    message = str(getattr(e, "message", "") or "")
    param = getattr(e, "param", None)
    if "MissingParameter" in kinds and param is not None:
        kind = "argument" if getattr(param, "param_type_name", None) == "argument" else "option"
        text = f"{_param_name(param)}: required {kind} not given"
    elif isinstance(e, typer.BadParameter) and param is not None:
        text = f"{_param_name(param)}: {_bad_value(e)}"
    elif getattr(e, "option_name", None) and hasattr(e, "possibilities"):  # an unknown option
        text = f"{e.option_name}: no such option"
        err_ctx = getattr(e, "ctx", None)
        meant = closest_options(e.option_name, getattr(err_ctx, "command", None) or command)
        if meant:
            text += f"; did you mean {' or '.join(meant)}?"
    elif getattr(e, "option_name", None):  # an option used wrongly (no value, or a value for a flag)
        what = re.sub(r"^Option '[^']*' ", "", message).replace("requires an argument", "needs a value")
        text = f"{_option_name(e.option_name, command)}: {_lcfirst(what)}"
    elif m := re.match(r"No such command '(?P<name>.*?)'\.?(?: Did you mean (?P<hint>.*?)\?)?$", message, re.DOTALL):
        text = f"{m.group('name')}: no such command"
        if m.group("hint"):
            text += f"; did you mean {m.group('hint').replace(chr(39), '')}?"
        elif commands:
            text += f"; the commands are {', '.join(commands)}"
    elif m := re.match(r"Got unexpected extra argument(?:s|\(s\))? \((?P<args>.*)\)$", message, re.DOTALL):
        text = f"{m.group('args')}: unexpected extra argument"
    else:
        text = _lcfirst(message) or type(e).__name__
    return Failure(" ".join(text.split()), hint=f"see {command_path} --help", exit_code=EXIT_BAD_INPUT)


def _debug_requested(argv: list[str]) -> bool:
    env = os.environ.get("LLMKIT_DEBUG", "").strip().lower()
    return "--debug" in _flags(argv) or env in ("1", "true", "yes", "y", "on", "t")


# The lifecycle stages that group ``llmkit --help``, in order; a command names its stage with Typer's
# ``rich_help_panel=``.
STAGES = ("Recipes", "Get", "Unlock", "Rebuild", "Convert", "Check", "Try")


class LlmkitGroup(TyperGroup):
    """The ``llmkit`` group: usage errors and escaped exceptions become one ``error:`` line, exit 2/3."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        argv = list(args)  # parsing consumes ``args``
        try:
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM while parsing: the one line, not click's "Aborted!"
            from llmkit.cli.errors import describe_error

            self._fail(describe_error(e), argv)
        except typer.TyperException as e:
            if _shows_help(e):
                raise
            path = getattr(getattr(e, "ctx", None), "command_path", None) or info_name or self.name or "llmkit"
            self._fail(usage_failure(e, command_path=path, commands=self._command_names(), command=self), argv)
        ctx.meta[_ARGV_KEY] = argv
        return ctx

    def invoke(self, ctx: Any) -> Any:
        argv = ctx.meta.get(_ARGV_KEY, [])
        try:
            return super().invoke(ctx)
        except typer.TyperException as e:
            if _shows_help(e):
                raise
            path, command = _command(e, ctx, argv, self)
            self._fail(usage_failure(e, command_path=path, commands=self._command_names(), command=command), argv)
        except (typer.Exit, typer.Abort, SystemExit, GeneratorExit):
            raise
        except BaseException as e:
            from llmkit.cli.errors import describe_error  # a closed stdout (``| head``): exit 141, no line

            if _debug_requested(argv):
                traceback.print_exc(file=sys.stderr)
            self._fail(describe_error(e), argv)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """``llmkit --help`` lists the commands by lifecycle stage (:data:`STAGES`, each command's
        ``rich_help_panel``), in that order, as plain text sections; each with its summary (the first
        sentence of its help, whole: summaries are written to fit one line)."""
        rows: dict[str, list[tuple[str, str]]] = {}
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or getattr(cmd, "hidden", False):
                continue
            stage = getattr(cmd, "rich_help_panel", None) or "Commands"
            rows.setdefault(stage, []).append((name, cmd.get_short_help_str(limit=1000)))  # the first sentence
        for stage in sorted(rows, key=lambda s: STAGES.index(s) if s in STAGES else len(STAGES)):
            with formatter.section(stage):
                formatter.write_dl(rows[stage])

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        format_examples(self.epilog, formatter)

    def _command_names(self) -> list[str]:
        return sorted(name for name, cmd in self.commands.items() if not getattr(cmd, "hidden", False))

    @staticmethod
    def _fail(failure: Failure, argv: list[str]) -> None:
        Output(json_mode="--json" in _flags(argv)).fail(failure)
        raise typer.Exit(failure.exit_code) from None
