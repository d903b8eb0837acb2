"""decrypt / encrypt: the key is an input like any other, published tables that disagree fail, and a zoo
of bad inputs (each refused with one line, nothing written, every input byte for byte as it was).

Encrypted files are made here with the SPEC.md 1 loop (``upstream_xor``), never with llmkit; expected
md5s are computed here with hashlib.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import pytest

import llmkit.crypto.tables as crypto_tables
from spec_reference import upstream_xor
from test_bad_inputs import one_error_line, tree

EMPTY = hashlib.sha256(b"").hexdigest()
KEY_NAME = "consolidated.00.pth"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def enc_name(name: str) -> str:
    return f"{name}.{EMPTY}.enc"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def w(tmp_path) -> dict[str, Path]:
    """A key in its own folder (beside a note), an .enc folder that would write a file named like the key,
    a plaintext folder holding a file named like the key's encrypted name."""
    key = write(tmp_path / "llama" / "7B" / KEY_NAME, random.Random(1).randbytes(300_007))
    write(tmp_path / "llama" / "7B" / "params.json", b'{"dim": 4096}\n')
    enc = tmp_path / "enc"
    write(enc / enc_name(KEY_NAME), upstream_xor(b'{"not": "the key"}\n', key))  # decrypts to the key's name
    write(enc / enc_name("config.json"), upstream_xor(b'{"model_type": "llama"}\n', key))
    plain = tmp_path / "plain"
    write(plain / "config.json", b'{"model_type": "llama"}\n')
    return {"root": tmp_path, "key": key, "key_dir": key.parent, "enc": enc, "plain": plain}


# ------------------------------------------------------------------ item 4: the key is an input


def _argv(command: str, w: dict[str, Path], key: Path, out: Path) -> list:
    if command == "decrypt":  # a JSON text under a .pth name: not a torch zip, so no content check
        return [command, w["enc"], "--key", key, "-o", out, "--no-key-check", "--no-content-check"]
    return [command, w["plain"], "--key", key, "-o", out, "--no-key-check"]


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("command", ["decrypt", "encrypt"])
def test_output_into_the_folder_holding_the_key_is_refused_and_the_key_is_untouched(run_cli, w, command, force):
    before, key_sha = tree(w["root"]), digest(w["key"])
    r = run_cli(*_argv(command, w, w["key"], w["key_dir"]), *(["--force"] if force else []))
    line = one_error_line(r, w["key_dir"])
    assert "key" in line, line
    assert digest(w["key"]) == key_sha
    assert tree(w["root"]) == before


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("command", ["decrypt", "encrypt"])
@pytest.mark.parametrize("case", ["out-is-a-link-to-the-key-folder", "key-given-through-a-link",
                                  "key-link-in-the-output-folder"])
def test_links_do_not_hide_the_folder_holding_the_key(run_cli, w, command, force, case):
    root = w["root"]
    if case == "out-is-a-link-to-the-key-folder":
        (root / "out").symlink_to(w["key_dir"], target_is_directory=True)
        key, out = w["key"], root / "out"
    elif case == "key-given-through-a-link":  # -o the folder of the real file, the key named by a link
        (root / "links").mkdir()
        (root / "links" / "key.pth").symlink_to(w["key"])
        key, out = root / "links" / "key.pth", w["key_dir"]
    else:  # -o the folder of the link itself, which --force would replace
        (root / "out").mkdir()
        (root / "out" / KEY_NAME).symlink_to(w["key"])
        key, out = root / "out" / KEY_NAME, root / "out"
    before, key_sha = tree(root), digest(w["key"])
    r = run_cli(*_argv(command, w, key, out), *(["--force"] if force else []))
    assert "key" in one_error_line(r)
    assert digest(w["key"]) == key_sha
    assert tree(root) == before


@pytest.mark.parametrize("command", ["decrypt", "encrypt"])
def test_an_output_folder_beside_the_key_folder_still_works(run_cli, w, command):
    key_sha = digest(w["key"])
    out = w["key_dir"].parent / "out"  # a sibling of the key's folder, inside its parent: fine
    r = run_cli(*_argv(command, w, w["key"], out))
    assert r.exit_code == 0, r.stderr
    assert digest(w["key"]) == key_sha and out.is_dir()
