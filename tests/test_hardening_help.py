"""``--help`` a first-time user can read: summaries that fit, an Examples section per command whose lines
are real command lines, option panels, readable placeholders, and shell completion."""

from __future__ import annotations

import re
import shlex

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from llmkit.cli import app

PANELS = ("Inputs", "Output", "Checks", "Performance")
SHARED = {"json_", "quiet", "debug", "help"}  # the options every command takes, in the last "Options" section


def _tree() -> list[tuple[tuple[str, ...], object]]:
    """Every visible command as (words after llmkit, click command), groups included."""
    root = typer.main.get_command(app)
    found = []

    def visit(group, ctx, prefix):
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            found.append(((*prefix, name), cmd))
            if isinstance(cmd, TyperGroup):
                visit(cmd, typer.Context(cmd, info_name=name, parent=ctx), (*prefix, name))

    visit(root, typer.Context(root, info_name="llmkit"), ())
    return found


LEAVES = [(path, cmd) for path, cmd in _tree() if not isinstance(cmd, TyperGroup)]
GROUPS = [()] + [path for path, cmd in _tree() if isinstance(cmd, TyperGroup)]


def _help(path: tuple[str, ...], columns: int = 100) -> str:
    result = CliRunner(env={"COLUMNS": str(columns), "TERM": "dumb", "NO_COLOR": "1"}).invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.stderr
    return result.stdout


def _sections(text: str) -> dict[str, list[str]]:
    """Help text by section title (``Options``, ``Get``, ``Examples``): the indented lines under each."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
            out[current] = []
        elif current is not None and line.strip():
            out[current].append(line)
    return out


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize("group", GROUPS, ids=lambda g: " ".join(g) or "llmkit")
def test_no_command_summary_is_cut_with_dots_and_each_fits_one_line(group, columns):
    text = _help(group, columns)
    rows = [
        line
        for title, lines in _sections(text).items()
        if title not in ("Options", "Usage", "Examples")
        for line in lines
    ]
    assert rows, text
    for line in rows:
        assert not line.rstrip().endswith("..."), f"cut summary at {columns} columns: {line!r}"
        assert re.match(r"^  [a-z][a-z-]*  +\S", line), f"a summary wrapped onto a second line: {line!r}"


@pytest.mark.parametrize("path", [p for p, _ in LEAVES] + [g for g in GROUPS if g], ids=" ".join)
def test_every_command_help_has_an_examples_section(path):
    examples = _sections(_help(path)).get("Examples")
    assert examples, f"llmkit {' '.join(path)} --help has no Examples section"
    commands = [line.strip() for line in examples if not line.strip().startswith("#")]
    assert commands and all(c.startswith(f"llmkit {' '.join(path)}") for c in commands), examples


def _examples(cmd) -> list[str]:
    return [line.strip() for line in (cmd.epilog or "").splitlines() if line.strip().startswith("llmkit ")]


@pytest.mark.parametrize("path,cmd", LEAVES, ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_example_is_a_command_line_the_command_accepts(path, cmd):
    """Each example parses: its options exist, its values are valid, nothing required is missing."""
    examples = _examples(cmd)
    assert examples, f"llmkit {' '.join(path)} has no examples"
    for line in examples:
        words = shlex.split(re.split(r" (?:\||&&|<|>) ", line)[0])  # the llmkit part of a shell line
        assert words[: 1 + len(path)] == ["llmkit", *path], line
        cmd.make_context(" ".join(["llmkit", *path]), words[1 + len(path) :])  # raises on a bad example


@pytest.mark.parametrize("path", [p for p, _ in LEAVES] + GROUPS, ids=lambda p: " ".join(p) or "llmkit")
def test_no_placeholder_is_a_python_type_or_a_brace(path):
    text = _help(path)
    usage = text.splitlines()[0]
    assert "{" not in usage and "}" not in usage, usage
    names = [
        line[2:].split("  ")[0]
        for title, lines in _sections(text).items()
        if title in ("Arguments", *PANELS, "Options")
        for line in lines
    ]  # "-o, --output DIR", "PATH..."
    assert names
    for bad in ("{", "<"):
        assert not [n for n in names if bad in n], f"placeholder with {bad!r} in llmkit {' '.join(path)}: {names}"


@pytest.mark.parametrize("path,cmd", LEAVES, ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_option_sits_in_a_panel_and_panels_come_in_order(path, cmd):
    for param in cmd.params:
        if param.param_type_name == "option" and param.name not in SHARED:
            assert getattr(param, "rich_help_panel", None) in PANELS, f"{path} {param.opts}: no panel"
    titles = [t for t in _sections(_help(path)) if t in (*PANELS, "Options")]
    order = [t for t in (*PANELS, "Options") if t in titles]
    assert titles == order and titles[-1] == "Options", titles
    assert {"--json", "--quiet", "--debug"} <= set(
        " ".join(_sections(_help(path))["Options"]).replace(",", " ").split()
    )


def test_shell_completion_is_on():
    text = _help(())
    assert "--install-completion" in text and "--show-completion" in text
    result = CliRunner().invoke(
        app,
        [],
        prog_name="llmkit",
        env={"_LLMKIT_COMPLETE": "complete_bash", "COMP_WORDS": "llmkit rec", "COMP_CWORD": "1"},
    )
    assert result.exit_code == 0 and set(result.stdout.split()) == {"recipe", "recover"}, result.output


def test_shell_completion_offers_the_dtype_names():
    result = CliRunner().invoke(
        app,
        [],
        prog_name="llmkit",
        env={"_LLMKIT_COMPLETE": "complete_bash", "COMP_WORDS": "llmkit recover --dtype ", "COMP_CWORD": "3"},
    )
    assert result.exit_code == 0 and {"fp32", "fp16", "bf16"} <= set(result.stdout.split()), result.output
