"""Key material and tokens never appear in any message, log line, JSON document or traceback.

Every option that takes a key (to-ckpt ``--enc-key``; from-ckpt, inspect and checksum ``--dec-key``;
decrypt, encrypt and recipe ``--key``) is given a secret-looking plain value instead of a key file or
``env:VAR``: the run must be refused (exit 2, saying what the option accepts) and no part of the value may
appear in stdout or stderr, with and without ``--json`` and ``--debug`` (whose traceback is checked too).
The same holds for a key held in an environment variable or a key file, and for a hub token.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import pytest

SECRETS = {
    "hex": "5f3c9a0e7d21b48c6a9f0e3d2c1b4a59",  # what a 16-byte key looks like as hex
    "token-like": "sk9fQ2/xZ+Lm0pR7tWv3Yb4Kq8Jd==",  # base64, with a slash (a path with a missing folder)
    "long": random.Random(7).randbytes(200).hex(),  # 400 characters: "File name too long" from the OS
}
WINDOW = 12  # no 12-character piece of a secret may appear anywhere


def leaked(secret: str, *texts: str) -> str | None:
    """The first ``WINDOW``-character piece of ``secret`` found in ``texts`` (whitespace removed: a
    wrapped line still counts), or None."""
    blob = re.sub(r"\s", "", "".join(texts))
    for i in range(len(secret) - WINDOW + 1):
        if secret[i : i + WINDOW] in blob:
            return secret[i : i + WINDOW]
    return None


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_factory) -> dict[str, Path]:
    from llmkit.convert.ckpt import ToCkptOptions, to_ckpt

    root = tmp_path_factory.mktemp("secrecy")
    model = tiny_factory("safetensors").path
    ckpt = root / "model.ckpt"
    to_ckpt(ToCkptOptions(model, ckpt))
    enc = root / "enc" / f"w.dat.{hashlib.sha256(b'').hexdigest()}.enc"
    enc.parent.mkdir()
    enc.write_bytes(bytes(range(256)) * 4)
    plain = root / "plain"
    plain.mkdir()
    (plain / "w.dat").write_bytes(b"plain bytes\n")
    return {"root": root, "model": model, "ckpt": ckpt, "enc": enc, "plain": plain}


# command -> argv given the work files, an output path and the key value
KEY_OPTIONS = {
    "to-ckpt --enc-key": lambda w, o, k: ["to-ckpt", w["model"], "-o", o / "x.ckpt", "--enc-key", k],
    "from-ckpt --dec-key": lambda w, o, k: ["from-ckpt", w["ckpt"], "-o", o, "--dec-key", k],
    "inspect --dec-key": lambda w, o, k: ["inspect", w["ckpt"], "--dec-key", k],
    "checksum --dec-key": lambda w, o, k: ["checksum", "--tensors", w["ckpt"], "--dec-key", k],
    "decrypt --key": lambda w, o, k: ["decrypt", w["enc"], "--key", k, "-o", o],
    "encrypt --key": lambda w, o, k: ["encrypt", w["plain"], "--key", k, "-o", o],
    "recipe run --key": lambda w, o, k: ["recipe", "run", "techgpt-1.0", "--workdir", o, "--key", k, "--dry-run"],
}
MODES = {"plain": (), "json": ("--json",), "debug": ("--debug",), "json-debug": ("--json", "--debug")}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("option", KEY_OPTIONS)
def test_a_key_given_as_a_plain_value_is_refused_without_repeating_it(run_cli, work, tmp_path, option, secret, mode):
    value = SECRETS[secret]
    r = run_cli(*KEY_OPTIONS[option](work, tmp_path / "out", value), *MODES[mode])
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert leaked(value, r.stdout, r.stderr) is None, (leaked(value, r.stdout, r.stderr), r.stdout, r.stderr)
    flag = option.split()[-1]
    if "json" in mode:
        doc = r.json()
        text = doc["error"] + " " + (doc["hint"] or "")
        assert doc["ok"] is False and doc["path"] is None, doc
    else:
        lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, r.stderr
        text = lines[0]
    assert flag in text, text  # which option was wrong
    assert "file" in text, text  # ... and what it accepts: a key file (or env:VAR, where a key is short)
    if flag != "--key":
        assert "env:VAR" in text, text
    assert f"{len(value)}-character" in text, text  # only the length of the value is named
    if "debug" in mode:
        assert "Traceback" in r.stderr, r.stderr  # the traceback was printed, and checked above
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option", ["to-ckpt --enc-key", "from-ckpt --dec-key", "inspect --dec-key"])
def test_a_key_from_the_environment_that_is_not_hex_is_never_printed(run_cli, work, tmp_path, monkeypatch, option):
    value = "not-hex-" + SECRETS["hex"]
    monkeypatch.setenv("LLMKIT_SECRET_KEY", value)
    for extra in [(), ("--json",), ("--debug",)]:
        r = run_cli(*KEY_OPTIONS[option](work, tmp_path / "out", "env:LLMKIT_SECRET_KEY"), *extra)
        assert r.exit_code == 2, (r.stdout, r.stderr)
        assert leaked(value, r.stdout, r.stderr) is None, r.stderr
        assert "LLMKIT_SECRET_KEY" in r.stdout + r.stderr  # the variable is named, its value is not


@pytest.mark.parametrize("extra", [(), ("--json",), ("--debug",)])
def test_a_key_of_the_wrong_length_is_never_printed(run_cli, work, tmp_path, monkeypatch, extra):
    value = SECRETS["hex"] + "0a1b2c3d"  # 20 bytes: no AES or SM4 key has that length
    monkeypatch.setenv("LLMKIT_SECRET_KEY", value)
    key_file = tmp_path / "k.bin"
    key_file.write_bytes(bytes.fromhex(value))
    for spec in ["env:LLMKIT_SECRET_KEY", str(key_file)]:
        r = run_cli(*KEY_OPTIONS["to-ckpt --enc-key"](work, tmp_path / "out", spec), *extra)
        assert r.exit_code == 2, r.stderr
        assert leaked(value, r.stdout, r.stderr) is None, r.stderr
        assert "20 bytes" in r.stdout + r.stderr


def test_a_successful_encrypted_run_prints_no_key_material(run_cli, work, tmp_path, monkeypatch):
    value = SECRETS["hex"]
    monkeypatch.setenv("LLMKIT_SECRET_KEY", value)
    out = tmp_path / "enc.ckpt"
    for args in (
        ["to-ckpt", work["model"], "-o", out, "--enc-key", "env:LLMKIT_SECRET_KEY", "--json", "--debug"],
        ["inspect", out, "--dec-key", "env:LLMKIT_SECRET_KEY", "--json", "--debug"],
        ["checksum", "--tensors", out, "--dec-key", "env:LLMKIT_SECRET_KEY", "--json"],
    ):
        r = run_cli(*args)
        assert r.exit_code == 0, r.stderr
        json.loads(r.stdout)
        assert leaked(value, r.stdout, r.stderr) is None, r.stdout


# ------------------------------------------------------------------ hub tokens


@pytest.mark.parametrize("extra", [(), ("--json",), ("--debug",)])
def test_a_token_in_the_endpoint_url_or_the_environment_is_never_printed(run_cli, tmp_path, monkeypatch, extra):
    token = "hf_" + SECRETS["hex"]
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    endpoint = f"http://user:{token}@127.0.0.1:9"  # the discard port: nothing answers
    r = run_cli("download", "neukg/TechGPT-7B", "-o", tmp_path / "dl", "--endpoint", endpoint, *extra)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert leaked(token, r.stdout, r.stderr) is None, (r.stdout, r.stderr)
    assert "127.0.0.1:9" in r.stdout + r.stderr  # the endpoint is still named, without its credentials


# ------------------------------------------------------------------ the last line of defence


@pytest.mark.parametrize("json_mode", [False, True])
def test_a_registered_secret_is_blanked_from_errors_logs_json_and_tracebacks(capsys, json_mode):
    import typer

    from llmkit.cli import command_guard
    from llmkit.cli.output import Output
    from llmkit.redact import register_secret

    secret = "cafebabe" + SECRETS["hex"]
    register_secret(bytes.fromhex(secret))
    out = Output(json_mode=json_mode, debug=True)
    out.warn(f"a warning holding {secret.upper()}")
    out.result({"url": "https://me:tok3n-s3cret-value@mirror.example/x", "k": secret}, lambda c: c.print(secret))
    with pytest.raises(typer.Exit), command_guard(out):
        raise RuntimeError(f"a bug that put the key {secret} in a message")
    captured = capsys.readouterr()
    for value in (secret, "tok3n-s3cret-value"):
        assert leaked(value, captured.out, captured.err) is None, (captured.out, captured.err)
    assert "Traceback" in captured.err and "RuntimeError" in captured.err and "***" in captured.err
