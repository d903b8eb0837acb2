"""Under a file-size limit (``ulimit -f``) every writer names its output file and the limit, exits 2 and
keeps nothing: no internal error from torch's zip writer (``[enforce fail at inline_container.cc]``), and no
input blamed (from-meta used to copy ``tokenizer.model`` to a temporary folder and fail there).

Each command runs in its own process with ``RLIMIT_FSIZE`` set and SIGXFSZ ignored, so a write past the
limit fails with EFBIG as it does under ``ulimit -f`` in a shell.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from common import EMPTY

LIMIT = 200_000  # bytes: below every tiny model's weight file (about 450 KB)
KEY = bytes(range(16))


def run_limited(args: list, env_tmp: Path) -> subprocess.CompletedProcess:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "TMPDIR": str(env_tmp), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llmkit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=preexec,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def everything(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, lora_work, tiny_factory):
    root = tmp_path_factory.mktemp("limit-inputs")
    enc = root / "enc"
    enc.mkdir()
    (enc / f"w.dat.{EMPTY}.enc").write_bytes(os.urandom(300_000))
    (root / "xor.key").write_bytes(os.urandom(1000))
    (root / "ms.key").write_bytes(KEY)
    ckpt = root / "m.ckpt"
    r = subprocess.run(
        [sys.executable, "-m", "llmkit", "to-ckpt", lora_work / "base", "-o", ckpt, "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert r.returncode == 0, r.stderr
    return {
        "base": lora_work / "base",
        "cute": lora_work / "cute",
        "meta": tiny_factory("meta").path,
        "tuned": tiny_factory("safetensors", seed=1).path,
        "enc": enc,
        "xor": root / "xor.key",
        "ms": root / "ms.key",
        "ckpt": ckpt,
    }


# command -> (its arguments before -o, the output it writes under -o OUT (None: OUT itself), the hint's fix)
WRITERS = {
    "to-meta": (lambda i: ["to-meta", i["base"]], "consolidated.00.pth", "--shards"),
    "merge-lora --format pth": (
        lambda i: ["merge-lora", "--base", i["base"], "--lora", i["cute"], "--format", "pth"],
        "consolidated.00.pth",
        "--pth-shards",
    ),
    "from-meta": (lambda i: ["from-meta", i["meta"]], "model.safetensors", "--shard-size"),
    "recover": (lambda i: ["recover", "--base", i["base"], "--diff", i["tuned"]], "model.safetensors", "--shard-size"),
    "to-ckpt": (lambda i: ["to-ckpt", i["base"]], None, "ulimit -f"),
    "to-ckpt --enc-key": (lambda i: ["to-ckpt", i["base"], "--enc-key", i["ms"]], None, "ulimit -f"),
    "from-ckpt": (lambda i: ["from-ckpt", i["ckpt"], "--config", i["base"]], "model.safetensors", "--shard-size"),
    "decrypt": (
        lambda i: ["decrypt", i["enc"], "--key", i["xor"], "--no-key-check", "--no-content-check"],
        "w.dat",
        "ulimit -f",
    ),
}


@pytest.mark.parametrize("command", list(WRITERS))
def test_a_file_size_limit_names_the_output_and_the_limit_and_keeps_nothing(tmp_path, inputs, command):
    args, written, fix = WRITERS[command]
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    out = work / ("out.ckpt" if written is None else "out")
    r = run_limited([*args(inputs), "-o", out, "--quiet"], tmp)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    line = lines[0]
    target = out if written is None else out / written
    assert line.startswith(f"error: {target}: "), line  # the output's final name: not a temporary one, no input
    assert f"file-size limit of {LIMIT:,} bytes" in line and "ulimit -f" in line and fix in line, line
    assert "internal error" not in line and "inline_container" not in line
    assert everything(work) == []  # no output, no stage, no lock
    assert everything(tmp) == []  # no temporary folder left behind either
