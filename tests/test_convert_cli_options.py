"""from-meta / to-meta: the CLI builds the options and makes one library call (patched here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from common import record_options

import llmkit.convert as convert
from llmkit.convert import FromMetaOptions, ToMetaOptions
from llmkit.units import DEFAULT_SHARD_SIZE


@pytest.fixture
def calls(monkeypatch):
    return record_options(monkeypatch, (convert, "from_meta"), (convert, "to_meta"), keywords=("progress",))


def test_from_meta_defaults_and_every_flag(run_cli, calls):
    run_cli("from-meta", "LLaMA/13B", "-o", "out")
    run_cli(
        "from-meta",
        "m",
        "-o",
        "o",
        "--dtype",
        "bf16",
        "--format",
        "bin",
        "--shard-size",
        "2GB",
        "--tokenizer",
        "LLaMA/tokenizer.model",
        "--dry-run",
        "--force",
    )
    assert calls == [
        FromMetaOptions(
            Path("LLaMA/13B"),
            Path("out"),
            dtype="keep",
            fmt="safetensors",
            shard_size=DEFAULT_SHARD_SIZE,
            tokenizer=None,
            force=False,
            dry_run=False,
        ),
        FromMetaOptions(
            Path("m"),
            Path("o"),
            dtype="bf16",
            fmt="bin",
            shard_size=2_000_000_000,
            tokenizer=Path("LLaMA/tokenizer.model"),
            force=True,
            dry_run=True,
        ),
    ]


def test_to_meta_defaults_and_every_flag(run_cli, calls):
    run_cli("to-meta", "hf", "-o", "out")
    run_cli("to-meta", "hf", "-o", "out", "--shards", "2", "--dtype", "fp16", "--dry-run", "--force")
    assert calls == [
        ToMetaOptions(Path("hf"), Path("out")),
        ToMetaOptions(Path("hf"), Path("out"), shards=2, dtype="fp16", force=True, dry_run=True),
    ]


def test_bad_shards_never_reach_the_library(run_cli, calls):
    r = run_cli("to-meta", "hf", "-o", "out", "--shards", "0")
    assert r.exit_code == 2 and calls == [] and r.stderr.startswith("error: --shards")


def test_a_published_original_is_hashed_beside_the_run_and_a_mismatch_is_a_warning(tiny_factory, tmp_path, monkeypatch):
    import hashlib

    import llmkit.convert.meta as meta_job
    import llmkit.registry as registry

    monkeypatch.undo()  # this test uses the real library
    meta = tiny_factory("meta")
    digest = hashlib.md5((meta.path / "consolidated.00.pth").read_bytes()).hexdigest()
    monkeypatch.setattr(meta_job, "_may_be_llama1_7b", lambda view: True)  # the tiny model stands in for 7B
    table = {"consolidated.00.pth": [("llama-7b-meta", digest)]}
    monkeypatch.setattr(registry, "find_expected", lambda name, algorithm="md5": table.get(name, []))
    ok = meta_job.from_meta(FromMetaOptions(meta.path, tmp_path / "a"))
    assert [(c.status, c.name) for c in ok.checks] == [("ok", "consolidated.00.pth")] and ok.texts("warning") == []
    table["consolidated.00.pth"] = [("llama-7b-meta", "0" * 32)]
    other = meta_job.from_meta(FromMetaOptions(meta.path, tmp_path / "b"))
    assert other.checks[0].status == "mismatch" and "LLaMA-2" in other.texts("warning")[0]
    assert (tmp_path / "b" / "model.safetensors").is_file()  # a warning keeps the output
