"""The merge-lora CLI builds the options object and makes one library call (the hf CLI pattern): the library
call is patched and the options it received are asserted; the result it returns is what the CLI renders."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import llmkit.lora as lora_lib
from llmkit.lora import MergeOptions, MergeResult
from llmkit.pipeline import Notice, PlanReport


def fake_result(options: MergeOptions, notices: list[Notice]) -> MergeResult:
    return MergeResult(
        base=str(options.base),
        output=str(options.output),
        format=options.fmt,
        dtype=options.dtype,
        dry_run=options.dry_run,
        adapters=[],
        vocab_before=None,
        vocab_after=None,
        mean_initialised_rows={},
        tokenizer_from=None,
        tensors=0,
        total_bytes=0,
        files=["model.safetensors"],
        rounding="-",
        seconds=0.0,
        warnings=[n.text for n in notices],
        notices=notices,
        outputs=[str(options.output)],
        plan=PlanReport(
            output=str(options.output),
            format=options.fmt,
            tensors=0,
            output_bytes=0,
            input_bytes=0,
            files=["model.safetensors"],
            largest_tensor="",
            largest_tensor_bytes=0,
            memory_estimate_bytes=0,
            free_disk_bytes=0,
            needed_disk_bytes=0,
            disk_margin_bytes=0,
        ),
    )


@pytest.fixture
def calls(monkeypatch):
    seen: list[MergeOptions] = []

    def fake_run(options, *, progress=None, on_plan=None):
        seen.append(options)
        notices = [Notice.warning("a warning from the plan")]
        if on_plan is not None:
            on_plan(SimpleNamespace(notices=notices))  # on_plan sees the plan (its notices) before the work
        return fake_result(options, notices)

    monkeypatch.setattr(lora_lib, "run", fake_run)
    return seen


def test_merge_lora_defaults(run_cli, calls):
    res = run_cli("merge-lora", "--base", "b", "--lora", "l", "-o", "out")
    assert res.exit_code == 0, res.stderr
    assert calls == [
        MergeOptions(
            Path("b"),
            (Path("l"),),
            Path("out"),
            dtype="keep",
            fmt="safetensors",
            shard_size=None,
            tokenizer=None,
            pth_shards=None,
            dry_run=False,
            force=False,
        )
    ]


def test_merge_lora_every_flag_and_adapter_order(run_cli, calls):
    res = run_cli(
        "merge-lora",
        "--base",
        "b",
        "--lora",
        "llama",
        "--lora",
        "alpaca",
        "-o",
        "out",
        "--dtype",
        "bf16",
        "--format",
        "bin",
        "--shard-size",
        "2GiB",
        "--tokenizer",
        "tok",
        "--dry-run",
        "--force",
    )
    assert res.exit_code == 0 and "dry run" in res.stdout, res.stderr
    assert calls == [
        MergeOptions(
            Path("b"),
            (Path("llama"), Path("alpaca")),
            Path("out"),
            dtype="bf16",
            fmt="bin",
            shard_size=2 * 2**30,
            tokenizer=Path("tok"),
            pth_shards=None,
            dry_run=True,
            force=True,
        )
    ]


def test_merge_lora_pth_options(run_cli, calls):
    run_cli(
        "merge-lora",
        "--base",
        "b",
        "--lora",
        "l",
        "-o",
        "out",
        "--format",
        "pth",
        "--pth-shards",
        "2",
        "--dtype",
        "fp16",
    )
    run_cli("merge-lora", "--base", "b", "--lora", "l", "-o", "out", "--format", "pth", "--shard-size", "500MB")
    assert calls == [
        MergeOptions(Path("b"), (Path("l"),), Path("out"), dtype="fp16", fmt="pth", pth_shards=2),
        MergeOptions(Path("b"), (Path("l"),), Path("out"), fmt="pth", shard_size=500_000_000),
    ]


def test_merge_lora_renders_the_result_and_its_notices(run_cli, calls):
    res = run_cli("merge-lora", "--base", "b", "--lora", "l", "-o", "out", "--json")
    data = res.json()
    assert res.exit_code == 0 and data["ok"] is True and data["outputs"] == ["out"]
    assert data["warnings"] == ["a warning from the plan"]
    assert data["notices"] == [{"level": "warning", "text": "a warning from the plan"}]
    human = run_cli("merge-lora", "--base", "b", "--lora", "l", "-o", "out")
    assert "warning: a warning from the plan" in human.stderr and "model.safetensors" in human.stdout
    quiet = run_cli("merge-lora", "--base", "b", "--lora", "l", "-o", "out", "--quiet")
    assert quiet.stderr == ""


def test_bad_shard_size_never_reaches_the_library(run_cli, calls):
    res = run_cli("merge-lora", "--base", "b", "--lora", "l", "-o", "out", "--shard-size", "lots")
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and calls == []


def test_options_are_frozen():
    with pytest.raises(AttributeError):
        MergeOptions(Path("b"), (Path("l"),), Path("o")).force = True  # type: ignore[misc]
