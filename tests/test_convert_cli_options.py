"""from-meta / to-meta: the CLI builds the options and makes one library call (patched here)."""

from __future__ import annotations

from pathlib import Path

import pytest

import llmkit.convert as convert
from llmkit.convert import FromMetaOptions, ToMetaOptions
from llmkit.units import DEFAULT_SHARD_SIZE


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def record(options, *, progress=None):
        seen.append(options)
        raise SystemExit(0)

    monkeypatch.setattr(convert, "from_meta", record)
    monkeypatch.setattr(convert, "to_meta", record)
    return seen


def test_from_meta_defaults_and_every_flag(run_cli, calls):
    run_cli("from-meta", "LLaMA/13B", "-o", "out")
    run_cli("from-meta", "m", "-o", "o", "--dtype", "bf16", "--format", "bin", "--shard-size", "2GB",
            "--tokenizer", "LLaMA/tokenizer.model", "--dry-run", "--force")
    assert calls == [FromMetaOptions(Path("LLaMA/13B"), Path("out"), dtype="keep", fmt="safetensors",
                                     shard_size=DEFAULT_SHARD_SIZE, tokenizer=None, force=False, dry_run=False),
                     FromMetaOptions(Path("m"), Path("o"), dtype="bf16", fmt="bin", shard_size=2_000_000_000,
                                     tokenizer=Path("LLaMA/tokenizer.model"), force=True, dry_run=True)]


def test_to_meta_defaults_and_every_flag(run_cli, calls):
    run_cli("to-meta", "hf", "-o", "out")
    run_cli("to-meta", "hf", "-o", "out", "--shards", "2", "--dtype", "fp16", "--dry-run", "--force")
    assert calls == [ToMetaOptions(Path("hf"), Path("out")),
                     ToMetaOptions(Path("hf"), Path("out"), shards=2, dtype="fp16", force=True, dry_run=True)]


def test_bad_shards_never_reach_the_library(run_cli, calls):
    r = run_cli("to-meta", "hf", "-o", "out", "--shards", "0")
    assert r.exit_code == 2 and calls == [] and r.stderr.startswith("error: --shards")
