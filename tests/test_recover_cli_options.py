"""The recover / make-diff CLI builds the options object and makes one library call (the hf CLI pattern):
the library call is patched and the options it received are asserted."""

from __future__ import annotations

from pathlib import Path

import pytest
from common import record_options

import llmkit.recover as recover_lib
from llmkit.recover import MakeDiffOptions, RecoverOptions
from llmkit.units import DEFAULT_SHARD_SIZE


@pytest.fixture
def calls(monkeypatch):
    return record_options(monkeypatch, (recover_lib, "run"), keywords=("progress", "on_plan"))


def test_recover_defaults(run_cli, calls):
    run_cli("recover", "--base", "b", "--diff", "d", "-o", "out")
    assert calls == [
        RecoverOptions(
            Path("b"),
            Path("d"),
            Path("out"),
            dtype=None,
            fmt="safetensors",
            shard_size=DEFAULT_SHARD_SIZE,
            force=False,
            dry_run=False,
            check_sum=None,
            reference=None,
        )
    ]


def test_recover_every_flag(run_cli, calls):
    run_cli(
        "recover",
        "--base",
        "b",
        "--diff",
        "d",
        "-o",
        "out",
        "--dtype",
        "bf16",
        "--format",
        "bin",
        "--shard-size",
        "2GiB",
        "--force",
        "--dry-run",
        "--check-sum",
        "94052.2891",
        "--reference",
        "ref",
    )
    assert calls == [
        RecoverOptions(
            Path("b"),
            Path("d"),
            Path("out"),
            dtype="bf16",
            fmt="bin",
            shard_size=2 * 2**30,
            force=True,
            dry_run=True,
            check_sum=94052.2891,
            reference=Path("ref"),
        )
    ]


def test_make_diff_defaults_and_flags(run_cli, calls):
    run_cli("make-diff", "--base", "b", "--target", "t", "-o", "out")
    run_cli("make-diff", "--base", "b", "--target", "t", "-o", "out", "--dtype", "fp16", "--shard-size", "500MB")
    assert calls == [
        MakeDiffOptions(Path("b"), Path("t"), Path("out")),
        MakeDiffOptions(Path("b"), Path("t"), Path("out"), dtype="fp16", shard_size=500_000_000),
    ]


def test_options_are_frozen():
    with pytest.raises(AttributeError):
        RecoverOptions(Path("b"), Path("d"), Path("o")).force = True  # type: ignore[misc]
