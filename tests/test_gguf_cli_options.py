"""from-gguf: the CLI builds the options and makes one library call (patched here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from common import record_options

import llmkit.convert.from_gguf as from_gguf_job
from llmkit.convert.from_gguf import FromGGUFOptions
from llmkit.units import DEFAULT_SHARD_SIZE


@pytest.fixture
def calls(monkeypatch):
    return record_options(monkeypatch, (from_gguf_job, "from_gguf"), keywords=("progress",))


def test_from_gguf_defaults_and_every_flag(run_cli, calls):
    run_cli("from-gguf", "zhixi-13b-f16.gguf", "-o", "zhixi-13b-hf")
    run_cli(
        "from-gguf",
        "m.gguf",
        "-o",
        "o",
        "--format",
        "bin",
        "--shard-size",
        "2GB",
        "--dtype",
        "f16",
        "--dequantize",
        "--tokenizer",
        "tok/tokenizer.model",
        "--dry-run",
        "--force",
    )
    assert calls == [
        FromGGUFOptions(Path("zhixi-13b-f16.gguf"), Path("zhixi-13b-hf")),
        FromGGUFOptions(
            Path("m.gguf"),
            Path("o"),
            fmt="bin",
            shard_size=2_000_000_000,
            dtype="fp16",
            dequantize=True,
            tokenizer=Path("tok/tokenizer.model"),
            force=True,
            dry_run=True,
        ),
    ]
    assert calls[0].shard_size == DEFAULT_SHARD_SIZE and calls[0].dtype == "keep"


def test_from_gguf_refuses_a_bad_flag_value_before_the_call(run_cli, calls):
    r = run_cli("from-gguf", "m.gguf", "-o", "o", "--format", "ckpt")
    assert r.exit_code == 2 and calls == []
