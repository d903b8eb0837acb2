"""AES-CBC / SM4-CBC checkpoints have no integrity check: a flipped ciphertext byte must fail with one
line naming the file, or convert with a warning that the values could not be verified, and never lose a
tensor; with a CRC trailer (``to-ckpt --crc``) every flip is caught.

CBC facts used here (NIST SP 800-38A, 6.2): flipping a bit of ciphertext block i-1 (or of the IV for
i = 0) flips the same bit of plaintext block i and garbles plaintext block i-1; the plaintext of an
encrypted checkpoint is exactly the unencrypted file (docs/mindspore-notes.md), whose records are
parsed here with the protobuf wire format written out below.
"""

from __future__ import annotations

import re
from pathlib import Path

import click.testing
import pytest
import torch
import typer
from safetensors.torch import load_file

import llmkit.io.mindspore.crypto as crypto
from llmkit.cli import app

DATA = Path(__file__).parent / "data" / "ckpt"
KEY_HEX = "000102030405060708090a0b0c0d0e0f"  # tests/data/ckpt/make_golden.py's KEY
CBC = ["AES-CBC", "SM4-CBC"]
WARNING = "has no integrity check"
IV_AT, CT_AT = 12, 32  # CBC block: magic 4, block_size 4, iv_len 4, IV 16, cipher_len 4, ciphertext


class Result:
    def __init__(self, r):
        self.exit_code, self.stdout, self.stderr = r.exit_code, r.stdout, r.stderr


@pytest.fixture(scope="module")
def cli():
    """The CLI built once (hundreds of runs below), run in-process; stdout and stderr kept apart."""
    command = typer.main.get_command(app)

    def run(*args) -> Result:
        r = click.testing.CliRunner().invoke(command, [str(a) for a in args])
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            raise r.exception
        return Result(r)

    return run


def _varint(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        x = b[i]
        i += 1
        n |= (x & 0x7F) << shift
        if not x & 0x80:
            return n, i
        shift += 7


def record_headers(plain: bytes) -> list[tuple[int, int, str]]:
    """(first byte, first data byte, name) of every record of an unencrypted .ckpt: ``0a len Value``,
    Value = ``0a len tag, 12 len Tensor``, Tensor = ``08 dim..., 12 len type, 1a len data``."""
    out, pos = [], 0
    while pos < len(plain) and plain[pos] == 0x0A:  # a CRC trailer starts with "crc_num"
        n, body = _varint(plain, pos + 1)
        end = body + n
        tag_len, t = _varint(plain, body + 1)
        name = plain[t : t + tag_len].decode()
        i = t + tag_len + 1  # past the 0x12 key of the tensor
        _, i = _varint(plain, i)
        while plain[i] != 0x1A:
            key = plain[i]
            _, i = _varint(plain, i + 1)
            if key & 7 == 2:  # the type string: the varint was its length
                i += _
        data_len, data = _varint(plain, i + 1)
        assert data + data_len == end
        out.append((pos, data, name))
        pos = end
    return out


def flip_plain(enc: bytes, p: int, mask: int) -> bytes:
    """The file with plaintext byte ``p`` (of a one-block file) flipped by ``mask`` through the CBC chain."""
    at = IV_AT + p % 16 if p < 16 else CT_AT + (p // 16 - 1) * 16 + p % 16
    b = bytearray(enc)
    b[at] ^= mask
    return bytes(b)


def flip(data: bytes, at: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[at] ^= mask
    return bytes(b)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_factory):
    """A tiny fp16 LLaMA, and per CBC mode its .ckpt unencrypted, encrypted, encrypted with a CRC trailer."""
    from llmkit.convert.ckpt import ToCkptOptions, to_ckpt

    m = tiny_factory("safetensors", dtype=torch.float16, layers=1)
    root = tmp_path_factory.mktemp("cbc")
    mp = pytest.MonkeyPatch()
    mp.setenv("LLMKIT_CBC_KEY", KEY_HEX)
    to_ckpt(ToCkptOptions(m.path, root / "plain.ckpt"))
    for mode in CBC:
        to_ckpt(ToCkptOptions(m.path, root / f"{mode}.ckpt", enc_key="env:LLMKIT_CBC_KEY", enc_mode=mode))
        to_ckpt(ToCkptOptions(m.path, root / f"{mode}-crc.ckpt", enc_key="env:LLMKIT_CBC_KEY", enc_mode=mode, crc=True))
    yield m, root
    mp.undo()


def from_ckpt(cli, ckpt: Path, out: Path, m, *more) -> Result:
    return cli("from-ckpt", ckpt, "-o", out, "--config", m.path, "--dec-key", "env:LLMKIT_CBC_KEY", *more)


def judge(r: Result, ckpt: Path, out: Path, names: set[str]) -> str:
    """``refused``: exit 1 or 2, one line naming the file, no output; else ``warned``: exit 0, the CBC
    warning on stderr and every tensor of the model in the output."""
    if r.exit_code in (1, 2):
        lines = [line for line in r.stderr.strip().splitlines() if "━" not in line]  # not the progress bar
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(ckpt) in lines[0], r.stderr
        assert "internal error" not in lines[0]
        assert not out.exists()
        return "refused"
    assert r.exit_code == 0 and WARNING in r.stderr, (r.exit_code, r.stderr)
    assert set(load_file(out / "model.safetensors")) == names
    return "warned"


def _sample_offsets(size: int) -> list[int]:
    """The block header and IV, a spread through the ciphertext, and the last blocks (the padding)."""
    return sorted(set(range(CT_AT + 16)) | set(range(CT_AT, size, 1499)) | set(range(size - 40, size)))


@pytest.mark.parametrize("mode", CBC)
def test_a_flipped_record_header_byte_is_refused_with_one_line_naming_the_file(tmp_path, cli, work, mode):
    """Lengths, names, dims and dtypes of the first, a middle and the last record, each bit pattern
    landing exactly on the header byte: never converted (a lost or renamed tensor, a length that no
    longer agrees with the dims, the data or the file end)."""
    m, root = work
    plain, enc = (root / "plain.ckpt").read_bytes(), (root / f"{mode}.ckpt").read_bytes()
    records = record_headers(plain)
    assert [n for _, _, n in records][-1] == "lm_head.weight" and len(records) == len(m.state)
    target = tmp_path / "t.ckpt"
    for first, data, name in (records[0], records[len(records) // 2], records[-1]):
        for p in range(first, data):
            for mask in (0x01, 0x80) if p < first + 3 or p >= data - 3 else (0x01,):
                target.write_bytes(flip_plain(enc, p, mask))
                out = tmp_path / f"o{p}-{mask}"
                r = from_ckpt(cli, target, out, m)
                assert judge(r, target, out, set(m.state)) == "refused", (name, p - first, mask, r.stderr)


@pytest.mark.parametrize("mode", CBC)
def test_a_flipped_byte_anywhere_fails_or_converts_with_the_warning_and_never_loses_a_tensor(tmp_path, cli, work, mode):
    m, root = work
    enc = (root / f"{mode}.ckpt").read_bytes()
    target = tmp_path / "t.ckpt"
    seen = set()
    for at in _sample_offsets(len(enc)):
        target.write_bytes(flip(enc, at))
        out = tmp_path / f"o{at}"
        seen.add(judge(from_ckpt(cli, target, out, m), target, out, set(m.state)))
    assert seen == {"refused", "warned"}  # data flips convert (CBC cannot tell), with the warning


@pytest.mark.parametrize("mode", CBC)
def test_with_a_crc_trailer_every_flipped_byte_is_caught(tmp_path, cli, work, mode):
    m, root = work
    good = root / f"{mode}-crc.ckpt"
    r = from_ckpt(cli, good, tmp_path / "back", m, "--json")
    assert r.exit_code == 0, r.stderr
    assert '"crc": true' in r.stdout and WARNING not in r.stderr
    back = load_file(tmp_path / "back" / "model.safetensors")
    assert all(torch.equal(back[k], v) for k, v in m.state.items())
    enc = good.read_bytes()
    target = tmp_path / "t.ckpt"
    crc_caught = 0
    for at in _sample_offsets(len(enc)):
        target.write_bytes(flip(enc, at))
        out = tmp_path / f"o{at}"
        r = from_ckpt(cli, target, out, m)
        assert judge(r, target, out, set(m.state)) == "refused", (at, r.stderr)
        crc_caught += "CRC mismatch" in r.stderr
    assert crc_caught > 10  # the data flips, which only the CRC can tell


def test_every_cbc_read_warns_that_values_cannot_be_verified_and_gcm_reads_do_not(tmp_path, cli, work, monkeypatch):
    m, root = work
    monkeypatch.setenv("LLMKIT_CBC_KEY", KEY_HEX)
    from llmkit.convert.ckpt import ToCkptOptions, to_ckpt

    gcm = tmp_path / "gcm.ckpt"
    to_ckpt(ToCkptOptions(m.path, gcm, enc_key="env:LLMKIT_CBC_KEY"))
    key = ("--dec-key", "env:LLMKIT_CBC_KEY")
    for ckpt, warned in ((root / "AES-CBC.ckpt", True), (root / "SM4-CBC.ckpt", True), (gcm, False)):
        runs = {
            "from-ckpt": cli("from-ckpt", ckpt, "-o", tmp_path / f"o-{ckpt.stem}", "--config", m.path, *key),
            "inspect": cli("inspect", ckpt, *key),
            "checksum": cli("checksum", "--tensors", ckpt, *key),
            "verify": cli("verify", "--tensors", ckpt, m.path, *key),
        }
        for command, r in runs.items():
            assert r.exit_code == 0, (command, r.stderr)
            lines = [line for line in r.stderr.splitlines() if WARNING in line]
            assert len(lines) == (1 if warned else 0), (command, r.stderr)
            if warned:
                assert ckpt.name in lines[0] and "AES-GCM" in lines[0], lines[0]
        j = cli("from-ckpt", ckpt, "-o", tmp_path / f"j-{ckpt.stem}", "--config", m.path, *key, "--json").stdout
        assert (WARNING in j) == warned
    for command in ("to-ckpt", "from-ckpt", "inspect", "checksum"):
        text = re.sub(r"\s+", " ", cli(command, "--help").stdout)
        assert "AES-GCM" in text and "integrity" in text, command


@pytest.mark.parametrize("mode", CBC)
def test_every_flipped_byte_of_a_mindspore_encrypted_checkpoint_fails_or_warns(tmp_path, cli, monkeypatch, mode):
    """MindSpore 2.10's own encrypted files (tests/data/ckpt): all 240 byte positions."""
    monkeypatch.setenv("LLMKIT_CBC_KEY", KEY_HEX)
    data = (DATA / f"enc-{mode}.ckpt").read_bytes()
    target = tmp_path / "t.ckpt"
    seen = set()
    for at in range(len(data)):
        target.write_bytes(flip(data, at))
        r = cli("checksum", "--tensors", target, "--dec-key", "env:LLMKIT_CBC_KEY")
        if r.exit_code == 2:
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and str(target) in lines[0], r.stderr
            seen.add("refused")
            continue
        assert r.exit_code == 0 and WARNING in r.stderr, (at, r.exit_code, r.stderr)
        assert len([line for line in r.stdout.splitlines() if not line.startswith("#")]) == 5  # no tensor lost
        seen.add("warned")
    assert seen == {"refused", "warned"}


def test_a_renamed_lm_head_is_refused_not_left_out(tmp_path, cli, work):
    """The CBC chain flips one bit of a name exactly: lm_head.weight would otherwise be 'not a LLaMA
    weight', left out, and the model written without its output layer."""
    m, root = work
    plain, enc = (root / "plain.ckpt").read_bytes(), (root / "AES-CBC.ckpt").read_bytes()
    first, _, _ = record_headers(plain)[-1]
    at = plain.index(b"lm_head.weight", first) + 3  # "lm_iead.weight"
    assert at // 16 * 16 <= first  # the block garbled is the one before the record: the last norm's data
    target = tmp_path / "t.ckpt"
    target.write_bytes(flip_plain(enc, at, 0x01))
    r = from_ckpt(cli, target, tmp_path / "out", m)
    assert judge(r, target, tmp_path / "out", set(m.state)) == "refused"
    assert "lm_head.weight" in r.stderr and "lacks" in r.stderr


def test_a_block_whose_padding_was_shortened_is_named(tmp_path, cli, monkeypatch):
    """A block but the last holds exactly one block of plaintext; a flip that turns its 16 padding bytes
    into a valid 1-byte padding lengthens it by 15, which is named, not parsed as records."""
    monkeypatch.setattr(crypto, "BLOCK_PLAIN", 64)
    monkeypatch.setenv("LLMKIT_CBC_KEY", KEY_HEX)
    from test_ckpt_crypto import KEY, write

    ckpt = write(tmp_path / "x.ckpt", {"a": torch.arange(100, dtype=torch.float32)}, "AES-CBC", KEY)
    data = ckpt.read_bytes()
    # block 0: 32-byte header, 80 bytes of ciphertext (64 plaintext + 16 padding 0x10); flipping the
    # second-to-last cipher block's last byte by 0x11 makes the last padding byte 0x01.
    target = tmp_path / "t.ckpt"
    target.write_bytes(flip(data, CT_AT + 80 - 17, 0x11))
    r = cli("checksum", "--tensors", target, "--dec-key", "env:LLMKIT_CBC_KEY")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "at byte 0" in r.stderr and "holds 79 bytes of plaintext" in r.stderr, r.stderr


@pytest.mark.parametrize("mode", CBC)
def test_checksum_and_verify_tensors_check_the_crc_trailer_of_a_cbc_checkpoint(tmp_path, cli, work, monkeypatch, mode):
    m, root = work
    monkeypatch.setenv("LLMKIT_CBC_KEY", KEY_HEX)
    key = ("--dec-key", "env:LLMKIT_CBC_KEY")
    good = root / f"{mode}-crc.ckpt"
    assert cli("verify", "--tensors", good, m.path, *key).exit_code == 0
    enc = good.read_bytes()
    target = tmp_path / "t.ckpt"
    target.write_bytes(flip(enc, len(enc) // 2))  # inside a tensor's data: only the CRC can tell
    for r in (cli("checksum", "--tensors", target, *key), cli("verify", "--tensors", target, m.path, *key)):
        lines = [line for line in r.stderr.strip().splitlines() if "━" not in line]
        assert r.exit_code == 2 and len(lines) == 1 and "CRC mismatch" in lines[0] and str(target) in lines[0], r.stderr
    r = cli("verify", good, *key)  # file checksums hash the stored bytes: a key makes no sense there
    assert r.exit_code == 2 and "--dec-key goes with --tensors" in r.stderr
