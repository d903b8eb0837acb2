"""Shared fixtures: tiny LLaMA models in every layout (written by transformers/torch, not llmkit),
and a runner for the real CLI."""

from __future__ import annotations

import json
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
