"""Which of a recipe's steps run: the switches (``--to-ckpt``, ``--to-meta``, ``--to-gguf``, ``--with-lora``) select them, and a
conversion's ``{model}`` becomes the last usable model before it."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from llmkit.errors import InputError
from llmkit.recipes.book import MODEL, Recipe, Step


def switches(options: Any) -> dict[str, bool]:
    return {k: bool(getattr(options, k, False)) for k in ("to_ckpt", "to_meta", "to_gguf", "with_lora")}


CONVERSIONS = ("to-ckpt", "to-meta", "to-gguf")
SWITCH_JOBS = {
    "to_ckpt": "to-ckpt",
    "to_meta": "to-meta",
    "to_gguf": "to-gguf",
    "with_lora": "merge-lora",
}  # the step a switch asks for


def active_steps(recipe: Recipe, on: dict[str, bool]) -> list[Step]:
    """The steps the switches select, with ``{model}`` of a conversion made the last usable model before it.

    A switch whose step the recipe does not have is refused (it would otherwise be silently ignored); one whose
    step always runs (TechGPT-2.0's to-ckpt, CuteGPT's merge) is accepted."""
    unknown = {s.when for s in recipe.steps if s.when} - set(on)
    assert not unknown, unknown
    for switch, value in on.items():
        if value and not any(s.when == switch or s.job == SWITCH_JOBS[switch] for s in recipe.steps):
            flag = "--" + switch.replace("_", "-")
            raise InputError(
                f"recipe {recipe.name} has no {flag} step", hint=f"drop {flag} (llmkit recipe show {recipe.name})"
            )
    steps: list[Step] = []
    model: str | None = None
    for s in recipe.steps:
        if s.when is not None and not on.get(s.when):
            continue
        if s.job in CONVERSIONS and MODEL in json.dumps(s.args):
            assert model is not None, f"{recipe.name}: {s.id} has no model before it"
            s = dataclasses.replace(s, args=_with_model(s.args, f"{{out:{model}}}"))
        elif s.final and s.job not in CONVERSIONS:
            model = s.id
        steps.append(s)
    return steps


def _with_model(args: dict[str, Any], ref: str) -> dict[str, Any]:
    return {k: (v.replace(MODEL, ref) if isinstance(v, str) else v) for k, v in args.items()}
