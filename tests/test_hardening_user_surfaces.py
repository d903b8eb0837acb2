"""What users see names only things users have: no internal spec file, model-card seeds or shared folders in
any --help, doc page, README, ``models --json`` or message string; merge-lora counts modules as modules;
every --jobs help says why its default is what it is."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import typer
from typer.testing import CliRunner

from llmkit.cli import app

REPO = Path(__file__).resolve().parent.parent
INTERNAL = re.compile(r"\bSPEC\b|SPEC\.md|seeds/|shared/")


def _commands(group, prefix=()):
    """Every command path of the CLI (the group itself, each command, each subcommand)."""
    yield prefix
    if hasattr(group, "list_commands"):  # a group (Typer 0.29 groups are not click.Group)
        for name in group.list_commands(None):
            yield from _commands(group.get_command(None, name), (*prefix, name))


def _help_texts() -> dict[str, str]:
    runner = CliRunner(env={"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"})
    texts = {}
    for path in _commands(typer.main.get_command(app)):
        r = runner.invoke(app, [*path, "--help"])
        assert r.exit_code == 0, (path, r.output)
        texts[" ".join(("llmkit", *path))] = r.output
    return texts


def _hits(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if INTERNAL.search(line)]


def test_no_help_text_names_internal_files():
    texts = _help_texts()
    assert len(texts) >= 20
    bad = {cmd: _hits(t) for cmd, t in texts.items() if _hits(t)}
    assert not bad, bad


def test_no_doc_page_or_readme_names_internal_files():
    pages = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]
    assert len(pages) > 20
    bad = {
        str(p.relative_to(REPO)): _hits(p.read_text(encoding="utf-8"))
        for p in pages
        if _hits(p.read_text(encoding="utf-8"))
    }
    assert not bad, bad


def test_models_json_names_model_cards_users_can_open(run_cli):
    r = run_cli("models", "--json")
    assert r.exit_code == 0, r.stderr
    assert not _hits(r.stdout), _hits(r.stdout)
    models = r.json()["models"]
    for m in models:
        if m["repo_id"]:
            assert m["card"] == f"https://huggingface.co/{m['repo_id']}", m
        else:
            assert m["card"].startswith("https://"), m


def _message_strings() -> list[tuple[str, int, str]]:
    """Every string literal in llmkit that is not a docstring (messages, help, JSON values)."""
    out = []
    for path in sorted((REPO / "llmkit").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    docstrings.add(id(first.value))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                out.append((str(path.relative_to(REPO)), node.lineno, node.value))
    return out


def test_no_message_string_names_internal_files():
    bad = [(f, n, s) for f, n, s in _message_strings() if INTERNAL.search(s)]
    assert not bad, bad


def test_merge_lora_counts_lora_modules_not_layers(run_cli, lora_work, tmp_path):
    from safetensors import safe_open

    adapter = lora_work / "cute"
    files = sorted(adapter.glob("adapter_model.*"))
    if files[0].suffix == ".safetensors":
        with safe_open(files[0], "pt") as f:
            keys = list(f.keys())
    else:
        import torch

        keys = list(torch.load(files[0], weights_only=True))
    modules = sum(k.endswith("lora_A.weight") for k in keys)  # one A matrix per adapted module
    assert modules == 4  # q_proj and v_proj in each of the 2 layers
    r = run_cli("merge-lora", "--base", lora_work / "base", "--lora", adapter, "-o", tmp_path / "out", "--dry-run")
    assert r.exit_code == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("lora 1"))
    assert f"; {modules} modules" in line and "layers" not in line, line


JOBS_DEFAULTS = {"download": 4, "decrypt": 1, "encrypt": 1, "verify": 0, "checksum": 0}


def test_every_jobs_option_says_why_its_default_is_what_it_is():
    """--jobs defaults differ by what runs in parallel (network transfers, XOR streams that already use one
    thread per stage, hashing on the CPU); each help says its default and the reason."""
    group = typer.main.get_command(app)
    for name, default in JOBS_DEFAULTS.items():
        cmd = group.get_command(None, name)
        opt = next(p for p in cmd.params if "--jobs" in getattr(p, "opts", ()))
        assert opt.default == default, (name, opt.default)
        text = " ".join(opt.help.split())
        assert re.search(rf"\bdefault {default}\b", text, re.I) and ("because" in text or ":" in text), (name, text)
