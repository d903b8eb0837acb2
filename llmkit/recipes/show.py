"""``llmkit recipe show`` / ``list``: a recipe as the exact llmkit commands, copy-pasteable into a shell."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.pipeline import Result
from llmkit.recipes.book import RECIPES
from llmkit.recipes.fusion import fuse
from llmkit.recipes.jobs import command_line
from llmkit.recipes.remote import stream_inputs
from llmkit.recipes.runner import NEEDS, get_recipe, resolve
from llmkit.recipes.selection import active_steps, switches


@dataclass(frozen=True)
class ShowOptions:
    """``llmkit recipe show NAME``: values given here replace the shell variables of the script."""

    name: str
    workdir: Path | None = None
    key: Path | None = None
    llama_dir: Path | None = None
    to_ckpt: bool = False
    to_meta: bool = False
    to_gguf: bool = False
    with_lora: bool = False
    inputs: dict[str, str] = field(default_factory=dict)  # registry name -> URL (as recipe run --input)


@dataclass
class RecipeScript(Result):
    """A recipe as a shell script: ``variables`` (name -> value or a placeholder), then ``commands``."""

    recipe: str
    family: str
    summary: str
    variables: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    optional: list[str] = field(
        default_factory=list
    )  # switches that add steps: --to-ckpt, --to-meta, --to-gguf, --with-lora
    notes: list[str] = field(default_factory=list)
    streamed: dict[str, str] = field(default_factory=dict)  # input -> the URL its readers stream (no download)

    def script(self) -> str:
        lines = [f"# {self.recipe}: {self.summary}", "set -euo pipefail  # stop at the first failure, in a pipe too"]
        lines += [f"# {k}: streamed from {v} (no download step, no local copy)" for k, v in self.streamed.items()]
        lines += [f"{k}={v}" for k, v in self.variables.items()]
        return "\n".join(lines + self.commands)


def show_recipe(options: ShowOptions) -> RecipeScript:
    recipe = get_recipe(options.name)
    variables = {"WORKDIR": shlex.quote(str(options.workdir or f"./{recipe.name}"))}
    placeholders = {
        "key": "/path/to/LLaMA/7B/consolidated.00.pth",
        "llama_dir": "/path/to/LLaMA/13B" if "13b" in recipe.name else "/path/to/LLaMA/7B",
    }
    for need in recipe.needs:
        value = getattr(options, need)
        variables[need.upper()] = shlex.quote(str(value)) if value else placeholders[need]
    env = {"workdir": "$WORKDIR", "key": "$KEY", "llama_dir": "$LLAMA_DIR"}
    active, streamed = stream_inputs(
        active_steps(recipe, switches(options)), options.inputs, keep_intermediate=False, recipe=recipe.name
    )
    steps = fuse(active)  # what run does: streamed inputs read from their URL, tensor steps as tensor pipes
    resolved = resolve(steps, env)
    commands = [command_line(s.job, resolved[s.id]) for s in steps]
    optional = sorted({f"--{s.when.replace('_', '-')}" for s in recipe.steps if s.when})
    return RecipeScript(
        recipe=recipe.name,
        family=recipe.family,
        summary=recipe.summary,
        variables=variables,
        commands=commands,
        optional=optional,
        notes=[f"needs {NEEDS[n]}" for n in recipe.needs] + list(recipe.notes),
        streamed={s.name: s.url for s in streamed},
    )


@dataclass
class RecipeListing(Result):
    recipes: list[dict[str, object]] = field(default_factory=list)  # name, family, summary, needs, steps, optional


def list_recipes() -> RecipeListing:
    return RecipeListing(
        recipes=[
            {
                "name": r.name,
                "family": r.family,
                "summary": r.summary,
                "needs": [f"--{n.replace('_', '-')}" for n in r.needs],
                "steps": [s.id for s in r.steps if s.when is None],
                "optional": sorted({f"--{s.when.replace('_', '-')}" for s in r.steps if s.when}),
            }
            for r in RECIPES.values()
        ]
    )
