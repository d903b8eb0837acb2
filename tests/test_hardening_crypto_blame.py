"""A damaged TechGPT / BELLE ``.enc`` file is not blamed on the key alone: the error says which causes remain and
which check tells them apart (the key's md5 check; the published .enc MD5s through ``llmkit verify``; for BELLE,
whose header is the sha256 of the decrypted bytes, the hub's sha256 through ``llmkit download``).

Encrypted here with the SPEC.md 1 loop (``upstream_xor``), never with llmkit.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import safetensors.torch
import torch
from common import EMPTY, only_error_line
from spec_reference import upstream_xor

import llmkit.crypto.keycheck as crypto_keycheck
import llmkit.crypto.tables as crypto_tables


@pytest.fixture
def key(tmp_path, monkeypatch) -> Path:
    """A key the key check accepts (its size and md5 patched in, as the crypto tests do)."""
    data = random.Random(1).randbytes(1_000_003)
    path = tmp_path / "key" / "consolidated.00.pth"
    path.parent.mkdir()
    path.write_bytes(data)
    monkeypatch.setattr(crypto_keycheck, "KEY_SIZE", len(data))
    monkeypatch.setattr(crypto_keycheck, "KEY_MD5", hashlib.md5(data).hexdigest())
    monkeypatch.setenv("LLMKIT_CACHE_DIR", str(tmp_path / "cache"))
    return path


def config_bytes() -> bytes:
    return json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "vocab_size": 32000}).encode()


def techgpt_enc(folder: Path, name: str, plain: bytes, key: Path, damage_at: int) -> Path:
    enc = bytearray(upstream_xor(plain, key))
    enc[damage_at] ^= 0xFF  # one damaged byte of the download
    path = folder / f"{name}.{EMPTY}.enc"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(enc))
    return path


def belle_enc(folder: Path, name: str, plain: bytes, key: Path, damage_at: int) -> Path:
    digest = hashlib.sha256(plain).digest()
    enc = bytearray(digest + upstream_xor(plain, key))
    enc[32 + damage_at] ^= 0xFF
    path = folder / f"{name}.{digest.hex()}.enc"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(enc))
    return path


def safetensors_plain() -> bytes:
    g = torch.Generator().manual_seed(0)
    return safetensors.torch.save({"w": torch.randn(64, 64, generator=g)})


def test_a_damaged_techgpt_file_with_a_checked_key_is_called_damaged_not_a_wrong_key(run_cli, tmp_path, key):
    enc = techgpt_enc(tmp_path / "enc", "config.json", config_bytes(), key, damage_at=0)
    r = run_cli("decrypt", enc, "--key", key, "-o", tmp_path / "out")
    assert r.exit_code == 1, r.stderr
    line = only_error_line(r.stderr)
    assert "md5 was checked" in line and "damaged" in line, line
    assert "either" not in line and "the key is not" not in line, line
    assert not (tmp_path / "out").exists()


def test_a_damaged_techgpt_file_without_the_key_check_names_both_causes_and_the_verify_command(
    run_cli, tmp_path, key, monkeypatch
):
    enc = techgpt_enc(tmp_path / "enc", "config.json", config_bytes(), key, damage_at=0)
    monkeypatch.setattr(
        crypto_tables, "_published", lambda name: [("techgpt-7b.enc", "0" * 32)] if name == enc.name else []
    )
    r = run_cli("decrypt", enc, "--key", key, "--no-key-check", "-o", tmp_path / "out")
    assert r.exit_code == 1, r.stderr
    line = only_error_line(r.stderr)
    assert "either the key" in line and "damaged" in line, line
    assert "--no-key-check" in line, line
    assert f"llmkit verify {enc.parent} --table techgpt-7b.enc" in line, line


def test_a_damaged_belle_file_says_that_its_header_cannot_tell_a_damaged_file_from_a_wrong_key(run_cli, tmp_path, key):
    plain = safetensors_plain()
    enc = belle_enc(tmp_path / "enc", "model.safetensors", plain, key, damage_at=len(plain) - 100)  # tensor data
    r = run_cli("decrypt", enc, "--key", key, "--no-key-check", "-o", tmp_path / "out")
    assert r.exit_code == 1, r.stderr
    line = only_error_line(r.stderr)
    assert "either the key" in line and "damaged" in line, line
    assert "cannot tell" in line and "--no-key-check" in line and "llmkit download" in line, line
    assert not (tmp_path / "out").exists()


def test_a_damaged_belle_file_with_a_checked_key_is_called_damaged(run_cli, tmp_path, key):
    plain = safetensors_plain()
    enc = belle_enc(tmp_path / "enc", "model.safetensors", plain, key, damage_at=len(plain) - 100)
    r = run_cli("decrypt", enc, "--key", key, "-o", tmp_path / "out")
    assert r.exit_code == 1, r.stderr
    line = only_error_line(r.stderr)
    assert "md5 was checked" in line and "damaged" in line and "either" not in line, line


def test_a_wrong_key_without_the_key_check_still_names_the_key_first(run_cli, tmp_path, key):
    """Garbage from a wrong key: the same two causes, the key named (the content check stops it early)."""
    wrong = tmp_path / "wrong.pth"
    wrong.write_bytes(random.Random(2).randbytes(1_000_003))
    enc = tmp_path / "enc" / f"config.json.{EMPTY}.enc"
    enc.parent.mkdir()
    enc.write_bytes(upstream_xor(config_bytes(), key))
    r = run_cli("decrypt", enc, "--key", wrong, "--no-key-check", "-o", tmp_path / "out")
    assert r.exit_code == 1, r.stderr
    line = only_error_line(r.stderr)
    assert "either the key is not" in line and "--no-content-check" in line, line


# ---------------------------------------------------------------- names that give no output name


@pytest.mark.parametrize("name", [f"..{EMPTY}.enc", f"...{EMPTY}.enc", ".enc"], ids=["dot", "dotdot", "empty"])
def test_an_enc_name_whose_output_name_would_be_dot_dotdot_or_empty_is_refused_up_front(run_cli, tmp_path, key, name):
    """``..<hex>.enc`` would decrypt to ``.``, ``...<hex>.enc`` to ``..``, ``.enc`` to nothing: refused with one
    line naming the file, before anything is created."""
    enc = tmp_path / "enc" / name
    enc.parent.mkdir()
    enc.write_bytes(upstream_xor(config_bytes(), key))
    before = enc.read_bytes()
    for args in ([enc], [enc.parent]):
        r = run_cli("decrypt", *args, "--key", key, "--no-key-check", "-o", tmp_path / "out")
        assert r.exit_code == 2, (r.exit_code, r.stderr)
        line = only_error_line(r.stderr)
        assert str(enc) in line and "output name" in line, line
        assert "llmkit-stage" not in line and "folder where a file" not in line, line
        assert sorted(p.name for p in tmp_path.iterdir()) == ["enc", "key"], list(tmp_path.iterdir())
        assert [p.name for p in enc.parent.iterdir()] == [name] and enc.read_bytes() == before
