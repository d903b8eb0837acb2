"""CLI conventions shared by every command: help snapshots, --version, errors, --json, --debug."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llmkit import __version__
from llmkit.cli import app

SNAPSHOTS = Path(__file__).parent / "snapshots" / "help"
HELP_ENV = {"COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"}


def _commands(leaves_only: bool = False) -> list[str]:
    """Every command as typed after ``llmkit`` ("recipe run" for a group's sub-command)."""

    group = typer.main.get_command(app)
    out = []
    for name in group.list_commands(None):  # type: ignore[arg-type]
        cmd = group.get_command(None, name)  # type: ignore[arg-type]
        if hasattr(cmd, "list_commands"):  # a group (Typer 0.29 groups are not click.Group)
            if not leaves_only:
                out.append(name)
            out += [f"{name} {sub}" for sub in cmd.list_commands(None)]  # type: ignore[arg-type]
        else:
            out.append(name)
    return sorted(out)


def _help(args: list[str]) -> str:
    result = CliRunner(env=HELP_ENV).invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("command", ["llmkit", *_commands()])
def test_help_matches_snapshot(command):
    """`--help` is part of the interface; regenerate with UPDATE_SNAPSHOTS=1 after a deliberate change."""
    text = _help([] if command == "llmkit" else command.split())
    snap = SNAPSHOTS / f"{command.replace(' ', '-')}.txt"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        snap.write_text(text)
    assert snap.exists(), f"no help snapshot for {command}; run UPDATE_SNAPSHOTS=1 pytest {__file__}"
    assert text == snap.read_text()


def test_every_snapshot_belongs_to_a_command():
    assert sorted(p.stem for p in SNAPSHOTS.glob("*.txt")) == sorted(
        ["llmkit", *(c.replace(" ", "-") for c in _commands())]
    )


def test_every_command_takes_json_quiet_debug():
    for command in _commands(leaves_only=True):
        text = _help(command.split())
        for flag in ("--json", "--quiet", "--debug"):
            assert flag in text, f"{command} lacks {flag}"


def test_version(run_cli):
    r = run_cli("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"llmkit {__version__}"


def test_no_arguments_shows_help_and_fails():
    r = CliRunner().invoke(app, [])
    assert r.exit_code == 2 and "Usage" in (r.stdout + r.stderr)


def test_unknown_option_is_bad_usage(run_cli, tiny_factory):
    r = run_cli("inspect", tiny_factory().path, "--no-such-flag")
    assert r.exit_code == 2 and r.stdout == ""


def test_error_is_one_line_on_stderr_without_traceback(run_cli, tmp_path):
    r = run_cli("inspect", tmp_path / "missing")
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(tmp_path / "missing") in lines[0]
    assert "Traceback" not in r.stderr


def test_debug_shows_the_traceback(run_cli, tmp_path):
    r = run_cli("inspect", tmp_path / "missing", "--debug")
    assert r.exit_code == 2 and "Traceback" in r.stderr and "error: " in r.stderr


def test_internal_errors_say_how_to_report(monkeypatch, run_cli, tiny_factory):
    import llmkit.summary

    def broken(path):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(llmkit.summary, "summarize", broken)
    r = run_cli("inspect", tiny_factory().path)
    assert r.exit_code == 3 and "internal error" in r.stderr and "--debug" in r.stderr


def test_python_dash_m_runs_the_real_command(tiny_factory):
    """End to end in a subprocess: results on stdout as JSON, nothing else there."""
    proc = subprocess.run(
        [sys.executable, "-m", "llmkit", "inspect", str(tiny_factory().path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["layout"] == "safetensors" and data["tensor_count"] == 21


def test_subprocess_error_exit_code_and_stderr(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 4)
    proc = subprocess.run(
        [sys.executable, "-m", "llmkit", "inspect", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "truncated" in proc.stderr


def test_top_level_help_groups_commands_by_lifecycle_stage_in_order(run_cli):
    text = run_cli("--help").stdout
    sections = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert sections == ["Options", "Recipes", "Get", "Unlock", "Rebuild", "Convert", "Check", "Try", "Examples"]
    stage_of = {}
    current = None
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = line[:-1]
        elif line.startswith("  ") and current not in (None, "Options", "Examples"):
            stage_of[line.split()[0]] = current
    assert stage_of == {
        "recipe": "Recipes",
        "download": "Get",
        "models": "Get",
        "decrypt": "Unlock",
        "encrypt": "Unlock",
        "merge-lora": "Rebuild",
        "recover": "Rebuild",
        "make-diff": "Rebuild",
        "from-meta": "Convert",
        "to-meta": "Convert",
        "to-ckpt": "Convert",
        "from-ckpt": "Convert",
        "to-gguf": "Convert",
        "from-gguf": "Convert",
        "inspect": "Check",
        "verify": "Check",
        "checksum": "Check",
        "demo": "Try",
    }
