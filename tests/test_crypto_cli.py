"""CLI tests of ``llmkit decrypt`` / ``llmkit encrypt``; expected bytes come from the SPEC.md 1 loop below."""

from __future__ import annotations

import hashlib
import os
import random
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from common import EMPTY
from spec_reference import upstream_xor

import llmkit.crypto.keycheck as crypto_keycheck

C = 10 * 1024 * 1024
LLMKIT = Path(sys.executable).parent / "llmkit"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def setup(tmp_path):
    """A key shorter than the data (the wrap path), a TechGPT-style folder with README.md, a BELLE file."""
    key = write(tmp_path / "key.pth", random.Random(1).randbytes(C + 1_234))
    data = random.Random(2).randbytes(C + 2_000_000)
    enc = tmp_path / "TechGPT-7B"
    write(enc / f"weights.dat.{EMPTY}.enc", upstream_xor(data, key))
    write(enc / "README.md", b"# TechGPT-7B\n")
    write(enc / ".gitattributes", b"*.enc filter=lfs\n")
    digest = hashlib.sha256(data).digest()
    belle = write(tmp_path / "belle" / f"weights.dat.{digest.hex()}.enc", digest + upstream_xor(data, key))
    return tmp_path, key, data, enc, belle


def test_cli_decrypts_a_folder_and_leaves_readme_alone(run_cli, setup):
    tmp, key, data, enc, _ = setup
    r = run_cli("decrypt", enc, "--key", key, "-o", tmp / "out", "--no-key-check")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp / "out").iterdir()) == ["weights.dat"]
    assert (tmp / "out" / "weights.dat").read_bytes() == data
    assert "README.md" in r.stderr and "ignored" in r.stderr
    assert "decrypted" in r.stdout


def test_cli_json_result(run_cli, setup):
    tmp, key, data, _, belle = setup
    r = run_cli("decrypt", belle, "--key", key, "-o", tmp / "out", "--no-key-check", "--json")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    assert doc["key_check"] == "skipped" and doc["bytes"] == len(data)
    f = doc["files"][0]
    assert f["format"] == "belle" and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert {"name": "sha256 header", "status": "ok"}.items() <= f["checks"][0].items()


def test_cli_wrong_key_is_refused_with_exit_2_and_no_output(run_cli, setup):
    tmp, key, _, enc, _ = setup
    r = run_cli("decrypt", enc, "--key", key, "-o", tmp / "out")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert "LLaMA-1 7B consolidated.00.pth" in r.stderr and "LLaMA-2" in r.stderr and "--no-key-check" in r.stderr
    assert not (tmp / "out").exists()


def test_cli_key_check_runs_once_then_uses_the_cache(run_cli, setup, monkeypatch):
    tmp, key, data, enc, _ = setup
    raw = key.read_bytes()
    monkeypatch.setattr(crypto_keycheck, "KEY_SIZE", len(raw))
    monkeypatch.setattr(crypto_keycheck, "KEY_MD5", hashlib.md5(raw).hexdigest())
    monkeypatch.setenv("LLMKIT_CACHE_DIR", str(tmp / "cache"))
    first = run_cli("decrypt", enc, "--key", key, "-o", tmp / "a", "--json")
    second = run_cli("decrypt", enc, "--key", key, "-o", tmp / "b", "--json")
    assert (first.json()["key_check"], second.json()["key_check"]) == ("verified", "verified (cached)")
    assert (tmp / "b" / "weights.dat").read_bytes() == data


def test_cli_existing_output_is_refused_without_force(run_cli, setup):
    tmp, key, data, enc, _ = setup
    write(tmp / "out" / "weights.dat", b"keep me")
    r = run_cli("decrypt", enc, "--key", key, "-o", tmp / "out", "--no-key-check")
    assert r.exit_code == 2 and "--force" in r.stderr
    assert (tmp / "out" / "weights.dat").read_bytes() == b"keep me"
    r = run_cli("decrypt", enc, "--key", key, "-o", tmp / "out", "--no-key-check", "--force")
    assert r.exit_code == 0
    assert (tmp / "out" / "weights.dat").read_bytes() == data


def test_cli_truncated_belle_file_fails_with_exit_1_and_no_output(run_cli, setup):
    tmp, key, _, _, belle = setup
    belle.write_bytes(belle.read_bytes()[:-1])
    r = run_cli("decrypt", belle, "--key", key, "-o", tmp / "out", "--no-key-check")
    assert r.exit_code == 1 and "sha256" in r.stderr
    assert not (tmp / "out").exists()  # not even the folder the run created


def test_cli_stdin_without_format_is_refused(run_cli, setup):
    _, key, _, _, _ = setup
    r = run_cli("decrypt", "-", "--key", key, "-o", "-", "--no-key-check", input=b"abc")
    assert r.exit_code == 2 and "--format" in r.stderr


def test_cli_encrypt_writes_upstream_names_and_bytes(run_cli, tmp_path):
    key = write(tmp_path / "key", random.Random(3).randbytes(5_000_000 + 3))
    model = tmp_path / "model"
    plain = {"config.json": b'{"a": 1}\n', "pytorch_model.bin": random.Random(4).randbytes(6_000_000)}
    for name, data in plain.items():
        write(model / name, data)
    write(model / "README.md", b"# model\n")
    r = run_cli("encrypt", model, "--key", key, "-o", tmp_path / "t", "--no-key-check")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == sorted(f"{n}.{EMPTY}.enc" for n in plain)
    r = run_cli("encrypt", model, "--key", key, "-o", tmp_path / "b", "--no-key-check", "--format", "belle")
    assert r.exit_code == 0, r.stderr
    for name, data in plain.items():
        assert (tmp_path / "t" / f"{name}.{EMPTY}.enc").read_bytes() == upstream_xor(data, key)
        digest = hashlib.sha256(data).digest()
        assert (tmp_path / "b" / f"{name}.{digest.hex()}.enc").read_bytes() == digest + upstream_xor(data, key)


def test_cli_pipeline_from_stdin_to_stdout(setup):
    # cat x.enc | llmkit decrypt - --format techgpt --key K -o - | md5sum, as a real shell pipeline.
    _, key, data, enc, belle = setup
    for fmt, src in (("techgpt", next(enc.glob("*.enc"))), ("belle", belle)):
        cmd = (
            f"set -o pipefail; cat {shlex.quote(str(src))} | {shlex.quote(str(LLMKIT))} decrypt - --format {fmt} "
            f"--key {shlex.quote(str(key))} --no-key-check --no-content-check -o - -q | md5sum"
        )  # random bytes
        r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"})
        assert r.returncode == 0, r.stderr
        assert r.stdout.split()[0] == hashlib.md5(data).hexdigest()


def test_cli_end_to_end_subprocess_with_jobs(setup):
    tmp, key, data, enc, belle = setup
    r = subprocess.run(
        [
            str(LLMKIT),
            "decrypt",
            str(enc),
            str(belle.parent),
            "--key",
            str(key),
            "-o",
            str(tmp / "x"),
            "--no-key-check",
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "both write weights.dat" in r.stderr  # two inputs, one output name
    r = subprocess.run(
        [
            str(LLMKIT),
            "decrypt",
            str(belle.parent),
            "--key",
            str(key),
            "-o",
            str(tmp / "y"),
            "--no-key-check",
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp / "y" / "weights.dat").read_bytes() == data
