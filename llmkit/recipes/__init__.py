"""Recipes: one resumable command from download to a usable model, per model family.

A recipe is data (``book.RECIPES``: ordered steps, each a job's options as a dict); every step is the
library call its command makes (``jobs.JOBS``); ``runner.run_recipe`` checks every input first, runs
the steps, records each in the work folder's manifest (``manifest``) and resumes from it.
"""

from llmkit.recipes.book import RECIPES, Recipe, Step
from llmkit.recipes.runner import RecipeOptions, RecipeResult, StepReport, get_recipe, run_recipe
from llmkit.recipes.show import ShowOptions, show_recipe

__all__ = [
    "RECIPES",
    "Recipe",
    "RecipeOptions",
    "RecipeResult",
    "ShowOptions",
    "Step",
    "StepReport",
    "get_recipe",
    "run_recipe",
    "show_recipe",
]
