"""merge-lora tells a Chinese-LLaMA (49953) tokenizer.model from a Chinese-Alpaca (49954) one by its
published sha256, even where the token count agrees (an added_tokens.json beside the wrong model). The
tiny adapters stand in: a test table lists the tiny tokenizer.model as the 100-token one."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from common import one_error_line

from llmkit.tiny import TINY_VOCAB


def _write_tokenizer_tables(folder: Path, llama_model: Path) -> None:
    folder.mkdir()
    digest = hashlib.sha256(llama_model.read_bytes()).hexdigest()
    (folder / "tiny-llama-tokenizer.sha256").write_text(
        f"# Tiny 100-token tokenizer (test table).\n# Source: this test.\n# describes: tokenizer vocab={TINY_VOCAB}\n"
        f"{digest}  tokenizer.model\n"
    )
    (folder / "tiny-alpaca-tokenizer.sha256").write_text(
        f"# Tiny 101-token tokenizer (test table).\n# Source: this test.\n# describes: tokenizer vocab={TINY_VOCAB + 1}\n"
        f"{'1' * 64}  tokenizer.model\n"
    )


@pytest.fixture
def tables(lora_work, tmp_path, monkeypatch) -> Path:
    # Both tiny adapters were written with the same SentencePiece model; the "llama" one is the 100-token one.
    assert (lora_work / "llama" / "tokenizer.model").read_bytes() == (
        lora_work / "alpaca" / "tokenizer.model"
    ).read_bytes()
    folder = tmp_path / "tables"
    _write_tokenizer_tables(folder, lora_work / "llama" / "tokenizer.model")
    monkeypatch.setenv("LLMKIT_CHECKSUMS", str(folder))
    return folder


def test_an_alpaca_adapter_beside_the_published_llama_tokenizer_model_is_refused(lora_work, tables, run_cli, tmp_path):
    # The alpaca-like folder's count is 101 (added_tokens.json), as its weights; its tokenizer.model is the 100 one.
    r = run_cli("merge-lora", "--base", lora_work / "base", "--lora", lora_work / "alpaca", "-o", tmp_path / "out")
    line = one_error_line(r, "tokenizer.model", "tiny-llama-tokenizer", str(TINY_VOCAB + 1))
    assert "sha256" in line
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_folder_given_with_tokenizer_is_checked_by_its_published_hash(lora_work, tables, run_cli, tmp_path):
    tok = tmp_path / "tok"
    shutil.copytree(lora_work / "alpaca", tok)
    for name in ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json"):
        (tok / name).unlink(missing_ok=True)
    r = run_cli(
        "merge-lora",
        "--base",
        lora_work / "base",
        "--lora",
        lora_work / "llama",
        "--tokenizer",
        tok,
        "-o",
        tmp_path / "out",
    )
    one_error_line(r, "tokenizer.model", "tiny-llama-tokenizer")


def test_the_published_tokenizer_of_the_right_size_merges(lora_work, tables, run_cli, tmp_path):
    r = run_cli("merge-lora", "--base", lora_work / "base", "--lora", lora_work / "llama", "-o", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
