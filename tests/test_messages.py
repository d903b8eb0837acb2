"""Wording: messages say each thing once and say what is true for the command and the file format."""

from __future__ import annotations

import hashlib

import pytest
import torch
from common import one_error_line
from safetensors.torch import load_file, save_file

from llmkit.summary import describe_hidden_size, guess_architecture
from llmkit.tiny import save_tiny_model, tiny_model
from llmkit.tiny_lora import save_tiny_base
from llmkit.verify import classify_mismatch


@pytest.fixture(scope="module")
def narrow_model(tmp_path_factory):
    """A tiny LLaMA with hidden size 32 (the usual tiny model has 64): same names, other shapes."""
    folder = tmp_path_factory.mktemp("hidden32")
    tiny_model(3, hidden=32, intermediate=64).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("command", ["recover", "make-diff"])
def test_hidden_size_mismatch_names_each_size_once(run_cli, tiny_factory, narrow_model, tmp_path, command):
    other = "--diff" if command == "recover" else "--target"
    line = one_error_line(
        run_cli(command, "--base", tiny_factory("safetensors").path, other, narrow_model, "-o", tmp_path / "out")
    )
    assert "LLaMA-like (hidden size 64)" in line and "LLaMA-like (hidden size 32)" in line, line
    assert line.count("hidden size 32") == 1 and line.count("hidden size 64") == 1, line
    assert "(hidden 32)" not in line and "(hidden 64)" not in line and ") (" not in line.split(". The base")[1]


def test_describe_hidden_size_names_known_sizes_with_the_number():
    assert describe_hidden_size(5120) == "LLaMA-13B (hidden size 5120)"
    assert describe_hidden_size(32) == "LLaMA-like (hidden size 32)"
    assert guess_architecture(4096) == "LLaMA-7B"  # inspect's architecture row is unchanged


@pytest.fixture(scope="module")
def wide_vocab(tmp_path_factory):
    """A tiny LLaMA with a 101-token vocabulary (an extended tokenizer), no tokenizer files."""
    folder = tmp_path_factory.mktemp("vocab101")
    save_tiny_base(folder, seed=5, vocab_size=101)
    return folder


def test_make_diff_vocab_mismatch_does_not_tell_the_user_to_recover(run_cli, tiny_factory, wide_vocab, tmp_path):
    line = one_error_line(
        run_cli("make-diff", "--base", tiny_factory("safetensors").path, "--target", wide_vocab, "-o", tmp_path / "out")
    )
    assert "100-token vocabulary but the tuned model 101" in line, line
    assert "recover" not in line.lower(), line
    assert "pass the 101-token model the tuned model was trained from as --base" in line, line


def test_recover_vocab_mismatch_still_says_recover_from_the_extended_model(run_cli, tiny_factory, wide_vocab, tmp_path):
    line = one_error_line(
        run_cli("recover", "--base", tiny_factory("safetensors").path, "--diff", wide_vocab, "-o", tmp_path / "out")
    )
    assert "recover from the 101-token model the diff was made from" in line, line


def test_changed_safetensors_is_explained_with_what_is_true_for_safetensors(tmp_path):
    original = tmp_path / "published" / "model.safetensors"
    original.parent.mkdir()
    state = {"a": torch.arange(6, dtype=torch.float32), "b": torch.ones(2, 3)}
    save_file(state, original, metadata={"format": "pt"})
    published_md5 = hashlib.md5(original.read_bytes()).hexdigest()
    mine = tmp_path / "mine" / "model.safetensors"
    mine.parent.mkdir()
    save_file(state, mine, metadata={"format": "pt", "written_by": "another tool"})  # equal tensors
    assert load_file(mine).keys() == state.keys() and hashlib.md5(mine.read_bytes()).hexdigest() != published_md5
    note = classify_mismatch(mine, published_md5, "md5")
    assert "torch" not in note and ".bin" not in note, note
    assert "readable safetensors checkpoint with 2 tensors" in note
    assert "safetensors bytes are deterministic" in note and "metadata" in note and "order" in note, note
    assert f"llmkit verify --tensors {mine} REFERENCE" in note


def test_changed_bin_is_still_explained_by_the_torch_version(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"a": torch.ones(3)}, path)
    note = classify_mismatch(path, "0" * 32, "md5")
    assert ".bin bytes depend on the torch/transformers version" in note, note


def test_verify_cli_shows_the_safetensors_note(run_cli, tmp_path):
    folder = tmp_path / "model"
    save_tiny_model(folder, "safetensors", tokenizer=False)
    table = tmp_path / "t.md5"
    table.write_text(f"{'0' * 32}  model.safetensors\n")
    r = run_cli("verify", "--table", table, folder, "--json")
    assert r.exit_code == 1
    notes = [f["note"] for f in r.json()["files"] if f["path"].endswith("model.safetensors")]
    assert notes and "safetensors bytes are deterministic" in notes[0], notes
