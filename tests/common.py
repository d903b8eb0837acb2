"""What several test files check and build the same way: one error line, tensors equal to the bit, md5s,
output folders read back, recorded library calls, small input files and a shell to pipe commands through.

Imported by module name (``from common import one_error_line``), as ``spec_reference`` is: pytest puts
this folder on ``sys.path`` for the test files beside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import pytest
import torch
from safetensors.torch import load_file

from llmkit.io import open_source

EMPTY = hashlib.sha256(b"").hexdigest()  # the sha256 of no bytes: TechGPT's .enc label
BIN = Path(sys.executable).parent  # the venv's bin: llmkit and python3


class CommandResult(Protocol):
    """What ``run_cli`` returns (conftest.CliResult): the exit code and the two streams."""

    exit_code: int
    stdout: str
    stderr: str


# ------------------------------------------------------------------ error lines


def stderr_is_one_error_line(stderr: str, *names: str | Path) -> str:
    """``stderr`` is exactly one line, ``error: ...``, not an internal error, naming every one of ``names``."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "internal error" not in lines[0]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def one_error_line(r: CommandResult, *names: str | Path) -> str:
    """Exit 2 and exactly one stderr line, ``error: ...``, naming every one of ``names``."""
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    return stderr_is_one_error_line(r.stderr, *names)


def only_error_line(stderr: str) -> str:
    """The one ``error:`` line of a failure (other stderr lines, e.g. progress, are allowed around it)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"expected exactly one error: line, got {stderr!r}"
    return errors[0]


# ------------------------------------------------------------------ tensors and files


def assert_same(out: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """The same tensor names and, name by name, the same dtype, shape and bits."""
    assert set(out) == set(expected), sorted(set(out) ^ set(expected))
    for name, want in expected.items():
        got = out[name]
        assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, want.dtype, got.shape)
        assert torch.equal(got, want), name


def load_output(folder: Path) -> dict[str, torch.Tensor]:
    """Read an output folder's weights with safetensors/torch themselves (not llmkit)."""
    state: dict[str, torch.Tensor] = {}
    for p in sorted(folder.glob("*.safetensors")):
        state.update(load_file(p))
    for p in sorted(folder.glob("*.bin")):
        state.update(torch.load(p, weights_only=True))
    return state


def merged_state(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the model at ``out``, read through llmkit's source (any layout it reads)."""
    with open_source(out) as src:
        return {k: t.clone() for k, t in src}


def md5(data: bytes | Path) -> str:
    """The md5 hex digest of ``data``, or of the bytes of the file at ``data``."""
    return hashlib.md5(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def write_file(path: Path, data: bytes) -> Path:
    """``data`` at ``path``, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def enc_name(name: str) -> str:
    """The name TechGPT publishes the encrypted ``name`` under."""
    return f"{name}.{EMPTY}.enc"


def tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too): relative path -> sha256 of a file, "dir", or "link"."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink():
                out[rel] = "link -> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------ the CLI's one library call


def record_options(
    monkeypatch: pytest.MonkeyPatch, *targets: tuple[object, str], keywords: tuple[str, ...] | None = None
) -> list[object]:
    """Replace each library call ``(module, name)`` with a recorder: it keeps the options object it is given
    and ends the command with ``SystemExit(0)`` (only the options matter). ``keywords``: the runtime keyword
    arguments the real call takes (any other fails, as it would there); ``None`` accepts any.
    Returns the list the options are appended to."""
    seen: list[object] = []

    def record(options: object, **runtime: object) -> None:
        unexpected = set(runtime) - set(keywords) if keywords is not None else set()
        if unexpected:
            raise TypeError(f"unexpected keyword arguments: {sorted(unexpected)}")
        seen.append(options)
        raise SystemExit(0)

    for module, name in targets:
        monkeypatch.setattr(module, name, record)
    return seen


# ------------------------------------------------------------------ a shell


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """``bash -c 'set -o pipefail; SCRIPT'`` in ``cwd``, with the venv's bin first on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("LLMKIT_DEBUG", None)
    return subprocess.run(
        ["bash", "-c", "set -o pipefail\n" + script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
