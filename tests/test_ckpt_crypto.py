"""Encrypted MindSpore checkpoints without MindSpore: golden files MindSpore 2.10 encrypted
(tests/data/ckpt/enc-*.ckpt, key in make_golden.py), their bytes reproduced from their IVs, multi-block
streams at a small block size, keys from files and env:VAR, and every failure as one line with no output."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from common import one_error_line
from test_ckpt_format import GOLDEN, same

import llmkit.io.mindspore.crypto as crypto
from llmkit.errors import InputError
from llmkit.io.core.sink import open_sink
from llmkit.io.core.spec import TensorSpec
from llmkit.io.mindspore.crypto import DecryptedFile, encrypt_block, encrypted_size
from llmkit.io.mindspore.keys import CkptKey, read_key
from llmkit.io.mindspore.reader import CkptFile

DATA = Path(__file__).parent / "data" / "ckpt"
KEY_HEX = "000102030405060708090a0b0c0d0e0f"  # make_golden.py's KEY
KEY = CkptKey(bytes.fromhex(KEY_HEX), None, "test key")
MODES = ["AES-GCM", "AES-CBC", "SM4-CBC"]


def ivs_of(path: Path, mode: str) -> list[bytes]:
    """The IV of every block of an encrypted checkpoint, read with the layout written out here."""
    data, ivs, pos = path.read_bytes(), [], 0
    while pos < len(data):
        head = 4 + (16 if mode == "AES-GCM" else 0)  # magic (+ GCM tag)
        block_size, iv_len = struct.unpack_from("<II", data, pos + head)
        ivs.append(data[pos + head + 8 : pos + head + 8 + iv_len])
        pos += head + 4 + block_size
    return ivs


def write(path: Path, tensors: dict[str, torch.Tensor], mode: str, key: CkptKey = KEY, ivs=None) -> Path:
    from llmkit.io.mindspore.ckpt import CkptLayout
    from llmkit.io.mindspore.sink import CkptSink

    specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    sink = CkptSink(path, specs, enc_key=key, enc_mode=mode)
    if ivs is not None:
        sink.layout = CkptLayout(False, key, mode, iter(ivs))
    with sink:
        for k, v in tensors.items():
            sink.write(k, v)
    return path


@pytest.mark.parametrize("mode", MODES)
def test_llmkit_reads_what_mindspore_encrypted(mode):
    f = CkptFile(DATA / f"enc-{mode}.ckpt", KEY)
    try:
        assert f.encryption == mode and list(f.infos) == list(GOLDEN)
        for k, v in GOLDEN.items():
            assert same(f.get(k), v), k
    finally:
        f.close()


@pytest.mark.parametrize("mode", MODES)
def test_given_mindspores_ivs_llmkit_writes_mindspores_bytes(tmp_path, mode):
    ms_file = DATA / f"enc-{mode}.ckpt"
    ours = write(tmp_path / "x.ckpt", GOLDEN, mode, ivs=ivs_of(ms_file, mode))
    assert ours.read_bytes() == ms_file.read_bytes()
    # ... and the one-block function agrees: the plaintext is exactly MindSpore's unencrypted file.
    plain = (DATA / "golden.ckpt").read_bytes()
    assert encrypt_block(plain, KEY.key, mode, ivs_of(ms_file, mode)[0]) == ms_file.read_bytes()


@pytest.mark.parametrize("mode", MODES)
def test_many_blocks_stream_and_read_back_across_block_boundaries(tmp_path, monkeypatch, mode):
    monkeypatch.setattr(crypto, "BLOCK_PLAIN", 64)  # MindSpore: 64 MiB; the same rule at a testable size
    tensors = {
        "a": torch.arange(100, dtype=torch.float32),
        "b": torch.arange(7, dtype=torch.float16),
        "c": torch.arange(33, dtype=torch.int64),
    }
    out = write(tmp_path / "x.ckpt", tensors, mode)
    f = CkptFile(out, KEY)
    try:
        plain = f._plain
        assert isinstance(plain, DecryptedFile) and len(plain.blocks) > 10
        assert all(b.plain_len == 64 for b in plain.blocks[:-1])
        assert out.stat().st_size == encrypted_size(plain.size, mode)
        for k, v in tensors.items():
            assert same(f.get(k), v), k
        # Random access: any range equals the same range of the unencrypted file.
        clear = write_plain(tmp_path / "clear.ckpt", tensors)
        for offset, n in [(0, 10), (60, 10), (63, 130), (plain.size - 5, 5)]:
            assert plain.pread(n, offset) == clear[offset : offset + n]
    finally:
        f.close()


def write_plain(path: Path, tensors: dict[str, torch.Tensor]) -> bytes:
    specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    with open_sink("ckpt", path, specs) as sink:
        for k, v in tensors.items():
            sink.write(k, v)
    return path.read_bytes()


def test_every_block_gets_its_own_random_iv(tmp_path, monkeypatch):
    monkeypatch.setattr(crypto, "BLOCK_PLAIN", 64)
    out = write(tmp_path / "x.ckpt", {"a": torch.arange(100, dtype=torch.float32)}, "AES-GCM")
    ivs = ivs_of(out, "AES-GCM")
    assert len(ivs) > 5 and len(set(ivs)) == len(ivs)


# ------------------------------------------------------------------ keys


def test_keys_come_from_a_file_or_an_environment_variable(tmp_path, monkeypatch):
    (tmp_path / "k").write_bytes(bytes.fromhex(KEY_HEX))
    monkeypatch.setenv("LLMKIT_TEST_KEY", KEY_HEX.upper())
    assert read_key(str(tmp_path / "k"), "AES-GCM", flag="--enc-key").key == KEY.key
    assert read_key("env:LLMKIT_TEST_KEY", "SM4-CBC", flag="--enc-key").key == KEY.key
    assert KEY_HEX not in repr(read_key("env:LLMKIT_TEST_KEY", None, flag="--dec-key"))  # never printed


@pytest.mark.parametrize(
    "spec, setup, words",
    [
        ("env:LLMKIT_UNSET_KEY", None, "environment variable LLMKIT_UNSET_KEY is not set"),
        ("env:LLMKIT_TEST_KEY", "zz-not-hex", "does not hold a hex key"),
        ("missing.key", None, "no such key file"),
        ("key33", b"\x01" * 32 + b"\n", "the key file is 33 bytes; a checkpoint key is 16, 24 or 32 bytes"),
        ("key17", b"\x01" * 16 + b"\n", "has 17 bytes; AES-GCM needs 16, 24 or 32"),
    ],
)
def test_unusable_keys_are_named(tmp_path, monkeypatch, spec, setup, words):
    monkeypatch.chdir(tmp_path)
    if isinstance(setup, str):
        monkeypatch.setenv("LLMKIT_TEST_KEY", setup)
    elif isinstance(setup, bytes):
        (tmp_path / spec).write_bytes(setup)
    with pytest.raises(InputError, match=words):
        read_key(spec, "AES-GCM", flag="--enc-key")


# ------------------------------------------------------------------ failures: one line, nothing written


@pytest.fixture
def model_ckpts(tmp_path, run_cli, tiny_factory, monkeypatch):
    m = tiny_factory("safetensors")
    monkeypatch.setenv("LLMKIT_TEST_KEY", KEY_HEX)
    out = {}
    for mode in MODES:
        out[mode] = tmp_path / f"{mode}.ckpt"
        r = run_cli("to-ckpt", m.path, "-o", out[mode], "--enc-key", "env:LLMKIT_TEST_KEY", "--enc-mode", mode)
        assert r.exit_code == 0, r.stderr
    return m, out


@pytest.mark.parametrize("mode", MODES)
def test_round_trip_through_the_cli_and_a_wrong_key_leaves_no_output(tmp_path, run_cli, model_ckpts, monkeypatch, mode):
    m, ckpts = model_ckpts
    r = run_cli(
        "from-ckpt",
        ckpts[mode],
        "-o",
        tmp_path / "back",
        "--dec-key",
        "env:LLMKIT_TEST_KEY",
        "--config",
        m.path,
        "--json",
    )
    assert r.exit_code == 0 and r.json()["encryption"] == mode
    assert run_cli("verify", "--tensors", tmp_path / "back", m.path).exit_code == 0
    monkeypatch.setenv("LLMKIT_WRONG_KEY", "ff" * 16)
    text = one_error_line(
        run_cli("from-ckpt", ckpts[mode], "-o", tmp_path / "wrong", "--dec-key", "env:LLMKIT_WRONG_KEY")
    )
    assert str(ckpts[mode]) in text and ("tag does not match" in text or "bad padding" in text or "wrong key" in text)
    assert not (tmp_path / "wrong").exists()


def test_inspect_and_checksum_take_the_key_and_say_when_it_is_missing(tmp_path, run_cli, model_ckpts):
    m, ckpts = model_ckpts
    text = one_error_line(run_cli("inspect", ckpts["AES-GCM"]))
    assert "encrypted (AES-GCM)" in text and "--dec-key" in text
    info = run_cli("inspect", ckpts["SM4-CBC"], "--dec-key", "env:LLMKIT_TEST_KEY", "--json").json()
    assert info["encryption"] == "SM4-CBC" and info["tensor_count"] == len(m.state)
    enc = run_cli("checksum", "--tensors", ckpts["AES-CBC"], "--dec-key", "env:LLMKIT_TEST_KEY").stdout
    plain_ckpt = tmp_path / "plain.ckpt"
    assert run_cli("to-ckpt", m.path, "-o", plain_ckpt).exit_code == 0
    plain = run_cli("checksum", "--tensors", plain_ckpt).stdout
    assert enc.splitlines()[2:] == plain.splitlines()[2:]  # same tensors, same digests
    one_error_line(run_cli("checksum", ckpts["AES-CBC"], "--dec-key", "env:LLMKIT_TEST_KEY"))  # needs --tensors


def test_tampering_truncation_and_a_wrong_mode_are_named(tmp_path, run_cli, model_ckpts):
    _, ckpts = model_ckpts
    data = ckpts["AES-GCM"].read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    (tmp_path / "t.ckpt").write_bytes(bytes(flipped))
    assert "tag does not match" in one_error_line(
        run_cli("inspect", tmp_path / "t.ckpt", "--dec-key", "env:LLMKIT_TEST_KEY")
    )
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    assert "runs past the end" in one_error_line(
        run_cli("inspect", tmp_path / "cut.ckpt", "--dec-key", "env:LLMKIT_TEST_KEY")
    )
    text = one_error_line(
        run_cli("inspect", ckpts["AES-GCM"], "--dec-key", "env:LLMKIT_TEST_KEY", "--dec-mode", "AES-CBC")
    )
    assert "encrypted with AES-GCM, not AES-CBC" in text


def test_key_length_and_format_conflicts_are_refused_before_any_output(tmp_path, run_cli, tiny_factory, monkeypatch):
    m = tiny_factory("safetensors")
    (tmp_path / "k32").write_bytes(b"\x07" * 32)
    monkeypatch.setenv("LLMKIT_TEST_KEY", KEY_HEX)
    assert "SM4-CBC needs 16" in one_error_line(
        run_cli("to-ckpt", m.path, "-o", tmp_path / "a.ckpt", "--enc-key", tmp_path / "k32", "--enc-mode", "SM4-CBC")
    )
    assert "--enc-key" in one_error_line(
        run_cli("to-ckpt", m.path, "-o", tmp_path / "c", "--format", "safetensors", "--enc-key", "env:LLMKIT_TEST_KEY")
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k32"]
