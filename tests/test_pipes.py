"""Tensor streams through shell pipes: ``-o -`` writes a safetensors stream on stdout, ``-`` reads one on stdin.

The contract: a pipe gives exactly what the same commands give through folders (every output file byte for
byte; stdout the same but for the input's name); a producer that fails or is killed makes the consumer fail
with one line and keep nothing; a consumer that would need the stream in another order is refused before it
reads a tensor.

Speed: every (producer, consumer) pair runs in-process in both forms (typer's runner: the producer's stdout
bytes are the consumer's stdin); the real pipes (``bash -o pipefail``, the installed ``llmkit``) are few,
since each process pays the torch import. The models are common.py's tiny ones (no transformers import).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import itertools
import json
import os
import re
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from common import BIN, bash, stderr_is_one_error_line, tiny_state, tuned_state, write_hf, write_lora, write_meta
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.errors import InputError
from llmkit.io.core.spec import TensorSpec
from llmkit.io.hf.stream import open_stdin_stream, open_stream
from llmkit.io.hf.stream_sink import StreamSink
from llmkit.tiny import TINY_LAYERS

LLMKIT = BIN / "llmkit"
ENDED = re.compile(
    r"the stream on stdin ended after (\d+) of (\d+) bytes \(the command writing it failed or was killed\)"
)


def invoke(*args: object, stdin: bytes | None = None):
    """``llmkit ARGS`` in-process; ``stdin`` bytes are its stdin. The result has stdout_bytes and stderr."""
    r = CliRunner().invoke(app, [str(a) for a in args], input=stdin)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r


def ok(r):
    assert r.exit_code == 0, (r.exit_code, r.stderr[-3000:])
    return r


def q(p: object) -> str:
    return shlex.quote(str(p))


def contents(path: Path) -> dict[str, str]:
    """Every file of an output (a folder, or one file): relative name -> sha256."""
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*"))}


def state_dict_order() -> list[str]:
    """transformers' LLaMA state-dict order, written out: the order a stream lists its tensors in."""
    modules = [f"self_attn.{x}_proj" for x in "qkvo"] + [f"mlp.{x}_proj" for x in ("gate", "up", "down")]
    modules += ["input_layernorm", "post_attention_layernorm"]
    layers = [f"model.layers.{n}.{m}.weight" for n in range(TINY_LAYERS) for m in modules]
    return ["model.embed_tokens.weight", *layers, "model.norm.weight", "lm_head.weight"]


def header_of(stream: bytes) -> tuple[dict, int]:
    (n,) = struct.unpack("<Q", stream[:8])
    return json.loads(stream[8 : 8 + n]), 8 + n


# ---------------------------------------------------------------- inputs


@dataclass
class Inputs:
    root: Path
    base: Path
    tuned: Path
    diff: Path
    meta: Path
    lora: Path
    ckpt: Path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("pipes")
    state = tiny_state(0)
    base, tuned = write_hf(root / "base", state), write_hf(root / "tuned", tuned_state(state))
    ok(invoke("make-diff", "--base", base, "--target", tuned, "-o", root / "diff", "-q"))
    ok(invoke("to-ckpt", base, "-o", root / "base.ckpt", "-q"))
    return Inputs(
        root,
        base,
        tuned,
        root / "diff",
        write_meta(root / "meta", state),
        write_lora(root / "lora"),
        root / "base.ckpt",
    )


PRODUCERS: dict[str, Callable[[Inputs], list[object]]] = {
    "recover": lambda i: ["recover", "--base", i.base, "--diff", i.diff],
    "make-diff": lambda i: ["make-diff", "--base", i.base, "--target", i.tuned],
    "merge-lora": lambda i: ["merge-lora", "--base", i.base, "--lora", i.lora],
    "from-meta": lambda i: ["from-meta", i.meta],
    "from-ckpt": lambda i: ["from-ckpt", i.ckpt, "--config", i.base],
}

# consumer -> (args for a source and an output path, whether it writes that output)
CONSUMERS: dict[str, tuple[Callable[[Inputs, object, Path], list[object]], bool]] = {
    "merge-lora": (lambda i, src, out: ["merge-lora", "--base", src, "--lora", i.lora, "-o", out], True),
    "to-ckpt": (lambda i, src, out: ["to-ckpt", src, "-o", out], True),
    "to-meta": (lambda i, src, out: ["to-meta", src, "-o", out], True),
    "verify": (lambda i, src, out: ["verify", "--tensors", src, i.base, "--json"], False),
    "checksum": (lambda i, src, out: ["checksum", "--tensors", src], False),
    "inspect": (lambda i, src, out: ["inspect", src], False),
}


@pytest.fixture(scope="module")
def produced(inputs, tmp_path_factory) -> Callable[[str], tuple[Path, bytes]]:
    """``produced(name)``: the producer's output written to a folder, and its stream (``-o -``), made once."""
    cache: dict[str, tuple[Path, bytes]] = {}

    def make(name: str) -> tuple[Path, bytes]:
        if name not in cache:
            folder = tmp_path_factory.mktemp(name) / "out"
            ok(invoke(*PRODUCERS[name](inputs), "-o", folder, "-q"))
            r = ok(invoke(*PRODUCERS[name](inputs), "-o", "-", "-q"))
            assert r.stdout_bytes and r.stderr == ""  # -q: nothing on stderr; stdout: the stream only
            cache[name] = folder, r.stdout_bytes
        return cache[name]

    return make


def _rows(text: str, *names: tuple[str, str]) -> list[str]:
    """Result text with paths replaced and the rows that differ from run to run (time, memory, disk) left out."""
    for old, new in names:
        text = text.replace(old, new)
    return [line for line in text.splitlines() if line.split(" ")[0] not in ("time", "memory", "disk")]


# ---------------------------------------------------------------- a pipe gives what folders give


@pytest.mark.parametrize("consumer", sorted(CONSUMERS))
@pytest.mark.parametrize("producer", sorted(PRODUCERS))
def test_a_pipe_gives_what_the_folders_give(producer, consumer, inputs, produced, tmp_path):
    folder, stream = produced(producer)
    args, writes = CONSUMERS[consumer]
    by_folder = invoke(*args(inputs, folder, tmp_path / "via-folder"))
    by_pipe = invoke(*args(inputs, "-", tmp_path / "via-pipe"), stdin=stream)
    assert by_folder.exit_code in (0, 1), by_folder.stderr  # verify: 1 when the model is not the base
    assert by_pipe.exit_code == by_folder.exit_code, by_pipe.stderr
    if writes:
        assert contents(tmp_path / "via-pipe") == contents(tmp_path / "via-folder") != {}
        outs = [(str(tmp_path / "via-pipe"), "OUT"), ("via-pipe", "OUT")]
        assert _rows(by_pipe.stdout, *outs) == _rows(
            by_folder.stdout, (str(folder), "-"), (str(tmp_path / "via-folder"), "OUT"), ("via-folder", "OUT")
        )
    else:
        assert by_pipe.stdout == by_folder.stdout.replace(str(folder / "model.safetensors"), "-").replace(
            str(folder), "-"
        )
    assert sorted(tmp_path.iterdir()) == ([tmp_path / "via-folder", tmp_path / "via-pipe"] if writes else [])


@pytest.mark.parametrize("producer", sorted(PRODUCERS))
def test_the_stream_is_a_safetensors_file_in_state_dict_order_with_the_side_files(producer, produced):
    folder, stream = produced(producer)
    header, start = header_of(stream)
    assert (start - 8) % 8 == 0 and len(stream) == start + sum(  # padded as safetensors pads, nothing after
        e["data_offsets"][1] - e["data_offsets"][0] for k, e in header.items() if k != "__metadata__"
    )
    assert [k for k in header if k != "__metadata__"] == state_dict_order()
    offsets = [header[k]["data_offsets"] for k in state_dict_order()]
    assert offsets[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(offsets))
    on_disk = load_file(folder / "model.safetensors")
    got = load_safetensors(stream)  # safetensors' own reader: the stream is a safetensors file
    assert got.keys() == on_disk.keys() and all(torch.equal(got[k], on_disk[k]) for k in got)
    metadata = header["__metadata__"]
    on_disk_header, _ = header_of((folder / "model.safetensors").read_bytes())  # the folder's order: consumers
    file_order = sorted(
        (k for k in on_disk_header if k != "__metadata__"), key=lambda k: on_disk_header[k]["data_offsets"]
    )
    assert json.loads(metadata.pop("llmkit.order")) == file_order  # plan in it, whichever way the input came
    assert metadata.pop("format") == "pt"
    side = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "model.safetensors"}
    assert {k.removeprefix("llmkit.file:"): base64.b64decode(v) for k, v in metadata.items()} == side


def test_recover_reads_a_stream_as_its_base_in_the_stream_order(inputs, produced, tmp_path):
    """The diff's order is the file's (by name); the base arrives in state-dict order: the run follows the
    stream, and the output folder is laid out as from a folder base."""
    folder, stream = produced("from-meta")
    ok(invoke("recover", "--base", folder, "--diff", inputs.diff, "-o", tmp_path / "a", "-q"))
    ok(invoke("recover", "--base", "-", "--diff", inputs.diff, "-o", tmp_path / "b", "-q", stdin=stream))
    assert contents(tmp_path / "b") == contents(tmp_path / "a")


# ---------------------------------------------------------------- a stream that stops short keeps nothing


@pytest.mark.parametrize("consumer", sorted(CONSUMERS))
def test_a_stream_short_of_its_last_byte_fails_every_consumer_and_keeps_nothing(consumer, inputs, produced, tmp_path):
    """A failed producer never writes its last byte (the sink writes it at a clean exit only)."""
    _, stream = produced("recover")
    args, _ = CONSUMERS[consumer]
    r = invoke(*args(inputs, "-", tmp_path / "out"), "-q", stdin=stream[:-1])
    assert r.exit_code == 2
    line = stderr_is_one_error_line(r.stderr)
    assert ENDED.search(line).groups() == (str(len(stream) - 1), str(len(stream))), line
    assert list(tmp_path.iterdir()) == []


def test_a_stream_cut_in_its_header_is_one_line(inputs, produced, tmp_path):
    _, stream = produced("recover")
    r = invoke("to-ckpt", "-", "-o", tmp_path / "x.ckpt", stdin=stream[:100])
    assert "ended after 100 of" in stderr_is_one_error_line(r.stderr) and r.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_bytes_after_the_stream_are_refused(produced, tmp_path):
    _, stream = produced("recover")
    r = invoke("checksum", "--tensors", "-", "-q", stdin=stream + b"x")
    assert r.exit_code == 2 and "goes on after" in stderr_is_one_error_line(r.stderr)


@pytest.mark.parametrize(
    "data", [b"", b"not a safetensors stream at all", struct.pack("<Q", 4) + b"[1] "], ids=["empty", "text", "json"]
)
def test_what_is_not_a_stream_is_one_line(data, tmp_path):
    r = invoke("inspect", "-", stdin=data)
    assert r.exit_code == 2 and stderr_is_one_error_line(r.stderr).startswith("error: ")


def test_a_side_file_name_that_leaves_the_folder_is_refused(tmp_path):
    meta = {"__metadata__": {"llmkit.file:../x": base64.b64encode(b"y").decode()}}
    raw = json.dumps(meta).encode()
    with pytest.raises(InputError, match=re.escape("side file named '../x'")):
        open_stream(io.BytesIO(struct.pack("<Q", len(raw)) + raw))


# ---------------------------------------------------------------- reading front to back


def _tiny_stream(tmp_path) -> bytes:
    specs = [TensorSpec(n, torch.float32, (2,)) for n in ("model.norm.weight", "model.embed_tokens.weight", "x")]
    out = io.BytesIO()
    with StreamSink(specs, out=out) as sink:
        sink.add_file("config.json", b"{}")
        for i, name in enumerate(sink.write_order):
            sink.write(name, torch.full((2,), float(i)))
    return out.getvalue()


def test_a_stream_source_reads_forward_only_but_keeps_the_last_tensor(tmp_path):
    src = open_stream(io.BytesIO(_tiny_stream(tmp_path)))
    try:
        assert src.keys() == ["model.norm.weight", "model.embed_tokens.weight", "x"]  # the planned order
        assert [src.stream_position(k) for k in src.keys()] == [1, 0, 2]  # state-dict order, then the rest
        assert (src.folder / "config.json").read_bytes() == b"{}" and src.path == Path("-")
        norm = src.get("model.norm.weight")  # skips the embedding
        assert src.get("model.norm.weight") is norm  # the last one, read again
        with pytest.raises(InputError, match="had passed it"):
            src.get("model.embed_tokens.weight")
        assert torch.equal(src.get("x"), torch.full((2,), 2.0))
        src.read_to_end()
    finally:
        folder = src.folder
        src.close()
    assert folder is not None and not folder.exists()


def test_the_stream_sink_takes_tensors_in_stream_order_only():
    specs = [
        TensorSpec("model.norm.weight", torch.float32, (2,)),
        TensorSpec("model.embed_tokens.weight", torch.float32, (2,)),
    ]
    with pytest.raises(InputError, match="out of stream order"), StreamSink(specs, out=io.BytesIO()) as sink:
        sink.write("model.norm.weight", torch.zeros(2))


def test_an_empty_model_is_a_header_at_a_clean_exit():
    out = io.BytesIO()
    with StreamSink([], out=out):
        assert out.getvalue() == b""
    assert load_safetensors(out.getvalue()) == {}


class _Terminal(io.BytesIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_on_stdout_is_refused():
    with pytest.raises(InputError, match="terminal") as e:
        StreamSink([], out=_Terminal())
    assert "pipe it" in str(e.value)


def test_a_terminal_on_stdin_is_refused(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(_Terminal()))
    with pytest.raises(InputError, match="stdin is a terminal") as e:
        open_stdin_stream()
    assert "pipe a stream in" in str(e.value)


# ---------------------------------------------------------------- refusals, before anything is read or written


def test_a_consumer_that_needs_another_order_is_refused_before_reading_a_tensor(inputs, tmp_path):
    """A .ckpt is written in state-dict order; model.safetensors holds its tensors by name. Only the header is
    sent and the pipe stays open: to-ckpt must refuse from the header alone."""
    data = (inputs.base / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    proc = subprocess.Popen(
        [LLMKIT, "to-ckpt", "-", "-o", tmp_path / "x.ckpt"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(data[: 8 + n])
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 2
        line = stderr_is_one_error_line(proc.stderr.read().decode())
    finally:
        proc.kill()
        proc.wait()
    assert "needs tensor 'model.layers.0.self_attn.k_proj.weight' after" in line and "stream on stdin" in line
    assert list(tmp_path.iterdir()) == []


def test_a_stream_output_from_a_stream_in_another_order_is_refused(inputs, tmp_path):
    data = (inputs.base / "model.safetensors").read_bytes()
    r = invoke("merge-lora", "--base", "-", "--lora", inputs.lora, "-o", "-", stdin=data)
    assert r.exit_code == 2 and r.stdout_bytes == b""
    assert "stream on stdin holds it before" in stderr_is_one_error_line(r.stderr)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--json"], ("--json", "-o -")),
        (["--format", "bin"], ("-o - writes a safetensors stream", "--format")),
        (["--reference", "base"], ("--reference", "-o -")),
    ],
    ids=["json", "bin", "reference"],
)
def test_what_cannot_go_to_a_stream_is_refused_with_stdout_untouched(extra, words, inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(inputs.root)
    r = invoke("recover", "--base", inputs.base, "--diff", inputs.diff, "-o", "-", *extra)
    assert r.exit_code == 2 and r.stdout_bytes == b""
    stderr_is_one_error_line(r.stderr, *words)


def test_only_one_side_of_verify_can_be_the_stream():
    r = invoke("verify", "--tensors", "-", "-", stdin=b"")
    assert r.exit_code == 2 and "only one side" in stderr_is_one_error_line(r.stderr)


def test_with_dash_o_dash_the_result_goes_to_stderr(inputs, produced):
    _, stream = produced("recover")
    r = ok(invoke(*PRODUCERS["recover"](inputs), "-o", "-"))
    assert r.stdout_bytes == stream
    assert "recovered  - (fp32, 21 tensors" in r.stderr and "a stream on stdout" in r.stderr


# ---------------------------------------------------------------- real pipes


def _in_empty_folder(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """An empty working folder, and an empty TMPDIR for the processes (a stream's side files go there)."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    return cwd, tmp


def test_the_zhixi_pipeline_writes_only_the_ckpt_the_folders_give(inputs, tmp_path, monkeypatch):
    cwd, tmp = _in_empty_folder(tmp_path, monkeypatch)
    r = bash(
        f"llmkit recover --base {q(inputs.base)} --diff {q(inputs.diff)} -o - -q"
        f" | llmkit merge-lora --base - --lora {q(inputs.lora)} -o - -q"
        " | llmkit to-ckpt - -o zhixi.ckpt -q",
        cwd,
    )
    assert r.returncode == 0, r.stderr
    assert os.listdir(cwd) == ["zhixi.ckpt"] and os.listdir(tmp) == []
    a, b, x = tmp_path / "A", tmp_path / "B", tmp_path / "x.ckpt"
    ok(invoke("recover", "--base", inputs.base, "--diff", inputs.diff, "-o", a, "-q"))
    ok(invoke("merge-lora", "--base", a, "--lora", inputs.lora, "-o", b, "-q"))
    ok(invoke("to-ckpt", b, "-o", x, "-q"))
    assert (cwd / "zhixi.ckpt").read_bytes() == x.read_bytes()


@pytest.mark.slow  # ~10 s each: two processes; the pairs all run in-process above
@pytest.mark.parametrize(
    "producer, consumer", [("make-diff", "checksum"), ("from-meta", "to-meta"), ("from-ckpt", "verify")]
)
def test_a_real_pipe_gives_what_the_folders_give(producer, consumer, inputs, produced, tmp_path, monkeypatch):
    cwd, tmp = _in_empty_folder(tmp_path, monkeypatch)
    args, writes = CONSUMERS[consumer]
    left = " ".join(q(a) for a in PRODUCERS[producer](inputs))
    right = " ".join(q(a) for a in args(inputs, "-", cwd / "out"))
    r = bash(f"llmkit {left} -o - -q | llmkit {right}", cwd)
    folder, _ = produced(producer)
    by_folder = invoke(*args(inputs, folder, tmp_path / "via-folder"))
    assert r.returncode == by_folder.exit_code, r.stderr
    if writes:
        assert contents(cwd / "out") == contents(tmp_path / "via-folder")
    else:
        assert r.stdout == by_folder.stdout.replace(str(folder), "-")
    assert os.listdir(cwd) == (["out"] if writes else []) and os.listdir(tmp) == []


def test_a_producer_cut_by_head_fails_the_consumer_with_one_line(inputs, produced, tmp_path, monkeypatch):
    cwd, tmp = _in_empty_folder(tmp_path, monkeypatch)
    _, stream = produced("recover")
    cut = header_of(stream)[1] + 1000  # inside the tensor data
    r = bash(
        f"llmkit recover --base {q(inputs.base)} --diff {q(inputs.diff)} -o - -q | head -c {cut}"
        " | llmkit to-ckpt - -o x.ckpt -q",
        cwd,
    )
    assert r.returncode == 2  # to-ckpt's; recover stops quietly when its reader goes (141)
    assert ENDED.search(stderr_is_one_error_line(r.stderr)).groups() == (str(cut), str(len(stream)))
    assert os.listdir(cwd) == [] and os.listdir(tmp) == []


def test_a_producer_whose_check_fails_fails_the_consumer(inputs, tmp_path, monkeypatch):
    """--check-sum is judged after the last tensor: the stream is whole but for its last byte."""
    cwd, _ = _in_empty_folder(tmp_path, monkeypatch)
    r = bash(
        f"llmkit recover --base {q(inputs.base)} --diff {q(inputs.diff)} -o - -q --check-sum 1"
        " | llmkit to-ckpt - -o x.ckpt -q",
        cwd,
    )
    assert r.returncode == 2
    errors = r.stderr.splitlines()
    assert len(errors) == 2 and "sum of all output values" in errors[0] and ENDED.search(errors[1]), r.stderr
    got, size = ENDED.search(errors[1]).groups()
    assert int(got) == int(size) - 1
    assert os.listdir(cwd) == []


def _pipe_fill(fd: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


def test_a_killed_producer_fails_the_consumer_and_keeps_nothing(inputs, produced, tmp_path, monkeypatch):
    """SIGKILL while the producer is blocked on a full pipe (512 KiB: the header and part of the data)."""
    cwd, tmp = _in_empty_folder(tmp_path, monkeypatch)
    _, stream = produced("recover")
    read_end, write_end = os.pipe()
    size = fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 512 * 1024)
    producer = subprocess.Popen(
        [LLMKIT, *map(str, PRODUCERS["recover"](inputs)), "-o", "-", "-q"], stdout=write_end, cwd=cwd
    )
    os.close(write_end)
    try:
        deadline, filled, since = time.monotonic() + 120, -1, time.monotonic()
        while filled < header_of(stream)[1] or time.monotonic() - since < 1.0:  # full: no growth for a second
            assert producer.poll() is None and time.monotonic() < deadline, "the producer did not fill the pipe"
            if _pipe_fill(read_end) != filled:
                filled, since = _pipe_fill(read_end), time.monotonic()
            time.sleep(0.05)
        producer.send_signal(signal.SIGKILL)
        assert producer.wait(timeout=60) == -signal.SIGKILL
        filled = _pipe_fill(read_end)  # what reached the pipe before the kill: all the consumer will get
        assert filled <= size
        consumer = subprocess.run(
            [LLMKIT, "to-ckpt", "-", "-o", "x.ckpt", "-q"], stdin=read_end, cwd=cwd, capture_output=True, text=True
        )
    finally:
        producer.kill()
        producer.wait()
        os.close(read_end)
    assert consumer.returncode == 2
    assert ENDED.search(stderr_is_one_error_line(consumer.stderr)).groups() == (str(filled), str(len(stream)))
    assert os.listdir(cwd) == [] and os.listdir(tmp) == []
