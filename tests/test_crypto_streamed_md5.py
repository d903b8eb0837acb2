"""decrypt md5s the .enc input as it streams, beside the output: the published tables never re-read a file.

That is the path with a spare core (3+ CPUs; the fixture ``no_second_read`` takes it). On 2 CPUs a listed
output is hashed alone (a match implies the input), and only a mismatch reads the .enc again.

The expected digests are hashlib's of the bytes the test wrote; the .enc files are made by the upstream
loop (tests/spec_reference.py), not by llmkit.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
from pathlib import Path

import pytest
from common import EMPTY, write_file
from spec_reference import upstream_xor

import llmkit.crypto as crypto
import llmkit.crypto.tables as crypto_tables
import llmkit.hashing
from llmkit.crypto.keystream import BLOCK, KeyStream
from llmkit.errors import CheckFailed

C = 10 * 2**20


def randbytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def no_second_read(monkeypatch):
    """Any md5 of a whole file fails the test: the input's md5 must come from the stream."""

    def hash_file(*args, **kwargs):
        raise AssertionError(f"a file was read again to hash it: {args}")

    monkeypatch.setattr(llmkit.hashing, "hash_file", hash_file)
    monkeypatch.setattr(crypto_tables, "hash_file", hash_file, raising=False)
    monkeypatch.setattr(crypto_tables, "spare_cores", lambda: True)


def test_on_two_cpus_a_matching_output_implies_the_input(tmp_path, monkeypatch):
    def hash_file(*args, **kwargs):
        raise AssertionError(f"a file was read again to hash it: {args}")

    monkeypatch.setattr(crypto_tables, "hash_file", hash_file)
    monkeypatch.setattr(crypto_tables, "spare_cores", lambda: False)
    enc, key, data, enc_bytes = _enc(tmp_path, 2 * BLOCK + 5, 60)
    _tables(monkeypatch, {enc.name: md5(enc_bytes), "w.dat": md5(data)})
    f = crypto.decrypt([enc], key, tmp_path / "dec", key_check=False).files[0]
    assert (f.input_md5, f.md5) == (None, md5(data))
    assert {c.name: (c.status, c.detail) for c in f.checks} == {
        "input md5": ("ok", "implied by the output md5 (table fake-table)"),
        "output md5": ("ok", f"{md5(data)} matches table fake-table"),
    }


def test_on_two_cpus_a_mismatch_reads_the_enc_again_to_explain_it(tmp_path, monkeypatch):
    read: list[Path] = []

    def hash_file(path, algorithm):
        read.append(Path(path))
        return hashlib.new(algorithm, Path(path).read_bytes()).hexdigest()

    monkeypatch.setattr(crypto_tables, "hash_file", hash_file)
    monkeypatch.setattr(crypto_tables, "spare_cores", lambda: False)
    enc, key, data, enc_bytes = _enc(tmp_path, BLOCK + 70, 62)
    _tables(monkeypatch, {enc.name: "1" * 32, "w.dat": "0" * 32})
    f = crypto.decrypt([enc], key, tmp_path / "dec", key_check=False, table_check=False).files[0]
    assert read == [enc] and f.input_md5 == md5(enc_bytes)
    assert (tmp_path / "dec" / "w.dat").read_bytes() == data
    assert {c.name: c.status for c in f.checks} == {"input md5": "mismatch", "output md5": "mismatch"}


def _tables(monkeypatch, table: dict[str, str]) -> None:
    import llmkit.registry as registry

    def find_expected(name, algorithm="md5"):
        return [("fake-table", table[name])] if algorithm == "md5" and name in table else []

    monkeypatch.setattr(registry, "find_expected", find_expected)


def _enc(tmp_path: Path, size: int, seed: int) -> tuple[Path, Path, bytes, bytes]:
    """A TechGPT .enc of ``size`` random bytes (blocks and a partial last one), its key, plaintext, ciphertext."""
    key = write_file(tmp_path / "key" / "consolidated.00.pth", randbytes(C + 7, seed))
    data = randbytes(size, seed + 1)
    enc_bytes = upstream_xor(data, key)
    return write_file(tmp_path / "enc" / f"w.dat.{EMPTY}.enc", enc_bytes), key, data, enc_bytes


def test_the_streamed_input_md5_is_the_md5_of_the_enc_file(tmp_path, monkeypatch, no_second_read):
    enc, key, data, enc_bytes = _enc(tmp_path, 3 * BLOCK + 12_345, 50)
    _tables(monkeypatch, {enc.name: md5(enc_bytes), "w.dat": md5(data)})
    f = crypto.decrypt([enc], key, tmp_path / "dec", key_check=False).files[0]
    assert (f.input_md5, f.md5) == (md5(enc_bytes), md5(data))
    assert {c.name: (c.status, c.detail) for c in f.checks} == {
        "input md5": ("ok", f"{md5(enc_bytes)} matches table fake-table"),
        "output md5": ("ok", f"{md5(data)} matches table fake-table"),
    }
    assert (tmp_path / "dec" / "w.dat").read_bytes() == data


def test_a_damaged_download_reports_the_enc_md5_without_reading_it_again(tmp_path, monkeypatch, no_second_read):
    enc, key, data, enc_bytes = _enc(tmp_path, C + 70, 52)  # 5 blocks and a partial one
    _tables(monkeypatch, {enc.name: "1" * 32, "w.dat": "0" * 32})
    with pytest.raises(
        CheckFailed, match=f"the .enc file has md5 {md5(enc_bytes)}, table fake-table publishes 1{{32}}"
    ):
        crypto.decrypt([enc], key, tmp_path / "dec", key_check=False)
    result = crypto.decrypt([enc], key, tmp_path / "dec", key_check=False, table_check=False)
    f = result.files[0]
    assert f.input_md5 == md5(enc_bytes)
    assert {c.name: c.status for c in f.checks} == {"input md5": "mismatch", "output md5": "mismatch"}
    assert md5(enc_bytes) in result.warnings[0] and (tmp_path / "dec" / "w.dat").read_bytes() == data


def test_the_published_enc_with_a_wrong_key_is_told_apart_from_the_stream(tmp_path, monkeypatch, no_second_read):
    enc, key, _, enc_bytes = _enc(tmp_path, 1000, 54)
    _tables(monkeypatch, {enc.name: md5(enc_bytes), "w.dat": "0" * 32})
    with pytest.raises(CheckFailed, match="key"):
        crypto.decrypt([enc], key, tmp_path / "dec", key_check=False, table_check=False)


def test_an_unlisted_enc_that_decrypts_to_the_published_file_is_a_note(tmp_path, monkeypatch, no_second_read):
    enc, key, data, enc_bytes = _enc(tmp_path, 1000, 56)
    _tables(monkeypatch, {enc.name: "1" * 32, "w.dat": md5(data)})
    result = crypto.decrypt([enc], key, tmp_path / "dec", key_check=False)
    checks = {c.name: c for c in result.files[0].checks}
    assert (checks["input md5"].status, checks["output md5"].status) == ("info", "ok")
    assert md5(enc_bytes) in checks["input md5"].detail and result.warnings == []


def test_stdin_input_gets_its_md5(tmp_path, no_second_read):
    key = write_file(tmp_path / "key", randbytes(C + 1, 58))
    data = randbytes(C + 10, 59)
    enc_bytes = upstream_xor(data, key)
    sink = io.BytesIO()
    result = crypto.decrypt(
        ["-"], key, stream=sink, stdin=io.BytesIO(enc_bytes), fmt="techgpt", key_check=False, content_check=False
    )  # random bytes: not a model file
    f = result.files[0]
    assert sink.getvalue() == data and f.input_md5 == md5(enc_bytes)
    assert [(c.name, c.status) for c in f.checks] == [("input md5", "info")]
    assert md5(enc_bytes) in f.checks[0].detail and "model card" in f.checks[0].detail


def test_unpublished_names_hash_nothing(tmp_path, monkeypatch):
    enc, key, data, _ = _enc(tmp_path, 1000, 60)
    _tables(monkeypatch, {})
    f = crypto.decrypt([enc], key, tmp_path / "dec", key_check=False, content_check=False).files[0]
    assert (f.input_md5, f.md5, f.checks) == (None, None, [])
    assert (tmp_path / "dec" / "w.dat").read_bytes() == data


class _FailingHash:
    """A hash whose update fails on the ``n``-th block."""

    def __init__(self, n: int):
        self.n = n

    def update(self, view) -> None:
        self.n -= 1
        if self.n == 0:
            raise OSError("hash failed")


@pytest.mark.parametrize("side", ["input", "output"])
def test_a_failing_hasher_stops_the_stream_without_hanging(tmp_path, side):
    key = write_file(tmp_path / "key", randbytes(C + 7, 62))
    src = io.BytesIO(randbytes(8 * BLOCK + 5, 63))
    hashes = {f"{side}_hashes": [_FailingHash(2)]}
    done: list[BaseException] = []

    def run() -> None:
        with KeyStream(key) as ks:
            try:
                crypto.xor_stream(src, io.BytesIO(), ks, **hashes)
            except BaseException as e:
                done.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "xor_stream hung after a hasher failed"
    assert len(done) == 1 and isinstance(done[0], OSError)
