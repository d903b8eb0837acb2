"""A cipher mode without its key is a usage error, never a silently unencrypted (or undecrypted) run.

``--enc-mode`` only says how ``--enc-key`` encrypts; given alone it used to write a plaintext ``.ckpt`` with
exit 0. ``--dec-mode`` likewise only goes with ``--dec-key``. Either alone: exit 2, one line naming both flags,
nothing written.
"""

from __future__ import annotations

import struct

import pytest
from common import one_error_line

MODES = ("AES-GCM", "AES-CBC", "SM4-CBC")
KEY = bytes(range(16))
AES_GCM_MAGIC = 0x7F3A5ED8  # the first u32 (little-endian) of a block save_checkpoint(enc_mode="AES-GCM") writes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("json_flag", [(), ("--json",)])
def test_an_enc_mode_without_an_enc_key_is_refused_before_any_output(tmp_path, run_cli, tiny_factory, mode, json_flag):
    out = tmp_path / "model.ckpt"
    r = run_cli("to-ckpt", tiny_factory().path, "-o", out, "--enc-mode", mode, *json_flag)
    if json_flag:
        assert r.exit_code == 2
        error = r.json()
        assert error["ok"] is False and "--enc-mode" in error["error"] and "--enc-key" in error["error"]
    else:
        one_error_line(r, "--enc-mode", "--enc-key", mode)
    assert list(tmp_path.iterdir()) == []


def test_an_enc_key_without_an_enc_mode_still_encrypts_with_aes_gcm(tmp_path, run_cli, tiny_factory):
    """MindSpore's own default (save_checkpoint(enc_mode="AES-GCM")): the key alone is enough."""
    (tmp_path / "k").write_bytes(KEY)
    out = tmp_path / "model.ckpt"
    r = run_cli("to-ckpt", tiny_factory().path, "-o", out, "--enc-key", tmp_path / "k", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert struct.unpack("<I", out.read_bytes()[:4])[0] == AES_GCM_MAGIC


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory, tiny_factory):
    """A tiny model as an AES-GCM ``.ckpt`` (written by the CLI) and its key file."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    root = tmp_path_factory.mktemp("enc")
    (root / "k").write_bytes(KEY)
    r = CliRunner().invoke(
        app, ["to-ckpt", str(tiny_factory().path), "-o", str(root / "m.ckpt"), "--enc-key", str(root / "k"), "--quiet"]
    )
    assert r.exit_code == 0, r.output
    return root


@pytest.mark.parametrize(
    "command",
    [
        ("inspect", "{ckpt}"),
        ("from-ckpt", "{ckpt}", "-o", "{out}"),
        ("checksum", "--tensors", "{ckpt}"),
        ("verify", "--tensors", "{ckpt}", "{model}"),
        ("verify", "{ckpt}"),
    ],
    ids=lambda c: " ".join(a for a in c if not a.startswith("{")),
)
@pytest.mark.parametrize("mode", MODES)
def test_a_dec_mode_without_a_dec_key_is_refused(tmp_path, run_cli, tiny_factory, encrypted, command, mode):
    fill = {"ckpt": encrypted / "m.ckpt", "out": tmp_path / "out", "model": tiny_factory().path}
    args = [a.format(**fill) for a in command]
    r = run_cli(*args, "--dec-mode", mode)
    one_error_line(r, "--dec-mode", "--dec-key", mode)
    assert r.stdout == ""
    assert not (tmp_path / "out").exists()


def test_a_dec_mode_with_its_dec_key_reads_the_checkpoint(run_cli, encrypted):
    r = run_cli("inspect", encrypted / "m.ckpt", "--dec-key", encrypted / "k", "--dec-mode", "AES-GCM", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["layout"] == "ckpt"
