"""decrypt / encrypt: the key is an input like any other, published tables that disagree fail, and a zoo
of bad inputs (each refused with one line, nothing written, every input byte for byte as it was).

Encrypted files are made here with the SPEC.md 1 loop (``upstream_xor``), never with llmkit; expected
md5s are computed here with hashlib.
"""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest
from common import enc_name, md5, one_error_line, tree, write_file
from spec_reference import upstream_xor

import llmkit.crypto.tables as crypto_tables

KEY_NAME = "consolidated.00.pth"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def w(tmp_path) -> dict[str, Path]:
    """A key in its own folder (beside a note), an .enc folder that would write a file named like the key,
    a plaintext folder holding a file named like the key's encrypted name."""
    key = write_file(tmp_path / "llama" / "7B" / KEY_NAME, random.Random(1).randbytes(300_007))
    write_file(tmp_path / "llama" / "7B" / "params.json", b'{"dim": 4096}\n')
    enc = tmp_path / "enc"
    write_file(enc / enc_name(KEY_NAME), upstream_xor(b'{"not": "the key"}\n', key))  # decrypts to the key's name
    write_file(enc / enc_name("config.json"), upstream_xor(b'{"model_type": "llama"}\n', key))
    plain = tmp_path / "plain"
    write_file(plain / "config.json", b'{"model_type": "llama"}\n')
    return {"root": tmp_path, "key": key, "key_dir": key.parent, "enc": enc, "plain": plain}


# ------------------------------------------------------------------ item 4: the key is an input


def _argv(command: str, w: dict[str, Path], key: Path, out: Path) -> list:
    if command == "decrypt":  # a JSON text under a .pth name (not a torch zip, not LLaMA's published file)
        return [command, w["enc"], "--key", key, "-o", out, "--no-key-check", "--no-content-check", "--no-table-check"]
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
@pytest.mark.parametrize(
    "case", ["out-is-a-link-to-the-key-folder", "key-given-through-a-link", "key-link-in-the-output-folder"]
)
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


# ------------------------------------------------------------------ item 13: a published table that disagrees fails


def _publish(monkeypatch, table: dict[str, str]) -> None:
    """Built-in tables that list ``table`` (name -> md5) under the table name ``fake-table``."""
    monkeypatch.setattr(
        crypto_tables, "_published", lambda name, *a, **k: [("fake-table", table[name])] if name in table else []
    )


def _folder(w, names: dict[str, bytes]) -> tuple[Path, dict[str, bytes]]:
    enc = w["root"] / "published-enc"
    for name, data in names.items():
        write_file(enc / enc_name(name), upstream_xor(data, w["key"]))
    return enc, names


PLAIN = {
    "config.json": b'{"model_type": "llama"}\n',
    "generation_config.json": b'{"bos_token_id": 1}\n',
    "notes.dat": b"not in any table\n",
}


TABLE_CASES = {
    # the input's md5 differs from the table and so does the output's (another model, a damaged download)
    "input-and-output-differ": lambda enc, key: {enc_name("config.json"): "1" * 32, "config.json": "2" * 32},
    # only the plaintext name is published (as LLaMA's consolidated.00.pth is), and it differs
    "output-differs": lambda enc, key: {"config.json": "2" * 32},
    # only the .enc name is published, and the download differs
    "input-differs": lambda enc, key: {enc_name("config.json"): "1" * 32},
}


@pytest.mark.parametrize("json_flag", [False, True])
@pytest.mark.parametrize("case", TABLE_CASES)
def test_a_published_table_that_does_not_match_fails_and_keeps_nothing(run_cli, w, monkeypatch, case, json_flag):
    enc, _ = _folder(w, PLAIN)
    _publish(monkeypatch, TABLE_CASES[case](enc, w["key"]))
    before = tree(w["root"])
    out = w["root"] / "out"
    r = run_cli("decrypt", enc, "--key", w["key"], "-o", out, "--no-key-check", *(["--json"] if json_flag else []))
    assert r.exit_code == 1, (r.stdout, r.stderr)
    error = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, r.stderr
    assert "config.json" in error[0] and "fake-table" in error[0] and "--no-table-check" in error[0], error[0]
    assert "nothing was kept" in error[0], error[0]
    if json_flag:
        doc = r.json()
        assert doc["ok"] is False and doc["exit_code"] == 1, doc
    assert not out.exists()  # no file of the run under any name, not even the folder
    assert tree(w["root"]) == before


@pytest.mark.parametrize("case", TABLE_CASES)
def test_no_table_check_opts_out_by_name_and_reports_the_mismatch(run_cli, w, monkeypatch, case):
    enc, plain = _folder(w, PLAIN)
    _publish(monkeypatch, TABLE_CASES[case](enc, w["key"]))
    out = w["root"] / "out"
    r = run_cli("decrypt", enc, "--key", w["key"], "-o", out, "--no-key-check", "--no-table-check", "--json")
    assert r.exit_code == 0, r.stderr
    doc = r.json()
    statuses = {c["name"].rsplit(": ", 1)[-1]: c["status"] for c in doc["checks"] if "config.json" in c["name"]}
    assert "mismatch" in statuses.values(), doc["checks"]
    assert any(n["level"] == "warning" and "fake-table" in n["text"] for n in doc["notices"]), doc["notices"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == plain


def test_a_matching_table_passes_without_any_flag(run_cli, w, monkeypatch):
    enc, _ = _folder(w, PLAIN)
    enc_bytes = (enc / enc_name("config.json")).read_bytes()
    _publish(
        monkeypatch,
        {
            enc_name("config.json"): md5(enc_bytes),
            "config.json": md5(PLAIN["config.json"]),
            "generation_config.json": md5(PLAIN["generation_config.json"]),
        },
    )
    r = run_cli("decrypt", enc, "--key", w["key"], "-o", w["root"] / "out", "--no-key-check", "--json")
    assert r.exit_code == 0, r.stderr
    assert {c["status"] for c in r.json()["checks"] if "md5" in c["name"]} == {"ok"}


def test_the_published_input_with_a_wrong_output_still_fails_with_no_table_check(run_cli, w, monkeypatch):
    # an input that is the published file but decrypts to another md5 proves a wrong key: no flag makes it pass
    enc, _ = _folder(w, PLAIN)
    enc_bytes = (enc / enc_name("config.json")).read_bytes()
    _publish(monkeypatch, {enc_name("config.json"): md5(enc_bytes), "config.json": "2" * 32})
    r = run_cli("decrypt", enc, "--key", w["key"], "-o", w["root"] / "out", "--no-key-check", "--no-table-check")
    assert r.exit_code == 1, r.stderr
    assert "key" in r.stderr and not (w["root"] / "out").exists()


def test_a_table_mismatch_to_stdout_exits_1_after_the_bytes(tmp_path, w, monkeypatch):
    import subprocess
    import sys

    enc, plain = _folder(w, {"config.json": PLAIN["config.json"]})
    checksums = tmp_path / "tables"  # a real table file the subprocess reads (LLMKIT_CHECKSUMS)
    write_file(checksums / "fake-table.md5", f"{'2' * 32}  ./config.json\n".encode())
    llmkit = Path(sys.executable).parent / "llmkit"
    env = {**os.environ, "LLMKIT_CHECKSUMS": str(checksums)}
    argv = [
        str(llmkit),
        "decrypt",
        str(enc / enc_name("config.json")),
        "--key",
        str(w["key"]),
        "-o",
        "-",
        "--no-key-check",
    ]
    r = subprocess.run(argv, capture_output=True, env=env, timeout=120)
    assert r.returncode == 1, r.stderr
    assert b"--no-table-check" in r.stderr and b"stdout" in r.stderr
    ok = subprocess.run([*argv, "--no-table-check"], capture_output=True, env=env, timeout=120)
    assert ok.returncode == 0 and ok.stdout == plain["config.json"], ok.stderr


def test_help_names_the_table_opt_out(run_cli):
    r = run_cli("decrypt", "--help")
    assert r.exit_code == 0
    assert "--no-table-check" in r.stdout


# ------------------------------------------------------------------ the zoo: one line, exit 2, nothing changed


@pytest.fixture
def z(w) -> dict[str, Path]:
    root = w["root"]
    (root / "dangling").symlink_to(root / "nowhere")
    (root / "loop").symlink_to(root / "loop")
    (root / "key-link-dir").mkdir()
    (root / "key-link-dir" / "key.pth").symlink_to(w["key"])
    return {**w, "dangling": root / "dangling", "loop": root / "loop", "key_link": root / "key-link-dir" / "key.pth"}


def _dec(z, *, key=None, out=None, src=None, more=()):
    return [
        "decrypt",
        src or z["enc"],
        "--key",
        key or z["key"],
        "-o",
        out or z["root"] / "never-written",
        "--no-key-check",
        "--no-table-check",
        "--no-content-check",
        *more,
    ]


def _enc(z, *, key=None, out=None, src=None, more=()):
    return [
        "encrypt",
        src or z["plain"],
        "--key",
        key or z["key"],
        "-o",
        out or z["root"] / "never-written",
        "--no-key-check",
        *more,
    ]


# case -> (argv, the path the error line must name, or None when nothing may be named)
ZOO = {
    "decrypt-o-is-the-key-folder": (lambda z: _dec(z, out=z["key_dir"]), lambda z: z["key_dir"]),
    "decrypt-o-is-the-key-folder-force": (
        lambda z: _dec(z, out=z["key_dir"], more=["--force"]),
        lambda z: z["key_dir"],
    ),
    "decrypt-o-is-the-key-file": (lambda z: _dec(z, out=z["key"], more=["--force"]), lambda z: z["key"]),
    "decrypt-o-is-the-folder-of-a-key-link": (
        lambda z: _dec(z, key=z["key_link"], out=z["key_link"].parent, more=["--force"]),
        lambda z: z["key_link"].parent,
    ),
    "decrypt-o-is-the-folder-a-key-link-points-into": (
        lambda z: _dec(z, key=z["key_link"], out=z["key_dir"], more=["--force"]),
        lambda z: z["key_dir"],
    ),
    "decrypt-key-is-a-plain-value": (lambda z: _dec(z, key="00112233445566778899aabbccddeeff"), lambda z: None),
    "decrypt-key-is-the-enc-folder": (lambda z: _dec(z, key=z["enc"]), lambda z: z["enc"]),
    "decrypt-key-dangling": (lambda z: _dec(z, key=z["dangling"]), lambda z: z["dangling"]),
    "decrypt-key-loop": (lambda z: _dec(z, key=z["loop"]), lambda z: z["loop"]),
    "decrypt-o-dangling": (lambda z: _dec(z, out=z["dangling"]), lambda z: z["dangling"]),
    "decrypt-o-is-the-enc-folder-force": (lambda z: _dec(z, out=z["enc"], more=["--force"]), lambda z: z["enc"]),
    "encrypt-o-is-the-key-folder": (lambda z: _enc(z, out=z["key_dir"]), lambda z: z["key_dir"]),
    "encrypt-o-is-the-key-folder-force": (
        lambda z: _enc(z, out=z["key_dir"], more=["--force"]),
        lambda z: z["key_dir"],
    ),
    "encrypt-o-is-the-key-folder-belle-force": (
        lambda z: _enc(z, out=z["key_dir"], more=["--force", "--format", "belle"]),
        lambda z: z["key_dir"],
    ),
    "encrypt-o-is-the-key-file": (lambda z: _enc(z, out=z["key"], more=["--force"]), lambda z: z["key"]),
    "encrypt-o-is-the-folder-of-a-key-link": (
        lambda z: _enc(z, key=z["key_link"], out=z["key_link"].parent, more=["--force"]),
        lambda z: z["key_link"].parent,
    ),
    "encrypt-key-is-a-plain-value": (lambda z: _enc(z, key="sk9fQ2/xZ+Lm0pR7tWv3Yb4Kq8Jd=="), lambda z: None),
    "encrypt-key-is-the-plain-folder": (lambda z: _enc(z, key=z["plain"]), lambda z: z["plain"]),
    "encrypt-o-is-the-plain-folder-force": (lambda z: _enc(z, out=z["plain"], more=["--force"]), lambda z: z["plain"]),
    "encrypt-no-table-check-is-decrypt-only": (lambda z: _enc(z, more=["--no-table-check"]), lambda z: None),
}


@pytest.mark.parametrize("case", ZOO)
def test_crypto_zoo_is_one_error_line_and_changes_nothing(run_cli, z, case):
    argv, named = ZOO[case]
    before, key_sha = tree(z["root"]), digest(z["key"])
    r = run_cli(*argv(z))
    path = named(z)
    line = one_error_line(r, *([path] if path is not None else []))
    if "plain-value" in case:
        assert "00112233445566778899" not in line and "sk9fQ2" not in line, line
    assert digest(z["key"]) == key_sha
    assert tree(z["root"]) == before  # nothing written, moved or deleted; no folder made


@pytest.mark.parametrize("command", ["decrypt", "encrypt"])
def test_force_over_a_hard_link_of_the_key_replaces_the_link_never_the_key(run_cli, w, command):
    # a file in -o that shares the key's inode (ln KEY out/NAME): --force renames a new file over the name,
    # it never opens the old one for writing, so the key keeps every byte
    out = w["root"] / "out"
    out.mkdir()
    name = "config.json" if command == "decrypt" else enc_name("config.json")
    os.link(w["key"], out / name)
    key_sha = digest(w["key"])
    argv = _argv(command, w, w["key"], out)
    if command == "decrypt":
        argv[1] = w["enc"] / enc_name("config.json")
    r = run_cli(*argv, "--force")
    assert r.exit_code == 0, r.stderr
    assert digest(w["key"]) == key_sha and os.stat(w["key"]).st_nlink == 1
    expected = b'{"model_type": "llama"}\n'
    got = (out / name).read_bytes()
    assert (got if command == "decrypt" else upstream_xor(got, w["key"])) == expected
