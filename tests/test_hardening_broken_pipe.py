"""A reader that stops early (``llmkit ... | head``) is not an error of llmkit's: exit 141 quietly.

Every case is a real ``bash -c 'set -o pipefail; llmkit ... | head -c 10'`` with the installed console script,
so stdout is a real pipe whose reader goes away. The output of each case is larger than a pipe's buffer
(64 KiB), so the write after ``head`` exits really fails with EPIPE. 141 is 128 + SIGPIPE, what the shell
reports for ``yes | head -c 10`` under ``pipefail`` (checked here too, as the reference).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from common import BIN, EMPTY
from common import bash as shell
from safetensors.torch import save_file
from spec_reference import upstream_xor

LLMKIT = BIN / "llmkit"


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """The script in a shell (common.bash), its exit status last on stderr as ``rc=N``."""
    return shell(script + "\necho rc=$? >&2", cwd)


def rc_and_stderr(r: subprocess.CompletedProcess) -> tuple[int, str]:
    lines = r.stderr.splitlines()
    assert lines and lines[-1].startswith("rc="), r.stderr
    return int(lines[-1][3:]), "\n".join(lines[:-1])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """An 8 MB safetensors file and its TechGPT-style .enc; 2,000 small files; a file of 3,000 tensors."""
    root = tmp_path_factory.mktemp("pipes")
    torch.manual_seed(0)
    key = root / "key.pth"
    torch.save({"x": torch.randn(1000, 100)}, key)
    plain = root / "plain.safetensors"
    save_file({"w": torch.randn(2000, 1000)}, plain)
    (root / f"model.safetensors.{EMPTY}.enc").write_bytes(upstream_xor(plain.read_bytes(), key))
    many = root / "many"
    many.mkdir()
    for i in range(2000):
        (many / f"file{i:04d}.txt").write_text(f"{i}\n")
    save_file({f"t{i:04d}": torch.zeros(1) for i in range(3000)}, root / "wide.safetensors")
    return root


CASES = {
    "decrypt -o -": f"decrypt model.safetensors.{EMPTY}.enc --key key.pth --no-key-check -o - -q",
    "checksum": "checksum many",
    "checksum --json": "checksum many --json",
    "inspect --json": "inspect wide.safetensors --json",
}


def test_the_reference_a_tool_killed_by_sigpipe_exits_141_under_pipefail(tmp_path):
    rc, _ = rc_and_stderr(bash("yes | head -c 10 >/dev/null", tmp_path))
    assert rc == 141


@pytest.mark.parametrize("case", list(CASES))
def test_a_reader_that_stops_early_ends_the_command_quietly_with_141(inputs, case):
    args = CASES[case]
    full = subprocess.run([str(LLMKIT), *shlex.split(args)], cwd=inputs, capture_output=True, timeout=300)
    assert full.returncode == 0, full.stderr
    assert len(full.stdout) > 70_000, len(full.stdout)  # more than a pipe holds: the write after head exits fails
    rc, stderr = rc_and_stderr(bash(f"{shlex.quote(str(LLMKIT))} {args} | head -c 10 >/dev/null", inputs))
    assert rc == 141, stderr
    assert "error" not in stderr.lower() and "broken pipe" not in stderr.lower(), stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


def test_a_reader_gone_before_the_first_byte_ends_a_small_result_quietly_too(inputs):
    rc, stderr = rc_and_stderr(bash(f"{shlex.quote(str(LLMKIT))} models | true", inputs))
    assert rc == 141, stderr
    assert stderr.strip() == "", stderr
