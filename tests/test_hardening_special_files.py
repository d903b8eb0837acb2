"""A FIFO, socket or device where an input file belongs is refused with one line, never read.

Opening a FIFO for reading blocks until a writer comes (inspect, to-ckpt and merge-lora used to hang until
killed); a character device never ends. Each case puts one (``os.mkfifo``) where a command expects a weight
file, a config or tokenizer file it reads or carries, an ``.enc`` file or a key, and runs the command in its
own process under a time limit, so a hang fails that case instead of stalling the suite. Expected: exit 2,
one ``error:`` line naming the special file, no output, and the FIFO left as it was.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from common import EMPTY

TIME_LIMIT = 120  # seconds: a run that blocks on a FIFO never ends; a refusal takes a few seconds


def run(args: list) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        return subprocess.run(
            [sys.executable, "-m", "llmkit", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=TIME_LIMIT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"llmkit {' '.join(map(str, args))} still ran after {TIME_LIMIT} s (blocked on a FIFO?)")


def with_fifo(src: Path, dst: Path, name: str) -> Path:
    """A copy of the folder ``src`` whose file ``name`` is a FIFO."""
    shutil.copytree(src, dst)
    (dst / name).unlink(missing_ok=True)
    os.mkfifo(dst / name)
    return dst


@pytest.fixture(scope="module")
def w(tmp_path_factory, lora_work, tiny_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("special")
    z = SimpleNamespace(
        root=root,
        base=lora_work / "base",
        cute=lora_work / "cute",
        alpaca=lora_work / "alpaca",
        tuned=tiny_factory("safetensors", seed=1).path,
        meta=tiny_factory("meta").path,
    )
    z.fifo = root / "model.safetensors"
    os.mkfifo(z.fifo)
    z.fifo_ckpt = root / "model.ckpt"
    os.mkfifo(z.fifo_ckpt)
    z.sock = root / "model.bin"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(z.sock))
    s.close()
    z.xor_key = root / "xor.key"
    z.xor_key.write_bytes(os.urandom(1000))
    z.enc = root / "enc"
    z.enc.mkdir()
    (z.enc / f"w.dat.{EMPTY}.enc").write_bytes(os.urandom(1000))
    z.enc_fifo = root / "enc-fifo"
    z.enc_fifo.mkdir()
    os.mkfifo(z.enc_fifo / f"w.dat.{EMPTY}.enc")
    z.plain = root / "plain"
    z.plain.mkdir()
    os.mkfifo(z.plain / "weights.bin")
    z.weights = with_fifo(z.base, root / "weights", "model.safetensors")
    z.config = with_fifo(z.base, root / "config", "config.json")
    z.tokenizer = with_fifo(z.base, root / "tokenizer", "tokenizer.model")
    z.shard = with_fifo(tiny_factory("safetensors-sharded").path, root / "shard", "model-00002-of-00012.safetensors")
    z.meta_shard = with_fifo(z.meta, root / "meta-shard", "consolidated.00.pth")
    z.meta_params = with_fifo(z.meta, root / "meta-params", "params.json")
    z.meta_tokenizer = with_fifo(z.meta, root / "meta-tokenizer", "tokenizer.model")
    z.adapter_weights = with_fifo(z.cute, root / "adapter-weights", "adapter_model.safetensors")
    z.adapter_config = with_fifo(z.cute, root / "adapter-config", "adapter_config.json")
    z.added_tokens = with_fifo(z.alpaca, root / "added-tokens", "added_tokens.json")
    z.adapter_tokenizer = with_fifo(z.alpaca, root / "adapter-tokenizer", "tokenizer.model")
    return z


# case -> (the command line given OUT, the special file it must name)
CASES = {
    "inspect-weights-in-a-folder": (lambda z, o: ["inspect", z.weights], lambda z: z.weights / "model.safetensors"),
    "inspect-a-fifo-itself": (lambda z, o: ["inspect", z.fifo], lambda z: z.fifo),
    "inspect-a-socket": (lambda z, o: ["inspect", z.sock], lambda z: z.sock),
    "inspect-a-character-device": (lambda z, o: ["inspect", "/dev/zero"], lambda z: "/dev/zero"),
    "inspect-config": (lambda z, o: ["inspect", z.config], lambda z: z.config / "config.json"),
    "inspect-meta-shard": (lambda z, o: ["inspect", z.meta_shard], lambda z: z.meta_shard / "consolidated.00.pth"),
    "inspect-adapter-config": (
        lambda z, o: ["inspect", z.adapter_config],
        lambda z: z.adapter_config / "adapter_config.json",
    ),
    "to-ckpt-weights": (
        lambda z, o: ["to-ckpt", z.weights, "-o", o.with_suffix(".ckpt")],
        lambda z: z.weights / "model.safetensors",
    ),
    "to-ckpt-enc-key": (
        lambda z, o: ["to-ckpt", z.base, "-o", o.with_suffix(".ckpt"), "--enc-key", z.fifo],
        lambda z: z.fifo,
    ),
    "to-meta-carried-tokenizer": (
        lambda z, o: ["to-meta", z.tokenizer, "-o", o],
        lambda z: z.tokenizer / "tokenizer.model",
    ),
    "merge-lora-base-weights": (
        lambda z, o: ["merge-lora", "--base", z.weights, "--lora", z.cute, "-o", o],
        lambda z: z.weights / "model.safetensors",
    ),
    "merge-lora-adapter-weights": (
        lambda z, o: ["merge-lora", "--base", z.base, "--lora", z.adapter_weights, "-o", o],
        lambda z: z.adapter_weights / "adapter_model.safetensors",
    ),
    "merge-lora-added-tokens": (
        lambda z, o: ["merge-lora", "--base", z.base, "--lora", z.added_tokens, "-o", o],
        lambda z: z.added_tokens / "added_tokens.json",
    ),
    "merge-lora-adapter-tokenizer": (
        lambda z, o: ["merge-lora", "--base", z.base, "--lora", z.adapter_tokenizer, "-o", o],
        lambda z: z.adapter_tokenizer / "tokenizer.model",
    ),
    "recover-carried-tokenizer": (
        lambda z, o: ["recover", "--base", z.base, "--diff", z.tokenizer, "-o", o],
        lambda z: z.tokenizer / "tokenizer.model",
    ),
    "from-meta-shard": (
        lambda z, o: ["from-meta", z.meta_shard, "-o", o],
        lambda z: z.meta_shard / "consolidated.00.pth",
    ),
    "from-meta-params": (lambda z, o: ["from-meta", z.meta_params, "-o", o], lambda z: z.meta_params / "params.json"),
    "from-meta-tokenizer": (
        lambda z, o: ["from-meta", z.meta_tokenizer, "-o", o],
        lambda z: z.meta_tokenizer / "tokenizer.model",
    ),
    "from-ckpt": (lambda z, o: ["from-ckpt", z.fifo_ckpt, "-o", o], lambda z: z.fifo_ckpt),
    "checksum-folder": (lambda z, o: ["checksum", z.weights], lambda z: z.weights / "model.safetensors"),
    "checksum-tensors-index-shard": (
        lambda z, o: ["checksum", "--tensors", z.shard],
        lambda z: z.shard / "model-00002-of-00012.safetensors",
    ),
    "verify-tensors": (
        lambda z, o: ["verify", "--tensors", z.weights, z.base],
        lambda z: z.weights / "model.safetensors",
    ),
    "decrypt-enc-in-a-folder": (
        lambda z, o: ["decrypt", z.enc_fifo, "--key", z.xor_key, "--no-key-check", "-o", o],
        lambda z: z.enc_fifo / f"w.dat.{EMPTY}.enc",
    ),
    "decrypt-key": (lambda z, o: ["decrypt", z.enc, "--key", z.fifo, "-o", o], lambda z: z.fifo),
    "encrypt-input-in-a-folder": (
        lambda z, o: ["encrypt", z.plain, "--key", z.xor_key, "--no-key-check", "-o", o],
        lambda z: z.plain / "weights.bin",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_special_file_as_input_is_refused_without_reading_it(tmp_path, w, case):
    command, special = CASES[case]
    out = tmp_path / "out"
    r = run(command(w, out))
    lines = r.stderr.splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    named = str(special(w))
    assert f"error: {named}: " in lines[0], lines[0]
    assert any(kind in lines[0] for kind in ("named pipe (FIFO)", "socket", "character device")), lines[0]
    assert list(tmp_path.iterdir()) == []
    if named != "/dev/zero" and not case.startswith("inspect-a-socket"):
        assert stat.S_ISFIFO(os.stat(named).st_mode)  # left as it was, never replaced


def test_a_regular_copy_of_each_input_still_works(tmp_path, w, run_cli):
    """The same commands on regular files succeed: the check refuses only what is not a regular file."""
    r = run_cli("merge-lora", "--base", w.base, "--lora", w.alpaca, "-o", tmp_path / "merged", "--quiet")
    assert r.exit_code == 0, r.stderr
    r = run_cli("from-meta", w.meta, "-o", tmp_path / "hf", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == (w.meta / "tokenizer.model").read_bytes()
    assert not (tmp_path / "hf" / "tokenizer.model").is_symlink()
