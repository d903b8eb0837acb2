"""The MindSpore ``.ckpt`` wire format without MindSpore: golden files MindSpore wrote (tests/data/ckpt),
bytes built by hand from SPEC.md section 5, split records, and every kind of damage the reader must name."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
import torch

import llmkit.io.mindspore.ckpt as ckpt
from llmkit.errors import InputError
from llmkit.io.core.sink import open_sink
from llmkit.io.core.source import open_source
from llmkit.io.core.spec import TensorSpec
from llmkit.io.mindspore.reader import CkptFile

DATA = Path(__file__).parent / "data" / "ckpt"

# The values tests/data/ckpt/make_golden.py gave MindSpore (its "empty" tensor is not in the file).
GOLDEN = {
    "w_fp32": torch.arange(12, dtype=torch.float32).reshape(3, 4) - 5.5,
    "b_fp16": torch.tensor([1, 2, 3, 4, 5], dtype=torch.float16) / 8,
    "c_bf16": torch.tensor([[1.0, 2.0, 3.0], [-1.5, 0.5, 0.25]]).to(torch.bfloat16),
    "step": torch.tensor(7, dtype=torch.int64),
    "mask": torch.tensor([True, False, True]),
}


def pb_varint(n: int) -> bytes:
    """Protobuf varint, written out independently of llmkit's."""
    out = b""
    while n >= 0x80:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])


def pb_record(tag: str, dims: list[int], type_name: str, raw: bytes) -> bytes:
    """One ``Checkpoint{value: Value{tag, tensor: TensorProto{dims..., tensor_type, tensor_content}}}``."""
    tensor = b"".join(b"\x08" + pb_varint(d) for d in dims)
    tensor += b"\x12" + pb_varint(len(type_name)) + type_name.encode()
    tensor += b"\x1a" + pb_varint(len(raw)) + raw
    value = b"\x0a" + pb_varint(len(tag.encode())) + tag.encode() + b"\x12" + pb_varint(len(tensor)) + tensor
    return b"\x0a" + pb_varint(len(value)) + value


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def write(path: Path, tensors: dict[str, torch.Tensor], crc: bool = False) -> Path:
    specs = [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    with open_sink("ckpt", path, specs, crc=crc) as sink:
        for k, v in tensors.items():
            sink.write(k, v)
    return path


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and raw(a) == raw(b)


# ------------------------------------------------------------------ golden files and hand-built bytes


@pytest.mark.parametrize("name", ["golden.ckpt", "golden_crc.ckpt"])
def test_the_reader_returns_the_values_mindspore_saved(name):
    f = CkptFile(DATA / name)
    try:
        assert list(f.infos) == list(GOLDEN)
        for k, v in GOLDEN.items():
            assert same(f.get(k), v), k
        assert (f.crc is not None) == ("crc" in name)
        assert f.verify_crc() in (None, True)
    finally:
        f.close()


@pytest.mark.parametrize("crc", [False, True])
def test_the_writer_reproduces_mindspores_bytes(tmp_path, crc):
    out = write(tmp_path / "x.ckpt", GOLDEN, crc=crc)
    assert out.read_bytes() == (DATA / ("golden_crc.ckpt" if crc else "golden.ckpt")).read_bytes()


def test_the_writer_follows_the_wire_format_of_spec_section_5(tmp_path):
    out = write(tmp_path / "x.ckpt", GOLDEN, crc=True).read_bytes()
    body = b"".join(
        pb_record(k, list(v.shape), t, raw(v))
        for (k, v), t in zip(GOLDEN.items(), ["Float32", "Float16", "BFloat16", "Int64", "Bool"], strict=True)
    )
    assert out == body + b"crc_num" + zlib.crc32(body).to_bytes(10, "big")
    # The notes' worked example: fp32 [3, 4] named w_fp32 is a 73-byte record with dims 08 03 08 04.
    assert out[:2] == b"\x0a\x49" and out[2:10] == b"\x0a\x06w_fp32" and out[10:16] == b"\x12\x3f\x08\x03\x08\x04"


def test_large_tensors_are_split_every_slice_and_joined_again(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "SLICE_BYTES", 16)  # MindSpore: 512 MiB; same rule at a testable size
    big = torch.arange(10, dtype=torch.float32)  # 40 bytes -> records of 16 + 16 + 8
    small = torch.arange(4, dtype=torch.float16)  # 8 bytes -> one record
    out = write(tmp_path / "x.ckpt", {"big": big, "small": small})
    data = raw(big)
    expect = (
        pb_record("big", [10], "Float32", data[:16])
        + pb_record("big", [10], "Float32", data[16:32])
        + pb_record("big", [10], "Float32", data[32:])
        + pb_record("small", [4], "Float16", raw(small))
    )
    assert out.read_bytes() == expect
    f = CkptFile(out)
    assert f.records("big") == 3 and f.records("small") == 1
    assert same(f.get("big"), big) and same(f.get("small"), small)
    f.close()


def test_a_tensor_of_exactly_one_slice_is_one_record(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "SLICE_BYTES", 16)
    f = CkptFile(write(tmp_path / "x.ckpt", {"t": torch.ones(4)}))  # 16 bytes: not over the slice
    assert f.records("t") == 1
    f.close()


def test_a_checkpoint_is_a_source_for_inspect_checksum_and_verify(tmp_path, run_cli, tiny_factory):
    m = tiny_factory("safetensors")
    out = tmp_path / "m.ckpt"
    assert run_cli("to-ckpt", m.path, "-o", out).exit_code == 0
    with open_source(out) as src:
        assert src.layout == "ckpt" and "model.layers.0.attention.wq.weight" in src
    inspect = run_cli("inspect", out, "--json").json()
    assert inspect["layout"] == "ckpt" and inspect["num_layers"] == 2 and inspect["tensor_count"] == len(m.state)
    table = run_cli("checksum", "--tensors", out).stdout
    assert "model.tok_embeddings.embedding_weight F32" in table
    # verify --tensors sees the checkpoint under Hugging Face names: identical to its source.
    both = run_cli("verify", "--tensors", out, m.path, "--json")
    assert both.exit_code == 0 and both.json()["identical"] and both.json()["compared"] == len(m.state)


# ------------------------------------------------------------------ damage: one line naming file and byte


def damaged(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "bad.ckpt"
    p.write_bytes(data)
    return p


def reader_error(path: Path) -> str:
    with pytest.raises(InputError) as e:
        CkptFile(path)
    text = str(e.value)
    assert str(path) in text and "\n" not in text
    return text


def test_every_truncation_of_a_checkpoint_is_reported_with_its_offset(tmp_path):
    good = (DATA / "golden.ckpt").read_bytes()
    # The cut points at record boundaries are valid, shorter checkpoints; every other cut is an error.
    types = ["Float32", "Float16", "BFloat16", "Int64", "Bool"]
    record_ends, pos = set(), 0
    for (k, v), t in zip(GOLDEN.items(), types, strict=True):
        pos += len(pb_record(k, list(v.shape), t, raw(v)))
        record_ends.add(pos)
    assert pos == len(good)
    for cut in range(1, len(good)):
        path = damaged(tmp_path, good[:cut])
        if cut in record_ends:
            CkptFile(path).close()
            continue
        text = reader_error(path)
        assert "at byte" in text and ("truncated" in text or "damaged" in text), (cut, text)


def test_a_bad_varint_is_named(tmp_path):
    text = reader_error(damaged(tmp_path, b"\x0a" + b"\xff" * 11 + b"\x01"))
    assert "bad varint" in text and "at byte 1" in text


def test_a_length_past_the_end_is_named(tmp_path):
    text = reader_error(damaged(tmp_path, pb_record("w", [2], "Float32", raw(torch.ones(2)))[:-1]))
    assert "runs past the end" in text and "truncated" in text


def test_an_unknown_tensor_type_is_named(tmp_path):
    text = reader_error(damaged(tmp_path, pb_record("w", [2], "Float8", b"\x00\x01")))
    assert "'Float8'" in text and "at byte 0" in text


def test_split_records_whose_dims_disagree_are_refused(tmp_path):
    data = raw(torch.ones(4))
    text = reader_error(
        damaged(tmp_path, pb_record("w", [4], "Float32", data[:8]) + pb_record("w", [2, 2], "Float32", data[8:]))
    )
    assert "split records of 'w' disagree" in text


def test_data_that_does_not_fill_the_shape_is_refused(tmp_path):
    text = reader_error(damaged(tmp_path, pb_record("w", [3], "Float32", raw(torch.ones(2)))))
    assert "needs 12 bytes" in text and "hold 8" in text


def test_a_tensor_stored_twice_apart_is_refused(tmp_path):
    one = pb_record("w", [1], "Float32", raw(torch.ones(1)))
    text = reader_error(damaged(tmp_path, one + pb_record("v", [1], "Float32", raw(torch.ones(1))) + one))
    assert "'w' appears twice" in text


def test_a_crc_mismatch_is_found_while_reading_and_names_the_trailer(tmp_path):
    good = bytearray((DATA / "golden_crc.ckpt").read_bytes())
    good[30] ^= 1  # a data byte of w_fp32
    f = CkptFile(damaged(tmp_path, bytes(good)))
    with pytest.raises(InputError, match=r"CRC mismatch: the trailer at byte 200"):
        for name in f.infos:  # the last tensor read in file order completes the check
            f.get(name)
    f.close()
    f = CkptFile(tmp_path / "bad.ckpt")
    with pytest.raises(InputError, match="CRC mismatch"):
        f.verify_crc()
    f.close()


def test_not_a_checkpoint_at_all(tmp_path):
    assert "expected byte 0x0a" in reader_error(damaged(tmp_path, b"PK\x03\x04 not a ckpt"))
    assert "empty file" in reader_error(damaged(tmp_path, b""))


def test_a_map_parameter_record_is_refused_by_name(tmp_path):
    value = b"\x0a\x01m" + b"\x1a\x00"  # tag "m", field 3 (MapTensorProto), empty
    assert "MapParameter" in reader_error(damaged(tmp_path, b"\x0a" + pb_varint(len(value)) + value))


def test_packed_dims_and_unknown_fields_are_read_as_protobuf_allows(tmp_path):
    tensor = b"\x0a\x02\x02\x02" + b"\x12\x07Float32" + b"\x1a\x10" + raw(torch.ones(4)) + b"\x20\x05"
    value = b"\x0a\x01w" + b"\x12" + pb_varint(len(tensor)) + tensor + b"\x28\x01"
    f = CkptFile(damaged(tmp_path, b"\x0a" + pb_varint(len(value)) + value))
    assert same(f.get("w"), torch.ones(2, 2))
    f.close()


def test_the_writer_refuses_an_empty_tensor_and_an_unsupported_dtype(tmp_path):
    with pytest.raises(InputError, match="empty"):
        write(tmp_path / "e.ckpt", {"e": torch.zeros(0, 3)})
    with pytest.raises(InputError, match="cannot be stored in a MindSpore checkpoint"):
        write(tmp_path / "c.ckpt", {"c": torch.zeros(2, dtype=torch.complex64)})
    assert not list(tmp_path.iterdir())  # nothing left behind, not even a temporary file


def test_struct_sanity_of_the_crc_trailer():
    # MindSpore writes the CRC as 10 big-endian bytes: the top 6 are always zero.
    trailer = (DATA / "golden_crc.ckpt").read_bytes()[-17:]
    assert trailer[:7] == b"crc_num" and trailer[7:13] == b"\x00" * 6
    body = (DATA / "golden_crc.ckpt").read_bytes()[:-17]
    assert struct.unpack(">I", trailer[13:])[0] == zlib.crc32(body)
