"""``llmkit recipe list|show|run``: one resumable command from download to a usable model per family."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from llmkit.cli import DebugOpt, JsonOpt, QuietOpt, app, command_guard
from llmkit.cli.helptext import CHECKS, INPUTS, OUTPUT, LlmkitTyper, examples
from llmkit.cli.output import Output
from llmkit.cli.usage import LlmkitGroup
from llmkit.units import human_bytes

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
app.add_typer(recipe_app, name="recipe", rich_help_panel="Recipes")

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="A recipe name (llmkit recipe list).", show_default=False)]
KeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--key",
        metavar="FILE",
        rich_help_panel=INPUTS,
        help="Meta's LLaMA-1 7B consolidated.00.pth (the XOR key of TechGPT-1.0).",
        show_default=False,
    ),
]
LlamaOpt = Annotated[
    Path | None,
    typer.Option(
        "--llama-dir",
        metavar="DIR",
        rich_help_panel=INPUTS,
        help="Meta's original LLaMA folder of the size (consolidated.NN.pth + params.json).",
        show_default=False,
    ),
]
ToCkptOpt = Annotated[
    bool,
    typer.Option("--to-ckpt", rich_help_panel=OUTPUT, help="Add the to-ckpt step (a MindSpore .ckpt of the result)."),
]
ToMetaOpt = Annotated[
    bool,
    typer.Option("--to-meta", rich_help_panel=OUTPUT, help="Add the to-meta step (Meta .pth, e.g. for llama.cpp)."),
]
WithLoraOpt = Annotated[
    bool,
    typer.Option(
        "--with-lora",
        rich_help_panel=OUTPUT,
        help="ZhiXi: also download the ZhiXi LoRA and merge it into the recovered model.",
    ),
]


@recipe_app.command("list", epilog=examples("llmkit recipe list", "llmkit recipe list --json"))
def list_command(json_: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """List the recipes: name, family, what it makes, what it needs."""
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    with command_guard(out):
        from llmkit.recipes.show import list_recipes

        listing = list_recipes()

        def render(console: Console) -> None:
            width = max(len(str(r["name"])) for r in listing.recipes)
            for r in listing.recipes:
                needs = " ".join(r["needs"]) or "-"  # type: ignore[arg-type]
                console.print(f"{r['name']:<{width}}  {r['summary']}  [needs: {needs}]", markup=False)

        out.result(listing, render)


@recipe_app.command(
    "show",
    epilog=examples(
        "# the steps of ZhiXi-13B from Meta's LLaMA-13B, as llmkit commands",
        "llmkit recipe show zhixi-13b --llama-dir LLaMA/13B",
        "# as a script to read, edit and run",
        "llmkit recipe show techgpt-1.0 --workdir techgpt --key LLaMA/7B/consolidated.00.pth > techgpt.sh",
    ),
)
def show_command(
    name: NameArg,
    workdir: Annotated[
        Path | None, typer.Option("--workdir", metavar="DIR", rich_help_panel=OUTPUT, help="Fill in the work folder.")
    ] = None,
    key: KeyOpt = None,
    llama_dir: LlamaOpt = None,
    to_ckpt: ToCkptOpt = False,
    to_meta: ToMetaOpt = False,
    with_lora: WithLoraOpt = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Print a recipe's steps as llmkit commands.

    The exact commands, as a shell script to copy or pipe to bash.
    """
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    with command_guard(out):
        from llmkit.recipes import ShowOptions, show_recipe

        script = show_recipe(ShowOptions(name, workdir, key, llama_dir, to_ckpt, to_meta, with_lora))
        out.result(script, lambda console: console.print(script.script(), markup=False, soft_wrap=True))


def _render(result):  # result: llmkit.recipes.RecipeResult
    def render(console: Console) -> None:
        for s in result.steps:
            console.print(f"{s.status:<10}  {s.id:<16} {s.command}", markup=False, soft_wrap=True)
        disk = "unknown" if result.needed_disk_bytes is None else human_bytes(result.needed_disk_bytes)
        console.print(
            f"disk        needs {disk} (every output at once); free: {human_bytes(result.free_disk_bytes)}",
            markup=False,
        )
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


@recipe_app.command(
    "run",
    epilog=examples(
        "# TechGPT-1.0: download, verify, decrypt with the LLaMA-1 7B key, verify",
        "llmkit recipe run techgpt-1.0 --workdir techgpt --key LLaMA/7B/consolidated.00.pth",
        "# ZhiXi-13B (fp16 diff) from Meta's LLaMA-13B, plus a MindSpore .ckpt; the plan first",
        "llmkit recipe run zhixi-13b-fp16 --workdir zhixi --llama-dir LLaMA/13B --to-ckpt --dry-run",
    ),
)
def run_command(
    name: NameArg,
    workdir: Annotated[
        Path,
        typer.Option(
            "--workdir",
            metavar="DIR",
            rich_help_panel=OUTPUT,
            help="Work folder: every output and the manifest (llmkit-recipe.json) that makes a re-run resume.",
            show_default=False,
        ),
    ],
    key: KeyOpt = None,
    llama_dir: LlamaOpt = None,
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint",
            metavar="URL",
            rich_help_panel=INPUTS,
            help="Hub or mirror URL for the downloads (default: HF_ENDPOINT, else the hub).",
        ),
    ] = None,
    to_ckpt: ToCkptOpt = False,
    to_meta: ToMetaOpt = False,
    with_lora: WithLoraOpt = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            rich_help_panel=CHECKS,
            help="Check every input and print the plan (which steps run, disk and memory); run nothing.",
        ),
    ] = False,
    rehash: Annotated[
        bool,
        typer.Option(
            "--rehash",
            rich_help_panel=CHECKS,
            help="Read every file a recorded step "
            "wrote again and compare its sha256 before reusing the "
            "step (default: only files whose size, times or inode "
            "changed).",
        ),
    ] = False,
    keep_intermediate: Annotated[
        bool,
        typer.Option(
            "--keep-intermediate",
            rich_help_panel=OUTPUT,
            help="Keep outputs no later step needs (default: deleted at the end).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            rich_help_panel=OUTPUT,
            help="Replace outputs in the work folder that this recipe did "
            "not create (default: refused before the first step). "
            "They are still never deleted as intermediates.",
        ),
    ] = False,
    json_: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Run a recipe, resumably.

    Every input is checked first and each step recorded; a re-run skips the steps already verified.
    """
    out = Output(json_mode=json_, quiet=quiet, debug=debug)
    with command_guard(out):
        from llmkit.recipes import RecipeOptions, run_recipe

        options = RecipeOptions(
            name,
            workdir,
            key=key,
            llama_dir=llama_dir,
            endpoint=endpoint,
            to_ckpt=to_ckpt,
            to_meta=to_meta,
            with_lora=with_lora,
            keep_intermediate=keep_intermediate,
            dry_run=dry_run,
            force=force,
            rehash=rehash,
        )
        result = run_recipe(options, progress=out.progress)
        out.notices(result)
        out.result(result, _render(result))
