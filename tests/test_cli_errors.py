"""Every failure is one ``error:`` line on stderr and an exit code; with --json, also one JSON object on stdout.

Covers Typer's usage errors (bad option values, missing/unknown options, missing arguments, unknown
commands), library errors, OS errors, check failures, interrupts and internal errors, in-process through
``CliRunner`` and through the installed console script.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.cli.usage import LlmkitGroup

LLMKIT = Path(sys.executable).parent / "llmkit"  # the console script (llmkit.cli:main)
ERROR_KEYS = {"ok", "error", "path", "hint", "exit_code"}

# (argv, what the single stderr line must contain, in order: the option or command, then its allowed values)
USAGE_ERRORS = {
    "range": (
        ["decrypt", "x.enc", "--jobs", "0", "-k", "key", "-o", "out"],
        ["error: --jobs: 0 is not in the range 1<=x<=16", "(see llmkit decrypt --help)"],
    ),
    "range-short-flag": (
        ["decrypt", "x.enc", "-j", "17", "-k", "key", "-o", "out"],
        ["--jobs: 17 is not in the range 1<=x<=16"],
    ),
    "choice": (
        ["merge-lora", "--dtype", "fp8", "--base", "b", "--lora", "l", "-o", "o"],
        ["error: --dtype: 'fp8' is not one of keep, fp16, bf16, fp32", "(see llmkit merge-lora --help)"],
    ),
    "choice-format": (
        ["decrypt", "x.enc", "-k", "key", "-o", "out", "--format", "xor"],
        ["--format: 'xor' is not one of auto, techgpt, belle"],
    ),
    "not-an-integer": (["verify", "--jobs", "many"], ["--jobs: 'many' is not a valid integer"]),
    "missing-option": (
        ["decrypt", "x.enc", "-o", "out"],
        ["error: --key: required option not given", "(see llmkit decrypt --help)"],
    ),
    "option-without-value": (["decrypt", "x.enc", "-o", "out", "-k"], ["error: --key: needs a value"]),
    "unknown-option": (
        ["inspect", "model", "--no-such-flag"],
        ["error: --no-such-flag: no such option", "(see llmkit inspect --help)"],
    ),
    "unknown-option-suggests": (
        ["inspect", "model", "--tensor"],
        ["--tensor: no such option; did you mean", "--tensors"],
    ),
    "unknown-root-option": (["--bogus"], ["error: --bogus: no such option", "(see llmkit --help)"]),
    "missing-argument": (["inspect"], ["error: PATH: required argument not given", "(see llmkit inspect --help)"]),
    "extra-argument": (["inspect", "a", "b"], ["error: b: unexpected extra argument"]),
    "unknown-command": (
        ["nosuchcommand"],
        ["error: nosuchcommand: no such command", "inspect", "verify", "(see llmkit --help)"],
    ),
    "misspelt-command": (["inspec", "x"], ["error: inspec: no such command; did you mean inspect?"]),
}


def invoke(*args: str, env: dict | None = None):
    return CliRunner(env=env).invoke(app, [str(a) for a in args])


def assert_one_error_line(stderr: str, *parts: str) -> str:
    assert stderr.endswith("\n") and stderr.count("\n") == 1, repr(stderr)
    line = stderr.rstrip("\n")
    assert line.startswith("error: ") and "Usage" not in line and "Traceback" not in line
    pos = 0
    for part in parts:
        found = line.find(part, pos)
        assert found >= 0, f"{part!r} not in {line!r} (after position {pos})"
        pos = found + len(part)
    return line


def assert_error_object(stdout: str, exit_code: int) -> dict:
    data = json.loads(stdout)  # the whole of stdout is one JSON value
    assert isinstance(data, dict) and set(data) >= ERROR_KEYS
    assert data["ok"] is False and data["exit_code"] == exit_code and data["error"]
    return data


# ------------------------------------------------------------------------- usage errors (exit 2)


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_error_is_one_line_naming_the_option_and_allowed_values(case):
    argv, parts = USAGE_ERRORS[case]
    r = invoke(*argv, env={"COLUMNS": "40"})  # narrow terminal: still one line
    assert r.exit_code == 2
    assert r.stdout == ""
    assert_one_error_line(r.stderr, *parts)


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_error_with_json_prints_the_error_object(case):
    argv, parts = USAGE_ERRORS[case]
    r = invoke(argv[0], "--json", *argv[1:])  # not last: "-k --json" would make it -k's value
    assert r.exit_code == 2
    line = assert_one_error_line(r.stderr, *parts)
    data = assert_error_object(r.stdout, 2)
    assert data["path"] is None and data["hint"].startswith("see llmkit") and data["hint"].endswith("--help")
    assert line == f"error: {data['error']} ({data['hint']})"


def test_json_after_double_dash_is_not_the_flag():
    r = invoke("inspect", "--no-such-flag", "--", "--json")
    assert r.exit_code == 2 and r.stdout == ""


def test_help_version_and_bare_command_are_unchanged():
    r = invoke("decrypt", "--help")  # required options missing: help still wins
    assert r.exit_code == 0 and r.stdout.startswith("Usage: llmkit decrypt") and r.stderr == ""
    r = invoke("-h")
    assert r.exit_code == 0 and "Unlock:" in r.stdout and "decrypt" in r.stdout  # commands listed by stage
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.startswith("llmkit ")
    r = invoke()  # no_args_is_help: the help text, exit 2 (as before)
    assert r.exit_code == 2 and "Usage: llmkit" in r.stdout + r.stderr and "error:" not in r.stderr


# ------------------------------------------------------------------------- library and OS errors


def test_library_error_with_json_gives_path_and_hint(run_cli):
    r = run_cli("inspect", "/no/such/path", "--json")
    assert r.exit_code == 2
    data = assert_error_object(r.stdout, 2)
    assert data["path"] == "/no/such/path" and data["hint"] and data["error"]
    assert_one_error_line(r.stderr, "error: /no/such/path: ", data["error"], f"({data['hint']})")


def test_verify_missing_file_with_json(run_cli, tmp_path):
    (tmp_path / "t.md5").write_text(f"{'0' * 32}  a.txt\n")
    missing = tmp_path / "nothere.txt"
    r = run_cli("verify", missing, "--table", tmp_path / "t.md5", "--json")
    assert r.exit_code == 2
    data = assert_error_object(r.stdout, 2)
    assert data["path"] == str(missing) and data["hint"]
    assert_one_error_line(r.stderr, str(missing))


def test_without_json_stdout_stays_empty(run_cli):
    r = run_cli("inspect", "/no/such/path")
    assert r.exit_code == 2 and r.stdout == ""
    assert_one_error_line(r.stderr, "error: /no/such/path: no such file or folder (check the path)")


# ------------------------------------------------------------------------- check failures (exit 1)


def test_verify_mismatch_with_json_is_the_report_plus_error_keys(run_cli, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a.txt").write_text("not what the table says\n")
    (tmp_path / "t.md5").write_text(f"{'0' * 32}  a.txt\n")
    r = run_cli("verify", folder, "--table", tmp_path / "t.md5", "--json")
    assert r.exit_code == 1
    data = assert_error_object(r.stdout, 1)
    assert "1 mismatch" in data["error"]
    row = data["files"][0]  # the report is still all there
    assert row["status"] == "mismatch" and row["expected"] == "0" * 32
    assert row["actual"] == hashlib.md5(b"not what the table says\n").hexdigest()


def test_verify_tensors_difference_with_json(run_cli, tiny_factory):
    a, b = tiny_factory(seed=0), tiny_factory(seed=1)
    r = run_cli("verify", "--tensors", a.path, b.path, "--json")
    assert r.exit_code == 1
    data = assert_error_object(r.stdout, 1)
    assert data["error"].startswith("tensors differ") and sorted(data["differing"]) == sorted(a.state)


def test_a_failed_report_keeps_its_fields_and_gains_the_error_keys(capsys):
    from llmkit.cli.output import Failure, Output

    Output(json_mode=True).result(
        {"ok": False, "files": [1]}, lambda console: None, failed=Failure("1 mismatch", exit_code=1)
    )
    assert json.loads(capsys.readouterr().out) == {
        "ok": False,
        "files": [1],
        "error": "1 mismatch",
        "path": None,
        "hint": None,
        "exit_code": 1,
    }
    out = Output(json_mode=True)
    out.result({"ok": True}, lambda console: None)
    out.fail(Failure("late", exit_code=3))  # a result is already on stdout: no second JSON value
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"ok": True} and captured.err == "error: late\n"


def test_check_failed_from_the_library_with_json(run_cli, tmp_path):
    """A BELLE file whose decrypted bytes do not match its sha256 header: CheckFailed, exit 1."""
    (tmp_path / "key.pth").write_bytes(os.urandom(4096))
    digest = hashlib.sha256(b"the published bytes").digest()
    enc = tmp_path / f"weights.dat.{digest.hex()}.enc"
    enc.write_bytes(digest + os.urandom(5000))
    r = run_cli(
        "decrypt",
        enc,
        "--key",
        tmp_path / "key.pth",
        "-o",
        tmp_path / "out",
        "--no-key-check",
        "--no-content-check",
        "--json",
    )
    assert r.exit_code == 1
    data = assert_error_object(r.stdout, 1)
    assert data["path"] == str(enc) and "sha256" in data["error"] and data["hint"]
    assert_one_error_line(r.stderr, "sha256")
    assert not (tmp_path / "out" / "weights.dat").exists()


# ------------------------------------------------------------------------- interrupts and internal errors


@pytest.mark.parametrize(
    "exc, code, words",
    [(ZeroDivisionError("boom"), 3, "internal error: ZeroDivisionError"), (KeyboardInterrupt(), 130, "interrupted")],
)
def test_internal_error_and_interrupt_with_json(monkeypatch, run_cli, tmp_path, exc, code, words):
    import llmkit.summary

    def broken(path, *args):
        raise exc

    monkeypatch.setattr(llmkit.summary, "summarize", broken)
    r = run_cli("inspect", tmp_path, "--json")
    assert r.exit_code == code
    data = assert_error_object(r.stdout, code)
    assert words in data["error"]
    assert_one_error_line(r.stderr, words)


def test_an_exception_that_escapes_a_command_is_still_one_line():
    """The group is the last net: code outside command_guard that raises."""
    other = typer.Typer(cls=LlmkitGroup, add_completion=False)

    @other.command("boom")
    def boom(json_: bool = typer.Option(False, "--json")) -> None:
        raise ValueError("outside the guard")

    @other.command("other")
    def _other() -> None:
        pass

    r = CliRunner().invoke(other, ["boom", "--json"])
    assert r.exit_code == 3 and not isinstance(r.exception, ValueError)
    data = assert_error_object(r.stdout, 3)
    assert "ValueError: outside the guard" in data["error"] and "--debug" in data["hint"]
    assert_one_error_line(r.stderr, "internal error")


# ------------------------------------------------------------------------- the real console script


def run_script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    assert LLMKIT.exists(), f"{LLMKIT}: the console script is not installed (pip install -e .)"
    env = {**os.environ, "LLMKIT_DEBUG": "", "COLUMNS": "60"}
    return subprocess.run(
        [str(LLMKIT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_console_script_usage_error():
    proc = run_script("decrypt", "x.enc", "--jobs", "0", "-k", "key", "-o", "out")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "error: --jobs: 0 is not in the range 1<=x<=16 (see llmkit decrypt --help)\n"
    proc = run_script("merge-lora", "--dtype", "fp8", "--base", "b", "--lora", "l", "-o", "o", "--json")
    assert proc.returncode == 2
    data = assert_error_object(proc.stdout, 2)
    assert data["error"] == "--dtype: 'fp8' is not one of keep, fp16, bf16, fp32"
    assert_one_error_line(proc.stderr, "--dtype")


def test_console_script_json_error(tmp_path):
    proc = run_script("inspect", tmp_path / "missing", "--json")
    assert proc.returncode == 2
    data = assert_error_object(proc.stdout, 2)
    assert data["path"] == str(tmp_path / "missing") and data["hint"]
    assert_one_error_line(proc.stderr, str(tmp_path / "missing"))


def test_console_script_unknown_command_and_help():
    proc = run_script("nosuchcommand", "--json")
    assert proc.returncode == 2 and assert_error_object(proc.stdout, 2)["hint"] == "see llmkit --help"
    assert_one_error_line(proc.stderr, "nosuchcommand: no such command")
    proc = run_script("--help")
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: llmkit") and proc.stderr == ""
