"""to-ckpt / from-ckpt: the CLI builds the options and makes one library call (patched here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from common import record_options

import llmkit.convert.ckpt as ckpt_job
from llmkit.convert.ckpt import FromCkptOptions, ToCkptOptions
from llmkit.units import DEFAULT_SHARD_SIZE


@pytest.fixture
def calls(monkeypatch):
    return record_options(monkeypatch, (ckpt_job, "to_ckpt"), (ckpt_job, "from_ckpt"), keywords=("progress",))


def test_to_ckpt_defaults_and_every_flag(run_cli, calls):
    run_cli("to-ckpt", "TechGPT-2.0-alpaca-hf", "-o", "techgpt.ckpt")
    run_cli(
        "to-ckpt",
        "m",
        "-o",
        "o",
        "--dtype",
        "fp16",
        "--names",
        "hf",
        "--rotary",
        "meta",
        "--crc",
        "--format",
        "safetensors",
        "--shard-size",
        "2GB",
        "--strict",
        "--dry-run",
        "--force",
    )
    run_cli("to-ckpt", "m", "-o", "e.ckpt", "--enc-key", "keys/k16", "--enc-mode", "SM4-CBC")
    assert calls == [
        ToCkptOptions(
            Path("TechGPT-2.0-alpaca-hf"),
            Path("techgpt.ckpt"),
            dtype="keep",
            names="mindformers",
            rotary="hf",
            crc=False,
            fmt="ckpt",
            shard_size=DEFAULT_SHARD_SIZE,
            strict=False,
            force=False,
            dry_run=False,
        ),
        ToCkptOptions(
            Path("m"),
            Path("o"),
            dtype="fp16",
            names="hf",
            rotary="meta",
            crc=True,
            fmt="safetensors",
            shard_size=2_000_000_000,
            strict=True,
            force=True,
            dry_run=True,
        ),
        ToCkptOptions(Path("m"), Path("e.ckpt"), enc_key="keys/k16", enc_mode="SM4-CBC"),
    ]


def test_from_ckpt_defaults_and_every_flag(run_cli, calls):
    run_cli("from-ckpt", "llama.ckpt", "-o", "hf")
    run_cli(
        "from-ckpt",
        "x.ckpt",
        "-o",
        "o",
        "--names",
        "keep",
        "--rotary",
        "meta",
        "--format",
        "bin",
        "--config",
        "orig/config.json",
        "--dtype",
        "bf16",
        "--shard-size",
        "1GB",
        "--strict",
        "--dry-run",
        "--force",
    )
    run_cli("from-ckpt", "e.ckpt", "-o", "o", "--dec-key", "env:MS_KEY", "--dec-mode", "AES-CBC")
    assert calls == [
        FromCkptOptions(Path("llama.ckpt"), Path("hf")),
        FromCkptOptions(
            Path("x.ckpt"),
            Path("o"),
            names="keep",
            rotary="meta",
            fmt="bin",
            config=Path("orig/config.json"),
            dtype="bf16",
            shard_size=1_000_000_000,
            strict=True,
            force=True,
            dry_run=True,
        ),
        FromCkptOptions(Path("e.ckpt"), Path("o"), dec_key="env:MS_KEY", dec_mode="AES-CBC"),
    ]


def test_inspect_and_checksum_pass_the_key_spec_not_the_key(run_cli, monkeypatch):
    import llmkit.summary as summary
    import llmkit.verify as verify
    from llmkit.summary import InspectOptions
    from llmkit.verify import ChecksumOptions

    seen = []

    def record(options, **kwargs):
        seen.append(options)
        raise SystemExit(0)

    monkeypatch.setattr(summary, "inspect_model", record)
    monkeypatch.setattr(verify, "checksum", record)
    run_cli("inspect", "e.ckpt", "--dec-key", "env:MS_KEY")
    run_cli("checksum", "--tensors", "e.ckpt", "--dec-key", "k.bin", "--dec-mode", "SM4-CBC")
    assert seen == [
        InspectOptions(Path("e.ckpt"), dec_key="env:MS_KEY"),
        ChecksumOptions((Path("e.ckpt"),), tensors=True, dec_key="k.bin", dec_mode="SM4-CBC"),
    ]


@pytest.mark.parametrize(
    "args, option",
    [
        (["to-ckpt", "m", "-o", "o", "--names", "keep"], "--names"),
        (["to-ckpt", "m", "-o", "o", "--rotary", "gptj"], "--rotary"),
        (["to-ckpt", "m", "-o", "o", "--format", "bin"], "--format"),
        (["from-ckpt", "x.ckpt", "-o", "o", "--names", "mindformers"], "--names"),
        (["from-ckpt", "x.ckpt", "-o", "o", "--format", "ckpt"], "--format"),
        (["to-ckpt", "m"], "--output"),
        (["to-ckpt", "m", "-o", "o", "--enc-key", "k", "--enc-mode", "DES"], "--enc-mode"),
        (["from-ckpt", "x.ckpt", "-o", "o", "--dec-mode", "AES-CTR"], "--dec-mode"),
    ],
)
def test_bad_flags_never_reach_the_library(run_cli, calls, args, option):
    r = run_cli(*args)
    assert r.exit_code == 2 and calls == [] and r.stderr.startswith("error: ") and option in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
