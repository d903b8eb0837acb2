"""``llmkit recipe list|show|run``: one resumable command from download to a usable model per family."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from llmkit.cli.helptext import CHECKS, INPUTS, OUTPUT, LlmkitTyper, examples
from llmkit.cli.options import dry_run_option, endpoint_option, force_option, runs_steps_on_ray, with_output
from llmkit.cli.output import Output
from llmkit.cli.usage import LlmkitGroup
from llmkit.units import human_bytes

if TYPE_CHECKING:  # llmkit.recipes is imported when a command runs, not at CLI start-up
    from llmkit.recipes import RecipeResult

recipe_app = LlmkitTyper(
    cls=LlmkitGroup,
    no_args_is_help=True,
    add_completion=False,
    help="Run a model family's whole chain as one command.\n\n"
    "Download, verify, decrypt/recover/merge and convert, as one resumable command.",
    epilog=examples(
        "llmkit recipe list",
        "llmkit recipe show zhixi-13b --llama-dir LLaMA/13B",
        "llmkit recipe run zhixi-13b --workdir zhixi --llama-dir LLaMA/13B",
    ),
)

LIST_EXAMPLES = examples("llmkit recipe list", "llmkit recipe list --json")
SHOW_EXAMPLES = examples(
    "# the steps of ZhiXi-13B from Meta's LLaMA-13B, as llmkit commands",
    "llmkit recipe show zhixi-13b --llama-dir LLaMA/13B",
    "# as a script to read, edit and run",
    "llmkit recipe show techgpt-1.0 --workdir techgpt --key LLaMA/7B/consolidated.00.pth > techgpt.sh",
)
RUN_EXAMPLES = examples(
    "# TechGPT-1.0: download, verify, decrypt with the LLaMA-1 7B key, verify",
    "llmkit recipe run techgpt-1.0 --workdir techgpt --key LLaMA/7B/consolidated.00.pth",
    "# ZhiXi-13B (fp16 diff) from Meta's LLaMA-13B, plus a MindSpore .ckpt; the plan first",
    "llmkit recipe run zhixi-13b-fp16 --workdir zhixi --llama-dir LLaMA/13B --to-ckpt --dry-run",
    "# CuteGPT with its base from your own S3 bucket (both inputs stream: nothing is downloaded)",
    "llmkit recipe run cutegpt-13b --workdir cutegpt --input cutegpt-13b-base=s3://weights/cutegpt-13b-base",
)


def _flag(flag: str, help: str, panel: str = OUTPUT) -> Any:
    return typer.Option(flag, rich_help_panel=panel, help=help)


def _path_option(flag: str, metavar: str, help: str, panel: str = INPUTS) -> Any:
    return typer.Option(flag, metavar=metavar, rich_help_panel=panel, help=help, show_default=False)


NameArg = Annotated[str, typer.Argument(metavar="NAME", help="A recipe name (llmkit recipe list).", show_default=False)]
KeyOpt = Annotated[
    Path | None, _path_option("--key", "FILE", "Meta's LLaMA-1 7B consolidated.00.pth (the XOR key of TechGPT-1.0).")
]
LlamaOpt = Annotated[
    Path | None,
    _path_option("--llama-dir", "DIR", "Meta's original LLaMA folder of the size (consolidated.NN.pth + params.json)."),
]
ToCkptOpt = Annotated[bool, _flag("--to-ckpt", "Add the to-ckpt step (a MindSpore .ckpt of the result).")]
ToMetaOpt = Annotated[bool, _flag("--to-meta", "Add the to-meta step (Meta consolidated.NN.pth + params.json).")]
ToGGUFOpt = Annotated[
    bool, _flag("--to-gguf", "Add the to-gguf step (an f16 .gguf of the result, for llama.cpp and ollama).")
]
WithLoraOpt = Annotated[
    bool, _flag("--with-lora", "ZhiXi: also download the ZhiXi LoRA and merge it into the recovered model.")
]
InputOpt = Annotated[
    list[str] | None,
    _path_option(
        "--input",
        "NAME=URL",
        "Read the recipe's input NAME (a model it downloads) from URL (hf://..., s3://...) as it streams, instead "
        "of its hub repo. Repeatable.",
    ),
]


def _inputs(values: list[str] | None) -> dict[str, str]:
    """``--input NAME=URL`` values as name -> URL."""
    from llmkit.errors import InputError

    out: dict[str, str] = {}
    for v in values or []:
        name, sep, url = v.partition("=")
        if not sep or not name or not url:
            raise InputError(f"--input {v}: not NAME=URL", hint="e.g. --input cutegpt-13b-base=s3://bucket/base")
        out[name] = url
    return out


@with_output
def list_command(*, out: Output) -> None:
    """List the recipes: name, family, what it makes, what it needs."""
    from llmkit.recipes.show import list_recipes

    listing = list_recipes()

    def render(console: Console) -> None:
        width = max(len(str(r["name"])) for r in listing.recipes)
        for r in listing.recipes:
            needs = " ".join(r["needs"]) or "-"  # type: ignore[arg-type]
            console.print(f"{r['name']:<{width}}  {r['summary']}  [needs: {needs}]", markup=False)

    out.result(listing, render)


@with_output
def show_command(
    name: NameArg,
    workdir: Annotated[
        Path | None, typer.Option("--workdir", metavar="DIR", rich_help_panel=OUTPUT, help="Fill in the work folder.")
    ] = None,
    key: KeyOpt = None,
    llama_dir: LlamaOpt = None,
    to_ckpt: ToCkptOpt = False,
    to_meta: ToMetaOpt = False,
    to_gguf: ToGGUFOpt = False,
    with_lora: WithLoraOpt = False,
    inputs: InputOpt = None,
    *,
    out: Output,
) -> None:
    """Print a recipe's steps as llmkit commands.

    The exact commands, as a shell script to copy or pipe to bash.
    """
    from llmkit.recipes import ShowOptions, show_recipe

    script = show_recipe(
        ShowOptions(
            name,
            workdir,
            key,
            llama_dir,
            to_ckpt=to_ckpt,
            to_meta=to_meta,
            to_gguf=to_gguf,
            with_lora=with_lora,
            inputs=_inputs(inputs),
        )
    )
    out.result(script, lambda console: console.print(script.script(), markup=False, soft_wrap=True))


def _render(result: RecipeResult) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        for s in result.steps:
            console.print(f"{s.status:<10}  {s.id:<16} {s.command}", markup=False, soft_wrap=True)
        disk = "unknown" if result.needed_disk_bytes is None else human_bytes(result.needed_disk_bytes)
        console.print(
            f"disk        needs {disk} (every output at once); free: {human_bytes(result.free_disk_bytes)}",
            markup=False,
        )
        for input_, url in result.streamed.items():
            console.print(f"streams     {input_} from {url} (no download step)", markup=False, soft_wrap=True)
        if result.memory_estimate_bytes:
            console.print(f"memory      about {human_bytes(result.memory_estimate_bytes)} peak", markup=False)
        if result.dry_run:
            console.print("dry run     all checks passed; nothing was run", markup=False)
            return
        for path in result.removed:
            console.print(f"removed     {path} (intermediate; --keep-intermediate keeps it)", markup=False)
        for path in result.final:
            console.print(f"result      {path}", markup=False)
        console.print(f"time        {result.seconds:.1f} s", markup=False)

    return render


@with_output
@runs_steps_on_ray
def run_command(
    name: NameArg,
    workdir: Annotated[
        Path,
        _path_option(
            "--workdir",
            "DIR",
            "Work folder: every output and the manifest (llmkit-recipe.json) that makes a re-run resume.",
            panel=OUTPUT,
        ),
    ],
    key: KeyOpt = None,
    llama_dir: LlamaOpt = None,
    endpoint: Annotated[
        str | None,
        endpoint_option(
            "Hub or mirror URL for the downloads and streamed inputs (default: HF_ENDPOINT, else the hub)."
        ),
    ] = None,
    inputs: InputOpt = None,
    to_ckpt: ToCkptOpt = False,
    to_meta: ToMetaOpt = False,
    to_gguf: ToGGUFOpt = False,
    with_lora: WithLoraOpt = False,
    dry_run: Annotated[
        bool, dry_run_option("Check every input and print the plan (which steps run, disk and memory); run nothing.")
    ] = False,
    rehash: Annotated[
        bool,
        _flag(
            "--rehash",
            "Read every file a recorded step wrote again and compare its sha256 before reusing the step (default: "
            "only files whose size, times or inode changed).",
            panel=CHECKS,
        ),
    ] = False,
    keep_intermediate: Annotated[
        bool,
        _flag(
            "--keep-intermediate",
            "Keep outputs no later step needs (default: deleted at the end); download the hub inputs the recipe "
            "would stream, and keep those copies too.",
        ),
    ] = False,
    force: Annotated[
        bool,
        force_option(
            "Replace outputs in the work folder that this recipe did not create (default: refused before the first "
            "step). They are still never deleted as intermediates."
        ),
    ] = False,
    *,
    out: Output,
) -> None:
    """Run a recipe, resumably.

    Every input is checked first and each step recorded; a re-run skips the steps already verified.
    """
    from llmkit.recipes import RecipeOptions, run_recipe

    options = RecipeOptions(
        name,
        workdir,
        key=key,
        llama_dir=llama_dir,
        endpoint=endpoint,
        to_ckpt=to_ckpt,
        to_meta=to_meta,
        to_gguf=to_gguf,
        with_lora=with_lora,
        keep_intermediate=keep_intermediate,
        dry_run=dry_run,
        force=force,
        rehash=rehash,
        inputs=_inputs(inputs),
    )
    result = run_recipe(options, progress=out.progress)
    out.show(result, _render(result))
