"""docs/commands/ is generated from the CLI (``python -m llmkit.cli.docgen``) and must not drift from it."""

from __future__ import annotations

from pathlib import Path

import typer

from llmkit.cli import app
from llmkit.cli.docgen import DOCS_DIR, GENERATOR, differences, main, render, walk

FIX = f"run `{GENERATOR}` and commit docs/commands/"


def test_docs_commands_match_the_cli():
    stale, extra = differences(render(app), DOCS_DIR)
    assert not stale, f"docs/commands is out of date ({', '.join(stale)}): {FIX}"
    assert not extra, f"docs/commands has pages of no command ({', '.join(extra)}): {FIX}"


def test_index_names_every_command():
    index = (DOCS_DIR / "README.md").read_text(encoding="utf-8")
    top_level = typer.main.get_command(app).list_commands(None)  # type: ignore[arg-type]
    walked = walk(app)
    assert {d.path[0] for d in walked} == set(top_level)
    for doc in walked:
        assert f"[`llmkit {doc.name}`]({doc.filename})" in index, f"the index lacks llmkit {doc.name}: {FIX}"
        assert (DOCS_DIR / doc.filename).is_file(), f"no page for llmkit {doc.name}: {FIX}"


def test_every_page_holds_the_help_text_and_links_json_md():
    for doc in walk(app):
        page = (DOCS_DIR / doc.filename).read_text(encoding="utf-8")
        assert page.startswith(f"# llmkit {doc.name}\n") and f"Usage: llmkit {doc.name} " in page
        assert "(../json.md)" in page and "do not edit by hand" in page


def _app_with_a_group() -> typer.Typer:
    demo = typer.Typer(add_completion=False, rich_markup_mode=None)

    @demo.command("fetch", rich_help_panel="Get")
    def fetch() -> None:
        """Fetch a thing."""

    recipe = typer.Typer(help="Run a named chain of steps.", rich_markup_mode=None)

    @recipe.command("list")
    def recipe_list() -> None:
        """List the recipes."""

    @recipe.command("run")
    def recipe_run(name: str) -> None:
        """Run one recipe. Steps are checked first."""

    demo.add_typer(recipe, name="recipe", rich_help_panel="Rebuild")
    return demo


def test_groups_get_a_page_per_sub_command():
    pages = render(_app_with_a_group())
    assert sorted(pages) == ["README.md", "fetch.md", "recipe-list.md", "recipe-run.md", "recipe.md"]
    assert pages["recipe-run.md"].startswith("# llmkit recipe run\n")
    assert "recipe run [OPTIONS]" in pages["recipe-run.md"] and "Steps are checked first." in pages["recipe-run.md"]
    assert "(../families/README.md)" in pages["recipe-run.md"]
    index = pages["README.md"]
    assert index.index("## Get") < index.index("## Rebuild")
    assert "| [`llmkit recipe run`](recipe-run.md) | Run one recipe. |" in index


def test_check_lists_stale_and_extra_pages_without_writing(tmp_path: Path, capsys):
    demo = _app_with_a_group()
    assert main(["--out", str(tmp_path)], app=demo) == 0
    assert main(["--check", "--out", str(tmp_path)], app=demo) == 0
    (tmp_path / "fetch.md").write_text("edited by hand\n")
    (tmp_path / "gone.md").write_text("a removed command\n")
    capsys.readouterr()
    assert main(["--check", "--out", str(tmp_path)], app=demo) == 1
    out = capsys.readouterr()
    assert f"stale: {tmp_path / 'fetch.md'}" in out.out
    assert f"should not be there: {tmp_path / 'gone.md'}" in out.out
    assert GENERATOR in out.err
    assert (tmp_path / "fetch.md").read_text() == "edited by hand\n"
    assert main(["--out", str(tmp_path)], app=demo) == 0
    assert not (tmp_path / "gone.md").exists() and main(["--check", "--out", str(tmp_path)], app=demo) == 0
