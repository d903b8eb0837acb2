"""Hardening of ``llmkit decrypt`` / ``llmkit encrypt``: truncated plaintexts are errors, pipes never carry
garbage, folders are all-or-nothing, inputs are never written, published tables stay verified.

Plaintexts are real files (safetensors, torch zip, JSON, SentencePiece) encrypted here with the SPEC.md 1
loop (``upstream_xor``), never with llmkit.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import resource
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import typer.main
from common import enc_name, write_file
from spec_reference import upstream_xor

import llmkit.crypto as crypto
import llmkit.crypto.jobs as crypto_jobs
import llmkit.crypto.tables as crypto_tables
from llmkit.cli import app
from llmkit.errors import CheckFailed

C = 10 * 1024 * 1024
LLMKIT = Path(sys.executable).parent / "llmkit"
KINDS = ["model.safetensors", "pytorch_model.bin", "config.json", "tokenizer.model"]
FOLDER = ["config.json", "generation_config.json", "model.safetensors"]  # the big one sorts last


def files_in(folder: Path) -> list[str]:
    """Every file left under ``folder`` (recursively, hidden and temporary ones included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error:"), stderr
    return lines[-1]


def says_truncated(text: str) -> bool:
    return "truncated" in text.lower() or "incomplete" in text.lower()


# ------------------------------------------------------------------ real plaintexts and their truncations


def _protobuf_fields(buf: bytes):
    """(start, end) of each top-level protobuf field."""

    def varint(i: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            b = buf[i]
            value |= (b & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if not b & 0x80:
                return value, i

    i = 0
    while i < len(buf):
        start = i
        tag, i = varint(i)
        wire = tag & 7
        if wire == 0:
            i = varint(i)[1]
        elif wire == 2:
            n, i = varint(i)
            i += n
        else:
            i += {1: 8, 5: 4}[wire]
        yield start, i


def truncate(name: str, data: bytes) -> bytes:
    if name.endswith(".safetensors"):
        return data[: int(len(data) * 0.6)]
    if name.endswith(".bin"):  # end right after the central directory: no (zip64) end-of-central-directory
        cut = min(i for i in (data.rfind(b"PK\x06\x06"), data.rfind(b"PK\x05\x06")) if i >= 0)
        return data[:cut]
    if name.endswith(".json"):
        return data[: len(data) // 2]
    start, end = next((s, e) for s, e in _protobuf_fields(data) if s < len(data) // 2 < e)
    cut = (start + end) // 2
    assert start < cut < end
    return data[:cut]


def safetensors_bytes(seed: int, rows: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return safetensors.torch.save(
        {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(rows, 160, generator=g) for i in range(3)}
    )


@pytest.fixture(scope="module")
def plains(tiny_factory) -> dict[str, bytes]:
    g = torch.Generator().manual_seed(1)
    buf = io.BytesIO()
    torch.save({f"model.layers.{i}.self_attn.q_proj.weight": torch.randn(64, 200, generator=g) for i in range(3)}, buf)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "rms_norm_eps": 1e-6,
        "vocab_size": 32000,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float16",
    }
    tokenizer = tiny_factory("safetensors").path / "tokenizer.model"
    assert tokenizer.is_file()
    return {
        "model.safetensors": safetensors_bytes(0, 160),  # ~307 KB
        "pytorch_model.bin": buf.getvalue(),
        "config.json": json.dumps(config, indent=2).encode() + b"\n",
        "tokenizer.model": tokenizer.read_bytes(),
    }


@pytest.fixture
def key(tmp_path) -> Path:
    return write_file(tmp_path / "key.pth", random.Random(1).randbytes(1_000_003))


@pytest.fixture
def wrong_key(tmp_path) -> Path:
    return write_file(tmp_path / "wrong.pth", random.Random(2).randbytes(1_000_003))


@pytest.fixture
def model_folder(tmp_path) -> dict[str, bytes]:
    """Plaintexts of a three-file folder; the safetensors is > 3 MB."""
    gen = {"bos_token_id": 1, "eos_token_id": 2, "max_new_tokens": 512, "temperature": 0.2}
    return {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 4096}, indent=2).encode(),
        "generation_config.json": json.dumps(gen, indent=2).encode(),
        "model.safetensors": safetensors_bytes(3, 1700),
    }  # 3 x 1700 x 160 x 4 bytes = 3.3 MB


def enc_folder(folder: Path, plain: dict[str, bytes], key: Path) -> Path:
    for name, data in plain.items():
        write_file(folder / enc_name(name), upstream_xor(data, key))
    return folder


def run_proc(*args, limit: bool = False) -> subprocess.CompletedProcess:
    def limit_file_size() -> None:  # the big write fails with EFBIG instead of killing the process
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    return subprocess.run(
        [str(LLMKIT), *map(str, args)], capture_output=True, timeout=120, preexec_fn=limit_file_size if limit else None
    )


def pipe_from(src: Path, *args) -> subprocess.CompletedProcess:
    """``cat SRC | llmkit ARGS``: stdin is a real pipe (no size), stdout bytes are exact."""
    cmd = f"cat {shlex.quote(str(src))} | {shlex.quote(str(LLMKIT))} " + " ".join(shlex.quote(str(a)) for a in args)
    return subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=120)


# ------------------------------------------------------------------ 1, 2: truncated plaintexts are errors


@pytest.mark.parametrize("name", KINDS)
def test_truncated_plaintext_is_an_error_naming_the_file_and_nothing_is_written(run_cli, tmp_path, plains, key, name):
    data = truncate(name, plains[name])
    assert 0 < len(data) < len(plains[name])
    enc = write_file(tmp_path / "enc" / enc_name(name), upstream_xor(data, key))
    r = run_cli("decrypt", enc, "--key", key, "-o", tmp_path / "out", "--no-key-check")
    assert r.exit_code == 1, r.stderr
    line = error_line(r.stderr)
    assert name in line and says_truncated(line), line
    assert files_in(tmp_path / "out") == []


def test_truncated_safetensors_to_stdout_fails(run_cli, tmp_path, plains, key):
    data = truncate("model.safetensors", plains["model.safetensors"])
    enc = write_file(tmp_path / enc_name("model.safetensors"), upstream_xor(data, key))
    r = run_cli("decrypt", enc, "--key", key, "-o", "-", "--no-key-check")
    assert r.exit_code != 0
    assert says_truncated(error_line(r.stderr))


@pytest.mark.parametrize("name", KINDS)
def test_complete_file_of_each_kind_decrypts_exactly(run_cli, tmp_path, plains, key, name):
    enc = write_file(tmp_path / "enc" / enc_name(name), upstream_xor(plains[name], key))
    r = run_cli("decrypt", enc, "--key", key, "-o", tmp_path / "out", "--no-key-check", "--no-table-check")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "out" / name).read_bytes() == plains[name]
    assert files_in(tmp_path / "out") == [name]


# ------------------------------------------------------------------ 3, 4: pipes never carry garbage


def test_wrong_key_to_stdout_writes_nothing(tmp_path, plains, key, wrong_key):
    enc = write_file(tmp_path / enc_name("model.safetensors"), upstream_xor(plains["model.safetensors"], key))
    r = run_proc("decrypt", enc, "--key", wrong_key, "-o", "-", "--no-key-check")
    assert r.returncode != 0
    assert r.stdout == b""
    assert error_line(r.stderr.decode()).startswith("error:")


def _looks_like_no_known_kind(head: bytes) -> bool:
    safetensors_like = int.from_bytes(head[:8], "little") < 100_000_000 and head[8:9] == b"{"
    return head[:1] not in b"{[ \t\r\n\x0aP\xef" and not safetensors_like


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_stdin_with_a_wrong_key_is_sniffed_as_garbage_and_writes_nothing(tmp_path, plains, key, wrong_key, name):
    enc = write_file(tmp_path / enc_name(name), upstream_xor(plains[name], key))
    garbage = upstream_xor(enc.read_bytes()[:64], wrong_key)
    assert _looks_like_no_known_kind(garbage)  # the precondition: the wrong key really yields garbage here
    r = pipe_from(enc, "decrypt", "-", "--format", "techgpt", "--key", wrong_key, "--no-key-check", "-o", "-")
    assert r.returncode != 0, r.stderr
    assert r.stdout == b""
    error_line(r.stderr.decode())


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_stdin_with_the_right_key_streams_exact_bytes(tmp_path, plains, key, name):
    enc = write_file(tmp_path / enc_name(name), upstream_xor(plains[name], key))
    r = pipe_from(enc, "decrypt", "-", "--format", "techgpt", "--key", key, "--no-key-check", "-o", "-", "-q")
    assert r.returncode == 0, r.stderr
    assert r.stdout == plains[name]


def test_stdin_truncated_safetensors_fails_late_with_exit_1(tmp_path, plains, key):
    enc = write_file(tmp_path / "x.enc", upstream_xor(truncate("model.safetensors", plains["model.safetensors"]), key))
    r = pipe_from(enc, "decrypt", "-", "--format", "techgpt", "--key", key, "--no-key-check", "-o", "-")
    assert r.returncode == 1, r.stderr
    assert says_truncated(r.stderr.decode())


# ------------------------------------------------------------------ 5: --no-content-check


def test_no_content_check_keeps_a_truncated_plaintext_exactly(run_cli, tmp_path, plains, key):
    data = truncate("model.safetensors", plains["model.safetensors"])
    enc = write_file(tmp_path / "enc" / enc_name("model.safetensors"), upstream_xor(data, key))
    r = run_cli("decrypt", enc, "--key", key, "-o", tmp_path / "out", "--no-key-check", "--no-content-check")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == data


def test_help_documents_no_content_check_and_that_no_key_check_keeps_content_checks(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    r = run_cli("decrypt", "--help")
    assert r.exit_code == 0
    assert "--no-content-check" in r.stdout
    command = typer.main.get_command(app).commands["decrypt"]
    help_of = {opt: p.help or "" for p in command.params for opt in p.opts}
    assert "--no-content-check" in help_of
    assert "content" in help_of["--no-key-check"].lower(), help_of["--no-key-check"]


# ------------------------------------------------------------------ 6: folders are all-or-nothing


def test_write_error_in_the_last_file_keeps_nothing_of_the_folder(tmp_path, model_folder, key):
    enc = enc_folder(tmp_path / "enc", model_folder, key)
    r = run_proc(
        "decrypt", enc, "--key", key, "-o", tmp_path / "out", "--no-key-check", "--no-table-check", "-q", limit=True
    )
    assert r.returncode > 0, r.stderr
    stderr = r.stderr.decode()
    assert files_in(tmp_path / "out") == []
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.safetensors" in errors[0], stderr  # names the file that failed


def test_ctrl_c_in_the_last_file_keeps_nothing_of_the_folder(tmp_path, model_folder, key, monkeypatch):
    enc = enc_folder(tmp_path / "enc", model_folder, key)
    real, calls = crypto.xor_stream, []

    def interrupted_on_the_third(*args, **kwargs):
        calls.append(1)
        n = real(*args, **kwargs)  # the file is fully processed, then Ctrl-C arrives
        if len(calls) == 3:
            raise KeyboardInterrupt
        return n

    monkeypatch.setattr(crypto_jobs, "xor_stream", interrupted_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        crypto.decrypt([enc], key, tmp_path / "out", key_check=False, table_check=False)
    assert len(calls) == 3
    assert files_in(tmp_path / "out") == []


def test_rerun_after_a_failed_folder_succeeds_without_force(run_cli, tmp_path, model_folder, key):
    enc = enc_folder(tmp_path / "enc", model_folder, key)
    failed = run_proc(
        "decrypt", enc, "--key", key, "-o", tmp_path / "out", "--no-key-check", "--no-table-check", "-q", limit=True
    )
    assert failed.returncode > 0
    r = run_cli("decrypt", enc, "--key", key, "-o", tmp_path / "out", "--no-key-check", "--no-table-check")
    assert r.exit_code == 0, r.stderr
    assert files_in(tmp_path / "out") == sorted(model_folder)
    for name, data in model_folder.items():
        assert (tmp_path / "out" / name).read_bytes() == data


def test_encrypt_write_error_keeps_nothing_of_the_folder(tmp_path, model_folder, key):
    for name, data in model_folder.items():
        write_file(tmp_path / "model" / name, data)
    r = run_proc(
        "encrypt", tmp_path / "model", "--key", key, "-o", tmp_path / "out", "--no-key-check", "-q", limit=True
    )
    assert r.returncode > 0, r.stderr
    assert len([line for line in r.stderr.decode().splitlines() if line.startswith("error:")]) == 1
    assert files_in(tmp_path / "out") == []


# ------------------------------------------------------------------ 7: inputs are never touched


@pytest.mark.parametrize(
    "case", ["decrypt-into-itself", "decrypt-into-a-subfolder", "encrypt-into-itself", "decrypt-a-file-into-its-folder"]
)
def test_output_inside_the_input_folder_is_refused_and_the_inputs_are_unchanged(run_cli, tmp_path, plains, key, case):
    d = tmp_path / "d"
    small = {n: plains[n] for n in ("config.json", "tokenizer.model")}
    if case.startswith("encrypt"):
        for name, data in small.items():
            write_file(d / name, data)
        args = ("encrypt", d, "-o", d)
    else:
        enc_folder(d, small, key)
        src = d / enc_name("config.json") if case == "decrypt-a-file-into-its-folder" else d
        args = ("decrypt", src, "-o", d / "sub" if case == "decrypt-into-a-subfolder" else d)
    before = snapshot(d)
    r = run_cli(*args, "--key", key, "--no-key-check")
    assert r.exit_code == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert snapshot(d) == before


# ------------------------------------------------------------------ 8: published tables stay verified


def _fake_published(monkeypatch, table: dict[str, str]) -> None:
    monkeypatch.setattr(
        crypto_tables, "_published", lambda name, *a, **k: [("fake-table", table[name])] if name in table else []
    )


def test_published_output_md5_is_verified(tmp_path, plains, key, monkeypatch):
    data = plains["model.safetensors"]
    enc = write_file(tmp_path / "enc" / enc_name("model.safetensors"), upstream_xor(data, key))
    _fake_published(monkeypatch, {"model.safetensors": hashlib.md5(data).hexdigest()})
    result = crypto.decrypt([enc], key, tmp_path / "out", key_check=False)
    f = result.files[0]
    assert f.md5 == hashlib.md5(data).hexdigest()
    assert any(c.name == "output md5" and c.status == "ok" for c in f.checks), f.checks
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == data


def test_published_input_with_a_wrong_output_md5_fails_and_keeps_nothing(tmp_path, plains, key, monkeypatch):
    data = plains["model.safetensors"]
    enc_bytes = upstream_xor(data, key)
    enc = write_file(tmp_path / "enc" / enc_name("model.safetensors"), enc_bytes)
    _fake_published(monkeypatch, {enc.name: hashlib.md5(enc_bytes).hexdigest(), "model.safetensors": "0" * 32})
    with pytest.raises(CheckFailed):
        crypto.decrypt([enc], key, tmp_path / "out", key_check=False)
    assert files_in(tmp_path / "out") == []
