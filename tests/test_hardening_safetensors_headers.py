"""A safetensors header of the wrong shape is bad input for every command: exit 2, one line naming the file
and the field; never an internal error (exit 3) and never a run that reads tensor bytes from the wrong place.

The tiny model's ``model.safetensors`` (written by transformers) has its JSON header rewritten in many
type-wrong ways: each field of a tensor entry as a string, a list, null, a negative, fractional, boolean or
huge number, missing; entries that overlap, leave a hole or point past the data; ``__metadata__`` that is not
an object of strings; a name given twice; NaN / 1e400 / a 5000-digit number. The header is re-framed here with
the format's own rule (8-byte little-endian length, the JSON, then the unchanged data), independent of llmkit.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from common import one_error_line
from typer.testing import CliRunner

from llmkit.cli import app

WEIGHTS = "model.safetensors"


def split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def frame(header_text: str, data: bytes) -> bytes:
    head = header_text.encode("utf-8")
    return struct.pack("<Q", len(head)) + head + data


def in_order(header: dict) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


# Each mutation: (id, the word the error must contain, a function of (header dict, first, second) that changes
# the header in place and may return raw JSON text to use instead).
Mutation = tuple[str, str, Callable[[dict, str, str], str | None]]


def _set(field: str, value: object) -> Callable[[dict, str, str], None]:
    def change(h: dict, first: str, second: str) -> None:
        h[first][field] = value

    return change


def _edit(fn: Callable[[dict, str], None]) -> Callable[[dict, str, str], None]:
    return lambda h, first, second: fn(h[first], second)


def _drop(field: str) -> Callable[[dict, str, str], None]:
    def change(h: dict, first: str, second: str) -> None:
        del h[first][field]

    return change


def _raw(fn: Callable[[dict, str, str], str]) -> Callable[[dict, str, str], str]:
    return fn


def _overlap(h: dict, first: str, second: str) -> None:
    h[second] = dict(h[first])  # second now claims first's bytes; its own are left to no tensor


def _hole(h: dict, first: str, second: str) -> None:
    for name in in_order(h):  # every tensor 4 bytes later: a hole at the start, the last one past the end
        b, e = h[name]["data_offsets"]
        h[name]["data_offsets"] = [b + 4, e + 4]


def _duplicate(h: dict, first: str, second: str) -> str:
    text = json.dumps(h)
    entry = json.dumps({first: h[first]})[1:-1]
    return "{" + entry + ", " + text[1:]


def _literal(field: str, index: int, literal: str) -> Callable[[dict, str, str], str]:
    def change(h: dict, first: str, second: str) -> str:
        marker = 987654321
        h[first][field][index] = marker
        return json.dumps(h).replace(str(marker), literal, 1)

    return change


MUTATIONS: list[Mutation] = [
    ("dtype-unknown-string", "dtype", _set("dtype", "X")),
    ("dtype-lower-case", "dtype", _set("dtype", "f32")),
    ("dtype-list", "dtype", _set("dtype", ["F32"])),
    ("dtype-null", "dtype", _set("dtype", None)),
    ("dtype-number", "dtype", _set("dtype", 7)),
    ("dtype-object", "dtype", _set("dtype", {"F32": 1})),
    ("dtype-other-size", "data_offsets", _set("dtype", "F16")),
    ("dtype-missing", "dtype", _drop("dtype")),
    ("shape-string", "shape", _edit(lambda e, s: e.update(shape=",".join(map(str, e["shape"]))))),
    ("shape-strings", "shape", _edit(lambda e, s: e.update(shape=[str(n) for n in e["shape"]]))),
    ("shape-null", "shape", _set("shape", None)),
    ("shape-number", "shape", _edit(lambda e, s: e.update(shape=e["shape"][0]))),
    ("shape-negative", "shape", _edit(lambda e, s: e.update(shape=[-e["shape"][0], *e["shape"][1:]]))),
    ("shape-float", "shape", _edit(lambda e, s: e.update(shape=[float(n) for n in e["shape"]]))),
    ("shape-bool", "shape", _edit(lambda e, s: e.update(shape=[True for _ in e["shape"]]))),
    ("shape-huge", "shape", _edit(lambda e, s: e.update(shape=[10**20, *e["shape"][1:]]))),
    ("shape-wrong-size", "shape", _edit(lambda e, s: e.update(shape=[e["shape"][0] + 1, *e["shape"][1:]]))),
    ("shape-nested", "shape", _edit(lambda e, s: e.update(shape=[e["shape"]]))),
    ("shape-missing", "shape", _drop("shape")),
    ("shape-nan", "shape", _literal("shape", 0, "NaN")),
    ("shape-1e400", "shape", _literal("shape", 0, "1e400")),
    ("offsets-string", "data_offsets", _edit(lambda e, s: e.update(data_offsets=str(e["data_offsets"])))),
    ("offsets-strings", "data_offsets", _edit(lambda e, s: e.update(data_offsets=[str(n) for n in e["data_offsets"]]))),
    ("offsets-null", "data_offsets", _set("data_offsets", None)),
    ("offsets-one", "data_offsets", _edit(lambda e, s: e.update(data_offsets=e["data_offsets"][:1]))),
    ("offsets-three", "data_offsets", _edit(lambda e, s: e.update(data_offsets=[*e["data_offsets"], 0]))),
    ("offsets-negative", "data_offsets", _edit(lambda e, s: e.update(data_offsets=[-4, e["data_offsets"][1]]))),
    ("offsets-float", "data_offsets", _edit(lambda e, s: e.update(data_offsets=[float(n) for n in e["data_offsets"]]))),
    ("offsets-swapped", "data_offsets", _edit(lambda e, s: e.update(data_offsets=e["data_offsets"][::-1]))),
    (
        "offsets-object",
        "data_offsets",
        _edit(lambda e, s: e.update(data_offsets=dict(zip("be", e["data_offsets"], strict=True)))),
    ),
    (
        "offsets-past-the-end",
        "data_offsets",
        _edit(lambda e, s: e.update(data_offsets=[e["data_offsets"][0], e["data_offsets"][1] + 10**12])),
    ),
    ("offsets-missing", "data_offsets", _drop("data_offsets")),
    ("offsets-1e400", "data_offsets", _literal("data_offsets", 1, "1e400")),
    ("offsets-5000-digits", "number", _literal("data_offsets", 1, "9" * 5000)),
    ("entry-string", "entry", lambda h, f, s: h.update({f: "F32"})),
    ("entry-list", "entry", lambda h, f, s: h.update({f: [h[f]]})),
    ("entry-null", "entry", lambda h, f, s: h.update({f: None})),
    ("entry-number", "entry", lambda h, f, s: h.update({f: 0})),
    ("overlapping", "overlap", _overlap),
    ("hole-and-past-the-end", "belong to no tensor", _hole),
    ("duplicate-name", "twice", _raw(_duplicate)),
    ("metadata-list", "__metadata__", lambda h, f, s: h.update(__metadata__=["pt"])),
    ("metadata-string", "__metadata__", lambda h, f, s: h.update(__metadata__="pt")),
    ("metadata-number", "__metadata__", lambda h, f, s: h.update(__metadata__=1)),
    ("metadata-non-string-value", "__metadata__", lambda h, f, s: h.update(__metadata__={"format": 1})),
    ("header-array", "JSON object", _raw(lambda h, f, s: json.dumps([h]))),
]

COMMANDS: dict[str, Callable[[SimpleNamespace, Path, Path], list]] = {
    "inspect": lambda w, m, out: ["inspect", m],
    "checksum --tensors": lambda w, m, out: ["checksum", "--tensors", m],
    "recover": lambda w, m, out: ["recover", "--base", m, "--diff", w.tuned, "-o", out],
    "merge-lora": lambda w, m, out: ["merge-lora", "--base", m, "--lora", w.adapter, "-o", out],
    "to-ckpt": lambda w, m, out: ["to-ckpt", m, "-o", out.with_suffix(".ckpt")],
    "to-meta": lambda w, m, out: ["to-meta", m, "-o", out],
}


@pytest.fixture(scope="module")
def work(tmp_path_factory, lora_work, tiny_factory) -> SimpleNamespace:
    """One copy of the tiny base per mutation, only its model.safetensors header changed."""
    root = tmp_path_factory.mktemp("st-headers")
    w = SimpleNamespace(
        root=root, tuned=tiny_factory("safetensors", seed=1).path, adapter=lora_work / "cute", models={}
    )
    header, data = split(lora_work / "base" / WEIGHTS)
    first, second = in_order(header)[:2]
    for name, _, mutate in MUTATIONS:
        h = json.loads(json.dumps(header))
        text = mutate(h, first, second)
        folder = root / name
        shutil.copytree(lora_work / "base", folder)
        (folder / WEIGHTS).write_bytes(frame(text if text is not None else json.dumps(h), data))
        w.models[name] = folder
    w.first = first
    return w


def test_the_unchanged_header_reframed_by_the_test_is_read(tmp_path, lora_work, run_cli):
    """The framing above is right: the same header, re-framed, is a model every command reads."""
    header, data = split(lora_work / "base" / WEIGHTS)
    shutil.copytree(lora_work / "base", tmp_path / "m")
    (tmp_path / "m" / WEIGHTS).write_bytes(frame(json.dumps(header), data))
    r = run_cli("inspect", tmp_path / "m", "--json")
    assert r.exit_code == 0, r.stderr
    assert [t["name"] for t in r.json()["tensors"]] == in_order(header)


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("mutation", [m[0] for m in MUTATIONS])
def test_a_damaged_safetensors_header_is_one_line_naming_the_file_and_field(tmp_path, work, command, mutation):
    word = next(m[1] for m in MUTATIONS if m[0] == mutation)
    model = work.models[mutation]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [str(a) for a in COMMANDS[command](work, model, out)])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    line = one_error_line(result, model / WEIGHTS)
    assert word in line, line
    if word in ("dtype", "shape", "data_offsets", "entry"):
        assert repr(work.first) in line or work.first in line, line  # the tensor is named too
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a stage
