"""llmkit.io.core.sniff: whole-file checks against files written by their own libraries (torch, zipfile,
safetensors, sentencepiece, json), cut at every kind of boundary."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from safetensors.torch import save

from llmkit.io.core.sniff import ContentCheck, ContentError, sniff_kind


def run(kind: str | None, data: bytes, total: int | None = None, block: int = 4096) -> ContentCheck:
    check = ContentCheck(kind, total)
    for i in range(0, len(data), block):
        check.feed(data[i : i + block])
    check.finish()
    return check


def torch_zip() -> bytes:
    buf = io.BytesIO()
    torch.save({"a": torch.arange(5000, dtype=torch.float32), "b": torch.ones(3, 3)}, buf)
    return buf.getvalue()


def plain_zip_with_comment() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x", b"y" * 10_000)
        z.comment = b"a comment after the end record"
    return buf.getvalue()


def test_whole_files_of_every_kind_pass(tiny_factory):
    sp = (tiny_factory("safetensors").path / "tokenizer.model").read_bytes()
    st = save({"w": torch.zeros(1000)})
    for kind, data in [
        ("torch zip", torch_zip()),
        ("torch zip", plain_zip_with_comment()),
        ("safetensors", st),
        ("JSON", json.dumps({"a": [1, 2, "知识"]}).encode()),
        ("SentencePiece model", sp),
    ]:
        assert run(kind, data).seen == len(data)
        assert run(None, data).kind == kind  # sniffed from the first bytes


@pytest.mark.parametrize("cut", [1, 21, 22, 60, 100, 1000])
def test_a_zip_cut_anywhere_near_its_end_is_incomplete(cut):
    data = torch_zip()
    with pytest.raises(ContentError) as e:
        run("torch zip", data[:-cut])
    assert e.value.incomplete


def test_safetensors_size_mismatch_fails_on_the_first_block_when_the_total_is_known():
    data = save({"w": torch.zeros(100_000)})
    check = ContentCheck("safetensors", total=len(data) - 10)
    with pytest.raises(ContentError, match="truncated") as e:
        check.feed(data[:4096])
    assert e.value.incomplete
    with pytest.raises(ContentError, match="truncated"):
        run("safetensors", data[:-1])
    with pytest.raises(ContentError) as e:
        run("safetensors", data + b"\0")
    assert not e.value.incomplete


def test_sentencepiece_cut_at_a_field_boundary_is_incomplete(tiny_factory):
    data = (tiny_factory("safetensors").path / "tokenizer.model").read_bytes()
    # The end of the first top-level field (pieces): a cut there is a valid protobuf prefix.
    length, i, shift = 0, 1, 0
    while True:
        b = data[i]
        length |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if not b & 0x80:
            break
    with pytest.raises(ContentError, match="normalizer_spec"):
        run("SentencePiece model", data[: i + length])
    with pytest.raises(ContentError, match="truncated"):
        run("SentencePiece model", data[: len(data) // 2])


def test_json_cut_in_the_middle_is_incomplete_and_garbage_is_not():
    data = json.dumps({f"k{i}": i for i in range(1000)}).encode()
    with pytest.raises(ContentError) as e:
        run("JSON", data[: len(data) // 2])
    assert e.value.incomplete
    with pytest.raises(ContentError) as e:
        run("JSON", b"\x93\x01garbage")
    assert not e.value.incomplete


def test_random_bytes_sniff_as_nothing():
    import random

    assert sniff_kind(random.Random(0).randbytes(4096)) is None
    with pytest.raises(ContentError, match="none of"):
        run(None, random.Random(0).randbytes(4096))
