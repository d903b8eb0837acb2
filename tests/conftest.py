"""Shared fixtures: tiny LLaMA models in every layout (written by transformers/torch, not llmkit),
and a runner for the real CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.tiny import save_tiny_model


@dataclass
class TinyModel:
    path: Path
    layout: str
    state: dict[str, torch.Tensor]  # the HF state dict the files were written from (the reference)


@pytest.fixture(scope="session")
def tiny_factory(tmp_path_factory):
    """``tiny_factory(layout, seed=0, dtype=torch.float32, layers=2)`` -> TinyModel, cached per session.

    Treat the returned folder as read-only: it is shared between tests.
    """
    cache: dict[tuple, TinyModel] = {}

    def make(
        layout: str = "safetensors", seed: int = 0, dtype: torch.dtype = torch.float32, layers: int = 2
    ) -> TinyModel:
        key = (layout, seed, dtype, layers)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"tiny-{layout}-{seed}")
            state = save_tiny_model(folder, layout, seed=seed, dtype=dtype, layers=layers)
            cache[key] = TinyModel(folder, layout, state)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def lora_work(tmp_path_factory) -> Path:
    """A tiny base (fp32; fp16; bf16 .bin) and three tiny adapters (CuteGPT-, Chinese-LLaMA-, Chinese-Alpaca-like)
    built with peft. Read-only: tests that alter one copy it first."""
    from llmkit.tiny_lora import save_chinese_alpaca_like, save_chinese_llama_like, save_cutegpt_like

    root = tmp_path_factory.mktemp("lora")
    save_tiny_model(root / "base", "safetensors")
    save_tiny_model(root / "base-fp16", "safetensors", dtype=torch.float16)
    save_tiny_model(root / "base-bf16-bin", "bin", dtype=torch.bfloat16)
    save_cutegpt_like(root / "cute")
    save_chinese_llama_like(root / "llama")
    save_chinese_alpaca_like(root / "alpaca")
    return root


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def run_cli():
    """Run ``llmkit ARGS...`` in-process through Typer's runner; stdout and stderr kept apart."""

    def run(*args: str, input: bytes | str | None = None) -> CliResult:
        result = CliRunner().invoke(app, [str(a) for a in args], input=input)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def mindspore_run():
    """``run(script, *args) -> stdout`` in a fresh interpreter that imports mindspore first (the ``mindspore``
    test extra; importing MindSpore switches protobuf's backend for the whole process)."""
    if importlib.util.find_spec("mindspore") is None:
        if os.environ.get("CI"):
            pytest.fail("the mindspore test extra is not installed (pip install -e '.[test,mindspore]')")
        pytest.skip("mindspore is not installed (pip install -e '.[test,mindspore]')")

    def run(script: str, *args: object) -> str:
        code = "import mindspore as ms, numpy as np, sys, json\n" + textwrap.dedent(script)
        proc = subprocess.run(
            [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    return run
