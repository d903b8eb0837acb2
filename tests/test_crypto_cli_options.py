"""``llmkit decrypt`` / ``llmkit encrypt`` flags -> the options object (huggingface_hub-style CLI tests).

The library call is replaced by a recorder: each test asserts the :class:`DecryptOptions` /
:class:`EncryptOptions` the command built from its flags (defaults included) and the runtime
arguments beside them, and that the command renders the result it got back. The real
end-to-end runs are in test_crypto_cli.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llmkit import crypto
from llmkit.crypto import CryptoResult, DecryptOptions, EncryptOptions, FileResult
from llmkit.pipeline import Check


@pytest.fixture
def calls(monkeypatch):
    """Record every decrypt/encrypt call the CLI makes; return a small successful result."""
    seen: list[tuple[str, object, dict]] = []

    def recorder(command: str):
        def fake(options, **runtime):
            seen.append((command, options, runtime))
            out = "-" if runtime.get("stream") is not None else str(options.output)
            files = [
                FileResult(
                    "in.enc",
                    f"{out}/w.dat" if out != "-" else "-",
                    "techgpt",
                    3,
                    checks=[Check("output md5", "mismatch", "md5 differs from table t")],
                )
            ]
            return CryptoResult(
                command, str(options.key), "skipped", out, files, ["in/README.md"], ["md5 differs from table t"], 3, 0.5
            )

        return fake

    monkeypatch.setattr(crypto, "decrypt", recorder("decrypt"))
    monkeypatch.setattr(crypto, "encrypt", recorder("encrypt"))
    return seen


def test_decrypt_defaults(run_cli, calls):
    r = run_cli("decrypt", "enc", "--key", "k.pth", "-o", "out")
    assert r.exit_code == 0, r.stderr
    [(command, options, runtime)] = calls
    assert command == "decrypt"
    assert options == DecryptOptions(
        inputs=(Path("enc"),),
        key=Path("k.pth"),
        output=Path("out"),
        format="auto",
        key_check=True,
        content_check=True,
        jobs=1,
        force=False,
    )
    assert runtime["stream"] is None and runtime["stdin"] is not None and callable(runtime["progress"])


def test_decrypt_every_flag(run_cli, calls):
    r = run_cli(
        "decrypt",
        "a.enc",
        "b.enc",
        "-k",
        "k.pth",
        "-o",
        "out",
        "--format",
        "belle",
        "--no-key-check",
        "--no-content-check",
        "-j",
        "3",
        "--force",
        "--dry-run",
    )
    assert r.exit_code == 0, r.stderr
    [(_, options, _)] = calls
    assert options == DecryptOptions(
        inputs=(Path("a.enc"), Path("b.enc")),
        key=Path("k.pth"),
        output=Path("out"),
        format="belle",
        key_check=False,
        content_check=False,
        jobs=3,
        force=True,
        dry_run=True,
    )


def test_decrypt_stdin_to_stdout_passes_the_streams_not_an_output_folder(run_cli, calls):
    r = run_cli("decrypt", "-", "--format", "techgpt", "--key", "k.pth", "-o", "-", input=b"")
    assert r.exit_code == 0, r.stderr
    [(_, options, runtime)] = calls
    assert options == DecryptOptions(inputs=(Path("-"),), key=Path("k.pth"), output=None, format="techgpt")
    assert runtime["stream"] is not None and runtime["stdin"] is not None
    assert r.stdout == ""  # stdout carries the data: the summary goes to stderr
    assert "decrypted" in r.stderr


def test_decrypt_json_to_stdout_is_refused_before_the_library_call(run_cli, calls):
    r = run_cli("decrypt", "x.enc", "--key", "k.pth", "-o", "-", "--json")
    assert r.exit_code == 2 and "--json" in r.stderr
    assert calls == []


def test_encrypt_defaults(run_cli, calls):
    r = run_cli("encrypt", "model", "--key", "k.pth", "-o", "enc")
    assert r.exit_code == 0, r.stderr
    [(command, options, runtime)] = calls
    assert command == "encrypt"
    assert options == EncryptOptions(
        inputs=(Path("model"),),
        key=Path("k.pth"),
        output=Path("enc"),
        format="techgpt",
        key_check=True,
        jobs=1,
        force=False,
    )
    assert set(runtime) == {"progress"}


def test_encrypt_every_flag(run_cli, calls):
    r = run_cli(
        "encrypt",
        "a",
        "b.json",
        "-k",
        "k.pth",
        "-o",
        "enc",
        "--format",
        "belle",
        "--no-key-check",
        "--jobs",
        "2",
        "--force",
    )
    assert r.exit_code == 0, r.stderr
    [(_, options, _)] = calls
    assert options == EncryptOptions(
        inputs=(Path("a"), Path("b.json")),
        key=Path("k.pth"),
        output=Path("enc"),
        format="belle",
        key_check=False,
        jobs=2,
        force=True,
    )


def test_encrypt_to_stdout_is_refused_before_the_library_call(run_cli, calls):
    r = run_cli("encrypt", "model", "--key", "k.pth", "-o", "-")
    assert r.exit_code == 2 and "-o DIR" in r.stderr
    assert calls == []


def test_the_result_notices_and_json_fields_are_rendered(run_cli, calls):
    r = run_cli("decrypt", "enc", "--key", "k.pth", "-o", "out")
    assert "ignored (not an .enc file): in/README.md" in r.stderr and "warning: md5 differs" in r.stderr
    assert "decrypted  in.enc -> out/w.dat" in r.stdout and "MISMATCH" in r.stdout
    doc = run_cli("decrypt", "enc", "--key", "k.pth", "-o", "out", "--json").json()
    assert doc["ok"] is True and doc["outputs"] == ["out/w.dat"]
    assert doc["checks"] == [{"name": "in.enc: output md5", "status": "mismatch", "detail": "md5 differs from table t"}]
    assert doc["notices"] == [
        {"level": "info", "text": "ignored (not an .enc file): in/README.md"},
        {"level": "warning", "text": "md5 differs from table t"},
    ]
    assert doc["warnings"] == ["md5 differs from table t"] and doc["ignored"] == ["in/README.md"]
    assert (doc["command"], doc["key_check"], doc["output"], doc["bytes"]) == ("decrypt", "skipped", "out", 3)
