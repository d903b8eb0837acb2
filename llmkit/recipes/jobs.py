"""The jobs a recipe step can be: each is the options dataclass and the library call of one command.

A step is data (``job`` + ``args``: the options' fields); :func:`build_options` turns resolved args into
the options object its command builds, :func:`call` makes the same library call the command makes,
and :func:`command_line` renders the step as that command (copy-pasteable). Imports are lazy.
"""

from __future__ import annotations

import importlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class JobKind:
    """One command as a recipe step. ``positional``: fields given as arguments (a tuple field spreads);
    ``flags``: field -> option; ``output``: the field naming what the step writes (None: writes nothing);
    ``inputs``: fields naming what it reads; ``paths``: fields holding paths (tuples of them too)."""

    name: str
    options: str  # "module:Class"
    call: str  # "module:function"
    positional: tuple[str, ...]
    flags: dict[str, str]
    output: str | None
    inputs: tuple[str, ...]
    paths: tuple[str, ...]


JOBS: dict[str, JobKind] = {
    j.name: j
    for j in (
        JobKind(
            "download",
            "llmkit.hub:DownloadOptions",
            "llmkit.hub:download",
            ("model",),
            {"output": "-o", "endpoint": "--endpoint"},
            "output",
            (),
            ("output",),
        ),
        JobKind(
            "verify",
            "llmkit.verify:VerifyOptions",
            "llmkit.verify:verify_files",
            ("paths",),
            {"table": "--table"},
            None,
            ("paths",),
            ("paths",),
        ),
        JobKind(
            "decrypt",
            "llmkit.crypto.plan:DecryptOptions",
            "llmkit.crypto:decrypt",
            ("inputs",),
            {"key": "--key", "output": "-o"},
            "output",
            ("inputs", "key"),
            ("inputs", "key", "output"),
        ),
        JobKind(
            "from-meta",
            "llmkit.convert:FromMetaOptions",
            "llmkit.convert:from_meta",
            ("source",),
            {"output": "-o", "dtype": "--dtype", "tokenizer": "--tokenizer"},
            "output",
            ("source", "tokenizer"),
            ("source", "output", "tokenizer"),
        ),
        JobKind(
            "recover",
            "llmkit.recover:RecoverOptions",
            "llmkit.recover:run",
            (),
            {
                "base": "--base",
                "diff": "--diff",
                "output": "-o",
                "dtype": "--dtype",
                "fmt": "--format",
                "check_sum": "--check-sum",
            },
            "output",
            ("base", "diff"),
            ("base", "diff", "output"),
        ),
        JobKind(
            "merge-lora",
            "llmkit.lora:MergeOptions",
            "llmkit.lora:run",
            (),
            {"base": "--base", "adapters": "--lora", "output": "-o", "dtype": "--dtype", "fmt": "--format"},
            "output",
            ("base", "adapters"),
            ("base", "adapters", "output"),
        ),
        JobKind(
            "to-meta",
            "llmkit.convert:ToMetaOptions",
            "llmkit.convert:to_meta",
            ("source",),
            {"output": "-o", "dtype": "--dtype"},
            "output",
            ("source",),
            ("source", "output"),
        ),
        JobKind(
            "to-ckpt",
            "llmkit.convert.ckpt:ToCkptOptions",
            "llmkit.convert.ckpt:to_ckpt",
            ("source",),
            {"output": "-o", "dtype": "--dtype", "rotary": "--rotary"},
            "output",
            ("source",),
            ("source", "output"),
        ),
        JobKind(
            "to-gguf",
            "llmkit.convert.gguf:ToGGUFOptions",
            "llmkit.convert.gguf:to_gguf",
            ("source",),
            {"output": "-o", "outtype": "--outtype", "model_name": "--model-name"},
            "output",
            ("source",),
            ("source", "output"),
        ),
        JobKind(  # consecutive tensor steps as one pass (llmkit.recipes.fusion)
            "chain",
            "llmkit.recipes.fusion:ChainOptions",
            "llmkit.recipes.fusion:run_chain_step",
            (),
            {},
            "output",
            ("inputs",),
            ("inputs", "output", "keep"),
        ),
    )
}


def _load(ref: str) -> Any:
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def build_options(job: str, args: dict[str, Any]) -> Any:
    """The options object of ``job`` for resolved ``args`` (paths as Path, lists as tuples)."""
    kind = JOBS[job]
    values: dict[str, Any] = {}
    for key, value in args.items():
        if isinstance(value, (list, tuple)):
            value = tuple(Path(v) if key in kind.paths else v for v in value)
        elif key in kind.paths and value is not None:
            value = Path(value)
        values[key] = value
    return _load(kind.options)(**values)


def call(job: str, options: Any, progress: Any = None) -> Any:
    """The library call ``llmkit <job>`` makes."""
    return _load(JOBS[job].call)(options, progress=progress)


def command_line(job: str, args: dict[str, Any]) -> str:
    """``llmkit <job> ...`` for ``args`` (values already rendered as shell words or ``$VARS``)."""
    if job == "chain":
        from llmkit.recipes.fusion import chain_command

        return chain_command(args)
    kind = JOBS[job]
    words = ["llmkit", job]
    for field in kind.positional:
        value = args.get(field)
        words += [_word(v) for v in value] if isinstance(value, (list, tuple)) else [_word(value)]
    for field, flag in kind.flags.items():
        value = args.get(field)
        if value is None or value is False:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            words += [flag] if v is True else [flag, _word(v)]
    return " ".join(words)


def _word(value: Any) -> str:
    """A shell word; ``$VAR`` references inside are kept expandable (double quotes)."""
    text = str(value)
    if "$" in text:
        return '"' + text.replace('"', '\\"') + '"'
    return shlex.quote(text)
