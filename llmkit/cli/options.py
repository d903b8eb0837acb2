"""The options several commands share, in one place (the huggingface_hub CLI's ``_cli_utils`` pattern).

- ``Annotated`` aliases for options that read the same everywhere: :data:`JsonOpt`, :data:`QuietOpt`,
  :data:`DebugOpt` (the output flags every command takes, added by :func:`with_output`), :data:`ForceOpt`,
  :data:`DryRunOpt`, :data:`ShardSizeOpt`.
- Factories for options whose help text differs per command (``--output``, ``--format``, ``--dry-run``,
  ``--force``, ``--dtype``, ``--shard-size``, ``--jobs``): the flag, metavar and panel are fixed here, the
  words are the command's.
- ``--dtype`` (every spelling of :mod:`llmkit.io.core.dtypes`) and ``--shard-size`` (:func:`llmkit.units.parse_size`)
  are checked while the command line is parsed, so that a bad value is one ``error: --flag: ...`` line before
  any work. Nothing here imports torch.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Annotated, Any, TypedDict

import typer

from llmkit.cli.errors import command_guard
from llmkit.cli.helptext import CHECKS, INPUTS, OUTPUT, PERFORMANCE
from llmkit.cli.output import Output
from llmkit.errors import InputError
from llmkit.io.core.dtypes import DTYPE_SPELLINGS, canonical_dtype
from llmkit.units import SIZE_EXAMPLES, parse_size

# The output flags every command takes (no panel: --help lists them last, under "Options").
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout, and nothing else.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, logs or warnings on stderr.")]
DebugOpt = Annotated[
    bool, typer.Option("--debug", envvar="LLMKIT_DEBUG", help="Show the full traceback when something fails.")
]

_OUTPUT_FLAGS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=alias)
    for name, alias in (("json_", JsonOpt), ("quiet", QuietOpt), ("debug", DebugOpt))
]


def with_output(command: Callable[..., None]) -> Callable[..., None]:
    """A command that takes ``out: Output`` (keyword-only, last) becomes one that takes ``--json``, ``--quiet``
    and ``--debug`` instead (last in its signature, so last in its ``--help``) and runs with ``out`` built from
    them, inside :func:`~llmkit.cli.errors.command_guard` (with ``-o -`` stdout carries the data:
    :meth:`Output.stdout_carries_data`). Typer reads the command's parameters from its
    signature, so the replaced ``__signature__`` (and matching ``__annotations__``) is what it sees."""
    signature = inspect.signature(command, eval_str=True)
    params = [p for name, p in signature.parameters.items() if name != "out"]
    if len(params) == len(signature.parameters):
        raise TypeError(f"{command.__name__} takes no `out` parameter")

    @functools.wraps(command)
    def run(*args: Any, json_: bool = False, quiet: bool = False, debug: bool = False, **kwargs: Any) -> None:
        out = Output(json_mode=json_, quiet=quiet, debug=debug)
        with command_guard(out):
            if str(kwargs.get("output")) == "-":  # -o -: stdout carries the data, the result goes to stderr
                out.stdout_carries_data()
            command(*args, out=out, **kwargs)

    shown = signature.replace(parameters=[*params, *_OUTPUT_FLAGS])
    run.__dict__["__signature__"] = shown
    run.__annotations__ = {p.name: p.annotation for p in shown.parameters.values()} | {"return": None}
    return run


def force_option(help: str = "Overwrite existing output files.") -> Any:
    """``--force`` in the Output panel."""
    return typer.Option("--force", rich_help_panel=OUTPUT, help=help)


def dry_run_option(help: str) -> Any:
    """``--dry-run`` in the Checks panel."""
    return typer.Option("--dry-run", rich_help_panel=CHECKS, help=help)


ForceOpt = Annotated[bool, force_option()]
DryRunOpt = Annotated[  # the plan every tensor job shows (pipeline.plan_rows)
    bool, dry_run_option("Run every check and print the plan (sizes, disk space, memory estimate); write nothing.")
]


def _remote_output(value: Any) -> Any:
    """An ``-o`` URL (``s3://...``, which a ``Path`` folds into ``s3:/...``) as the path that prints as it."""
    from llmkit.io.remote.url import as_remote_path, remote_url

    url = remote_url(value) if value is not None else None
    return as_remote_path(url) if url is not None else value


def output_option(help: str, *, metavar: str = "DIR") -> Any:
    """``--output`` / ``-o``: the folder (or file) a command writes."""
    return typer.Option(
        "--output",
        "-o",
        metavar=metavar,
        rich_help_panel=OUTPUT,
        help=help,
        show_default=False,
        callback=_remote_output,
    )


def choice_metavar(enum: Any) -> str:
    """``safetensors|bin`` for an Enum of choices (Typer's own placeholder reads ``<safetensors|bin>``)."""
    return "|".join(str(member.value) for member in enum)


def choice_option(flag: str, enum: type[Enum], help: str, *, panel: str = OUTPUT) -> Any:
    """An option taking one of ``enum``'s values, shown as ``a|b``."""
    return typer.Option(flag, metavar=choice_metavar(enum), rich_help_panel=panel, help=help)


class HFFormat(str, Enum):
    """Hugging Face weight files: what ``--format`` of the commands that write a Hugging Face folder takes."""

    safetensors = "safetensors"
    bin = "bin"


HFFormatOpt = Annotated[HFFormat, choice_option("--format", HFFormat, "Output weight format.")]


class WeightFormat(str, Enum):
    """What ``--format`` of the commands that write a model takes: a Hugging Face folder, or one GGUF file."""

    safetensors = "safetensors"
    bin = "bin"
    gguf = "gguf"


WeightFormatOpt = Annotated[
    WeightFormat,
    choice_option("--format", WeightFormat, "Output weight format (gguf: -o is a .gguf file for llama.cpp / ollama)."),
]
DTYPES_OR_KEEP = ("keep", "fp16", "bf16", "fp32")  # --dtype of the converters: keep, or one cast per tensor


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


ShardSizeOpt = Annotated[str, shard_size_option()]


class TensorOutput(TypedDict):
    """The options fields of a tensor job's output (``--format``, ``--shard-size``, ``--force``, ``--dry-run``)."""

    fmt: str
    shard_size: int
    force: bool
    dry_run: bool


def tensor_output(fmt: Enum, shard_size: str, *, force: bool, dry_run: bool) -> TensorOutput:
    """Those fields from the flags: the format's name, the shard size in bytes (checked while parsing)."""
    return TensorOutput(fmt=fmt.value, shard_size=parse_size(shard_size), force=force, dry_run=dry_run)


def endpoint_option(help: str) -> Any:
    """``--endpoint URL``: the hub or a mirror."""
    return typer.Option("--endpoint", metavar="URL", rich_help_panel=INPUTS, help=help)


ModelEndpointOpt = Annotated[
    str | None,
    endpoint_option(
        "Hub or mirror URL that hf:// inputs and registry names are read from (default: HF_ENDPOINT, else "
        "huggingface.co). Tokens come from HF_TOKEN or 'hf auth login', never from the command line."
    ),
]


def _with_keyword(
    command: Callable[..., None], name: str, annotation: Any, context: Callable[[Any], Any]
) -> Callable[..., None]:
    """``command`` with one more keyword-only option ``name`` (first of its keyword-only ones, so before
    ``out``), its body run inside ``context(value)``."""
    signature = inspect.signature(command, eval_str=True)
    params = list(signature.parameters.values())
    at = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.KEYWORD_ONLY), len(params))
    added = inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        with context(kwargs.pop(name, None)):
            command(*args, **kwargs)

    shown = signature.replace(parameters=[*params[:at], added, *params[at:]])
    run.__dict__["__signature__"] = shown
    run.__annotations__ = {p.name: p.annotation for p in shown.parameters.values()} | {"return": None}
    return run


def _endpoint_context(url: str | None) -> Any:
    from llmkit.io.remote.store import hub_endpoint

    return hub_endpoint(url)


def reads_remote(command: Callable[..., None]) -> Callable[..., None]:
    """A command that reads models takes ``--endpoint URL`` (keyword-only, before ``out``: last in its Inputs
    panel) and runs inside :func:`llmkit.io.remote.store.hub_endpoint` of it. Apply under :func:`with_output`."""
    return _with_keyword(command, "endpoint", ModelEndpointOpt, _endpoint_context)


def _ray_option(help: str) -> Any:
    return typer.Option("--ray", metavar="ADDRESS", rich_help_panel=PERFORMANCE, help=help)


RayOpt = Annotated[
    str | None,
    _ray_option(
        "Write the output files as Ray tasks on the cluster at ADDRESS: auto (RAY_ADDRESS, else the cluster "
        "running on this machine) or HOST:PORT. The output folder must be on a filesystem every node shares, the "
        "inputs there too or at hf://, s3:// or https:// URLs every node can read; needs pip install "
        "'llmkit[ray]' (docs/scaling.md).",
    ),
]


def _ray_context(address: str | None) -> Any:
    from llmkit.cluster import on_ray

    return on_ray(address)


def runs_on_ray(command: Callable[..., None]) -> Callable[..., None]:
    """A tensor job that writes folders (or a ``.ckpt`` or ``.gguf``, by byte range) takes ``--ray ADDRESS`` and runs inside :func:`llmkit.cluster.on_ray`
    of it (Ray itself loads only when a plan runs). Apply under :func:`with_output`."""
    return _with_keyword(command, "ray", RayOpt, _ray_context)


RecipeRayOpt = Annotated[
    str | None,
    _ray_option(
        "Run each tensor step (a fused chain too) as Ray tasks on the cluster at ADDRESS: auto (RAY_ADDRESS, "
        "else the cluster running on this machine) or HOST:PORT. Downloads and the steps Ray cannot split run in "
        "this process, as the output says; the hub inputs are downloaded, not streamed. The work folder and the "
        "inputs must be on a filesystem every node shares; needs pip install 'llmkit[ray]' (docs/scaling.md).",
    ),
]


def _recipe_ray_context(address: str | None) -> Any:
    from llmkit.cluster import on_ray

    return on_ray(address, local_fallback=True)


def runs_steps_on_ray(command: Callable[..., None]) -> Callable[..., None]:
    """A recipe command takes ``--ray ADDRESS``: its tensor steps run on the cluster, the others in this
    process (:func:`llmkit.cluster.on_ray` with ``local_fallback``). Apply under :func:`with_output`."""
    return _with_keyword(command, "ray", RecipeRayOpt, _recipe_ray_context)


def jobs_option(help: str, **kwargs: Any) -> Any:
    """``--jobs N`` / ``-j N``."""
    return typer.Option("--jobs", "-j", metavar="N", rich_help_panel=PERFORMANCE, help=help, **kwargs)


class GGUFOutType(str, Enum):
    """GGUF tensor types: what ``--outtype`` takes (llama.cpp's converter spells them so; any case)."""

    f32 = "f32"
    f16 = "f16"
    bf16 = "bf16"
    q8_0 = "q8_0"
    q4_0 = "q4_0"
    q4_1 = "q4_1"
    q5_0 = "q5_0"
    q5_1 = "q5_1"


def gguf_output(outtype: GGUFOutType | None, split_max_size: str | None) -> GGUFOutput:
    """The GGUF fields of a job's options from the flags (None: not given, refused unless --format gguf)."""
    return GGUFOutput(
        outtype=outtype.value if outtype is not None else None,
        split_max_size=parse_size(split_max_size) if split_max_size else 0,
    )


class GGUFOutput(TypedDict):
    """The options fields of a job that can write GGUF (``--outtype``, ``--split-max-size``)."""

    outtype: str | None
    split_max_size: int


JobOutTypeOpt = Annotated[
    GGUFOutType | None,
    typer.Option(
        "--outtype",
        metavar=choice_metavar(GGUFOutType),
        case_sensitive=False,
        rich_help_panel=OUTPUT,
        help="With --format gguf: the GGUF tensor type of the weights (default f16; norms stay f32).",
    ),
]
OutTypeOpt = Annotated[
    GGUFOutType,
    typer.Option(
        "--outtype",
        metavar=choice_metavar(GGUFOutType),
        case_sensitive=False,
        rich_help_panel=OUTPUT,
        help="GGUF tensor type of the weights (norms stay f32; a quantized type whose 32-value blocks do not fit "
        "a row falls back to f16, as llama.cpp's converter does).",
    ),
]
SplitMaxSizeOpt = Annotated[
    str | None,
    typer.Option(
        "--split-max-size",
        metavar="SIZE",
        callback=_size_check,
        rich_help_panel=OUTPUT,
        help="Split the GGUF output into files of at most SIZE (llama.cpp's NAME-0000N-of-0000M.gguf, in the -o "
        f"folder): {SIZE_HELP}.",
    ),
]
ModelNameOpt = Annotated[
    str | None,
    typer.Option(
        "--model-name",
        metavar="NAME",
        rich_help_panel=OUTPUT,
        help="general.name of the GGUF file (default: from the model card or the folder name, as llama.cpp's converter).",
    ),
]
