"""Library tests of llmkit.crypto against the SPEC.md section 1 key stream.

The reference (``upstream_xor``, tests/spec_reference.py) is the upstream loop itself: 10 MiB data
chunks, one sequential 10 MiB key read per chunk, seek to 0 on an empty read, the key read tiled to
the chunk. It shares no code with llmkit.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from common import EMPTY
from spec_reference import upstream_xor

import llmkit.crypto as crypto
import llmkit.crypto.keycheck as crypto_keycheck
from llmkit.errors import CheckFailed, InputError, OutputExistsError

C = 10 * 1024 * 1024


def naive_xor(data: bytes, key: bytes) -> bytes:
    """What the key stream is NOT: key[j % len(key)]."""
    tiled = (key * (len(data) // len(key) + 1))[: len(data)]
    return (int.from_bytes(data, "little") ^ int.from_bytes(tiled, "little")).to_bytes(len(data), "little")


def randbytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def only_file(folder: Path) -> Path:
    files = list(folder.iterdir())
    assert len(files) == 1, files
    return files[0]


def no_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------ the key stream, both formats

# (key length, data length): every edge case SPEC.md 1 lists.
EDGE_CASES = {
    "key_not_multiple_of_chunk_input_longer_than_key": (C + 12_345, 3 * C + 777),
    "key_multiple_of_chunk_empty_read_seeks_to_zero": (C, 2 * C + 100),
    "key_shorter_than_chunk_restarts_every_chunk": (3 * 2**20 + 1, 2 * C + 5),
    "key_shorter_than_one_block": (1_000_003, C + 3),
    "tiny_key_of_7_bytes": (7, C + 11),
    "input_shorter_than_key": (C + 5, 1_234_567),
    "input_exactly_one_chunk": (2 * C + 3, C),
}


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
@pytest.mark.parametrize("fmt", ["techgpt", "belle"])
def test_encrypt_and_decrypt_match_the_spec_key_stream(tmp_path, case, fmt):
    klen, dlen = EDGE_CASES[case]
    key = write(tmp_path / "key", randbytes(klen, 1))
    plain = write(tmp_path / "in" / "weights.dat", randbytes(dlen, 2))
    data = plain.read_bytes()
    crypto.encrypt([plain], key, tmp_path / "enc", fmt=fmt, key_check=False)
    enc = only_file(tmp_path / "enc")
    expected_payload = upstream_xor(data, key)
    if fmt == "techgpt":
        assert enc.name == f"weights.dat.{EMPTY}.enc"
        assert enc.read_bytes() == expected_payload
    else:
        digest = hashlib.sha256(data).digest()
        assert enc.name == f"weights.dat.{digest.hex()}.enc"
        assert enc.read_bytes() == digest + expected_payload
    result = crypto.decrypt([enc], key, tmp_path / "dec", key_check=False)
    assert result.files[0].format == fmt
    assert (tmp_path / "dec" / "weights.dat").read_bytes() == data


def test_short_last_key_read_is_tiled_not_key_index_modulo(tmp_path):
    # The wrap path differs from key[j % K]; a decryptor that got this wrong would corrupt the tail.
    klen, dlen = C + 12_345, 2 * C
    key_bytes = randbytes(klen, 3)
    key = write(tmp_path / "key", key_bytes)
    data = randbytes(dlen, 4)
    reference = upstream_xor(data, key)
    assert reference != naive_xor(data, key_bytes)
    assert reference[:C] == naive_xor(data[:C], key_bytes[:C])
    src = write(tmp_path / "x.dat", data)
    crypto.encrypt([src], key, tmp_path / "enc", key_check=False)
    assert only_file(tmp_path / "enc").read_bytes() == reference


@pytest.mark.parametrize("fmt", ["techgpt", "belle"])
def test_empty_input(tmp_path, fmt):
    key = write(tmp_path / "key", randbytes(1000, 5))
    src = write(tmp_path / "in" / "empty.dat", b"")
    crypto.encrypt([src], key, tmp_path / "enc", fmt=fmt, key_check=False)
    enc = only_file(tmp_path / "enc")
    if fmt == "techgpt":
        assert enc.read_bytes() == b""
    else:
        assert enc.name == f"empty.dat.{EMPTY}.enc"
        assert enc.read_bytes() == hashlib.sha256(b"").digest()
    result = crypto.decrypt([enc], key, tmp_path / "dec", key_check=False)
    assert result.files[0].format == fmt
    assert (tmp_path / "dec" / "empty.dat").read_bytes() == b""


def test_decrypt_of_files_made_by_the_upstream_loop(tmp_path):
    key = write(tmp_path / "key", randbytes(C + 99, 6))
    data = randbytes(2 * C + 1, 7)
    enc_dir = tmp_path / "enc"
    write(enc_dir / f"a.dat.{EMPTY}.enc", upstream_xor(data, key))
    digest = hashlib.sha256(data).digest()
    write(enc_dir / f"b.dat.{digest.hex()}.enc", digest + upstream_xor(data, key))
    result = crypto.decrypt([enc_dir], key, tmp_path / "dec", key_check=False)
    assert [f.format for f in result.files] == ["techgpt", "belle"]
    assert (tmp_path / "dec" / "a.dat").read_bytes() == data
    assert (tmp_path / "dec" / "b.dat").read_bytes() == data


def test_jobs_in_parallel_keep_every_chunk_in_order(tmp_path):
    key = write(tmp_path / "key", randbytes(C + 4_321, 8))
    datas = {f"f{i}.dat": randbytes(C * (i + 1) + 17 * i, 10 + i) for i in range(3)}
    enc_dir = tmp_path / "enc"
    for name, data in datas.items():
        write(enc_dir / f"{name}.{EMPTY}.enc", upstream_xor(data, key))
    result = crypto.decrypt([enc_dir], key, tmp_path / "dec", key_check=False, jobs=3)
    assert len(result.files) == 3
    for name, data in datas.items():
        assert (tmp_path / "dec" / name).read_bytes() == data


def test_stream_output(tmp_path):
    key = write(tmp_path / "key", randbytes(3 * 2**20 + 7, 11))
    data = randbytes(C + 5, 12)
    enc = write(tmp_path / f"x.dat.{EMPTY}.enc", upstream_xor(data, key))
    sink = io.BytesIO()
    crypto.decrypt([enc], key, stream=sink, key_check=False)
    assert sink.getvalue() == data


def test_stdin_input_streams_and_needs_a_format(tmp_path):
    key = write(tmp_path / "key", randbytes(C + 1, 13))
    data = randbytes(C + 10, 14)
    digest = hashlib.sha256(data).digest()
    sink = io.BytesIO()
    crypto.decrypt(
        ["-"],
        key,
        stream=sink,
        stdin=io.BytesIO(digest + upstream_xor(data, key)),
        fmt="belle",
        key_check=False,
        content_check=False,
    )  # random bytes: not a model file
    assert sink.getvalue() == data
    with pytest.raises(InputError, match="--format"):
        crypto.decrypt(["-"], key, stream=io.BytesIO(), stdin=io.BytesIO(b""), key_check=False)
    with pytest.raises(InputError, match="-o -"):
        crypto.decrypt(["-"], key, tmp_path / "out", stdin=io.BytesIO(b""), fmt="techgpt", key_check=False)


# ------------------------------------------------------------------ BELLE integrity


def _belle_file(tmp_path: Path, data: bytes, key: Path, name: str = "w.dat") -> Path:
    digest = hashlib.sha256(data).digest()
    return write(tmp_path / "enc" / f"{name}.{digest.hex()}.enc", digest + upstream_xor(data, key))


def test_truncated_belle_file_is_an_error_and_nothing_is_kept(tmp_path):
    key = write(tmp_path / "key", randbytes(C + 3, 15))
    data = randbytes(C + 100, 16)
    enc = _belle_file(tmp_path, data, key)
    enc.write_bytes(enc.read_bytes()[:-1000])
    with pytest.raises(CheckFailed, match="sha256"):
        crypto.decrypt([enc], key, tmp_path / "dec", key_check=False)
    assert no_leftovers(tmp_path / "dec") == []


def test_belle_file_truncated_into_its_header_is_refused(tmp_path):
    key = write(tmp_path / "key", randbytes(100, 17))
    enc = _belle_file(tmp_path, b"hello world", key)
    enc.write_bytes(enc.read_bytes()[:20])
    with pytest.raises(InputError, match="cannot tell the format"):
        crypto.decrypt([enc], key, tmp_path / "dec", key_check=False)
    with pytest.raises(InputError, match="too short"):
        crypto.decrypt([enc], key, tmp_path / "dec", key_check=False, fmt="belle")
    assert no_leftovers(tmp_path / "dec") == []


def test_belle_payload_damage_is_caught(tmp_path):
    key = write(tmp_path / "key", randbytes(5000, 18))
    enc = _belle_file(tmp_path, randbytes(3 * 2**20, 19), key)
    raw = bytearray(enc.read_bytes())
    raw[2**20] ^= 1
    enc.write_bytes(bytes(raw))
    with pytest.raises(CheckFailed):
        crypto.decrypt([enc], key, tmp_path / "dec", key_check=False)
    assert no_leftovers(tmp_path / "dec") == []


def test_auto_detects_belle_by_the_header_matching_the_name(tmp_path):
    key = write(tmp_path / "key", randbytes(777, 20))
    data = randbytes(5000, 21)
    belle = _belle_file(tmp_path, data, key)
    assert crypto.detect_format(belle)[0] == "belle"
    techgpt = write(tmp_path / "enc" / f"w2.dat.{EMPTY}.enc", upstream_xor(data, key))
    assert crypto.detect_format(techgpt)[0] == "techgpt"


# ------------------------------------------------------------------ the key check


@pytest.fixture
def fake_llama_key(tmp_path, monkeypatch):
    """A small key that the key check accepts: the test seam is the two module constants."""
    key_bytes = randbytes(3 * 2**20 + 11, 22)
    key = write(tmp_path / "consolidated.00.pth", key_bytes)
    monkeypatch.setattr(crypto_keycheck, "KEY_SIZE", len(key_bytes))
    monkeypatch.setattr(crypto_keycheck, "KEY_MD5", hashlib.md5(key_bytes).hexdigest())
    monkeypatch.setenv("LLMKIT_CACHE_DIR", str(tmp_path / "cache"))
    return key


def test_wrong_key_size_is_refused_fast_naming_the_expected_file(tmp_path):
    key = write(tmp_path / "llama2-consolidated.00.pth", randbytes(1000, 23))
    with pytest.raises(InputError) as e:
        crypto.check_key(key)
    text = str(e.value)
    assert "LLaMA-1 7B consolidated.00.pth" in text and "LLaMA-2" in text and "13,476,939,516" in text


def test_the_real_key_constants_are_llama1_7b():
    assert crypto.KEY_SIZE == 13_476_939_516
    assert crypto.KEY_MD5 == "6efc8dab194ab59e49cd24be5574d85e"


def test_key_md5_is_checked_once_and_cached(fake_llama_key, monkeypatch):
    assert crypto.check_key(fake_llama_key) == "verified"

    def no_hashing(*a, **k):
        raise AssertionError("the key was hashed again")

    monkeypatch.setattr(hashlib, "md5", no_hashing)
    assert crypto.check_key(fake_llama_key) == "verified (cached)"
    monkeypatch.undo()


def test_key_cache_is_invalidated_by_mtime(fake_llama_key):
    assert crypto.check_key(fake_llama_key) == "verified"
    st = fake_llama_key.stat()
    os.utime(fake_llama_key, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert crypto.check_key(fake_llama_key) == "verified"


def test_same_size_key_with_wrong_md5_is_refused(fake_llama_key, monkeypatch):
    monkeypatch.setattr(crypto_keycheck, "KEY_MD5", "0" * 32)
    with pytest.raises(InputError, match="md5"):
        crypto.check_key(fake_llama_key)
    with pytest.raises(InputError, match="md5"):  # also when the md5 comes from the cache
        crypto.check_key(fake_llama_key)


def test_wrong_key_is_refused_before_any_output(tmp_path):
    key = write(tmp_path / "key", randbytes(5000, 24))
    enc = write(tmp_path / "enc" / f"a.dat.{EMPTY}.enc", b"x" * 100)
    with pytest.raises(InputError, match=r"consolidated\.00\.pth"):
        crypto.decrypt([enc], key, tmp_path / "dec")
    assert not (tmp_path / "dec").exists()


def test_decrypt_with_the_checked_key(fake_llama_key, tmp_path):
    data = randbytes(C + 3, 25)
    enc = write(tmp_path / "enc" / f"a.dat.{EMPTY}.enc", upstream_xor(data, fake_llama_key))
    result = crypto.decrypt([enc], fake_llama_key, tmp_path / "dec")
    assert result.key_check == "verified"
    assert (tmp_path / "dec" / "a.dat").read_bytes() == data


# ------------------------------------------------------------------ plausibility: garbage stops early


@contextmanager
def counting_progress(counter: list[int]):
    @contextmanager
    def factory(description, total):
        yield lambda n: counter.append(n)

    yield factory


def _torch_zip_bytes() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.arange(1_250_000, dtype=torch.float32)}, buf)
    return buf.getvalue()


def _safetensors_bytes() -> bytes:
    import torch
    from safetensors.torch import save

    return save({"w": torch.zeros(1_250_000)}, metadata={"format": "pt"})


@pytest.mark.parametrize(
    "name,content",
    [
        ("config.json", json.dumps({f"key{i}": "知识 value" * 5 for i in range(60_000)}).encode()),
        ("pytorch_model.bin", _torch_zip_bytes()),
        ("model.safetensors", _safetensors_bytes()),
    ],
)
def test_garbage_from_a_wrong_key_stops_before_anything_is_written(tmp_path, name, content):
    right = write(tmp_path / "right", randbytes(C + 1, 26))
    wrong = write(tmp_path / "wrong", randbytes(C + 1, 27))
    enc = write(tmp_path / "enc" / f"{name}.{EMPTY}.enc", upstream_xor(content, right))
    written: list[int] = []
    with counting_progress(written) as progress, pytest.raises(CheckFailed, match="not a"):
        crypto.decrypt([enc], wrong, tmp_path / "dec", key_check=False, progress=progress)
    assert sum(written) == 0
    assert no_leftovers(tmp_path / "dec") == []
    # not TechGPT-1.0's files, only their names: the published tables do not apply
    result = crypto.decrypt([enc], right, tmp_path / "dec", key_check=False, table_check=False)
    assert (tmp_path / "dec" / name).read_bytes() == content
    assert any(c.name == "plausible" and c.status == "ok" for c in result.files[0].checks)


def test_real_tokenizer_and_torch_files_pass_the_plausibility_check(tmp_path, tiny_factory):
    tiny = tiny_factory("bin")
    key = write(tmp_path / "key", randbytes(2**20 + 3, 28))
    files = [tiny.path / n for n in ("tokenizer.model", "pytorch_model.bin", "config.json")]
    crypto.encrypt(files, key, tmp_path / "enc", key_check=False)
    result = crypto.decrypt([tmp_path / "enc"], key, tmp_path / "dec", key_check=False, table_check=False)
    for f in result.files:
        assert any(c.name == "plausible" and c.status == "ok" for c in f.checks), f
    for p in files:
        assert (tmp_path / "dec" / p.name).read_bytes() == p.read_bytes()
    wrong = write(tmp_path / "wrong", randbytes(2**20 + 3, 29))
    for p in files:
        enc = next((tmp_path / "enc").glob(p.name + ".*.enc"))
        with pytest.raises(CheckFailed):
            crypto.decrypt([enc], wrong, tmp_path / "dec2", key_check=False)
    assert no_leftovers(tmp_path / "dec2") == []


# ------------------------------------------------------------------ published tables


def _fake_tables(monkeypatch, table: dict[str, str]):
    import llmkit.registry as registry

    def find_expected(name, algorithm="md5"):
        return [("fake-table", table[name])] if algorithm == "md5" and name in table else []

    monkeypatch.setattr(registry, "find_expected", find_expected)


def test_published_md5s_are_verified_while_streaming(tmp_path, monkeypatch):
    key = write(tmp_path / "key", randbytes(C + 7, 30))
    data = randbytes(C + 70, 31)
    enc_bytes = upstream_xor(data, key)
    enc_name = f"w.dat.{EMPTY}.enc"
    enc = write(tmp_path / "enc" / enc_name, enc_bytes)
    _fake_tables(monkeypatch, {enc_name: hashlib.md5(enc_bytes).hexdigest(), "w.dat": hashlib.md5(data).hexdigest()})
    result = crypto.decrypt([enc], key, tmp_path / "dec", key_check=False)
    f = result.files[0]
    # Only the output is hashed while streaming: its match proves the key and the download both.
    assert f.md5 == hashlib.md5(data).hexdigest()
    assert {c.name: c.status for c in f.checks} == {"input md5": "ok", "output md5": "ok"}


def test_published_input_decrypting_to_an_unpublished_md5_fails_and_keeps_nothing(tmp_path, monkeypatch):
    key = write(tmp_path / "key", randbytes(C + 7, 32))
    data = randbytes(1000, 33)
    enc_bytes = upstream_xor(data, key)
    enc_name = f"w.dat.{EMPTY}.enc"
    enc = write(tmp_path / "enc" / enc_name, enc_bytes)
    _fake_tables(monkeypatch, {enc_name: hashlib.md5(enc_bytes).hexdigest(), "w.dat": "f" * 32})
    with pytest.raises(CheckFailed, match="key"):
        crypto.decrypt([enc], key, tmp_path / "dec", key_check=False)
    assert no_leftovers(tmp_path / "dec") == []


def test_a_file_that_only_shares_a_published_name_fails_unless_the_tables_are_waived(tmp_path):
    # The real built-in TechGPT-1.0 tables list config.json; a different config.json is not TechGPT's.
    key = write(tmp_path / "key", randbytes(1000, 34))
    data = b'{"model_type": "llama"}\n'
    enc = write(tmp_path / "enc" / f"config.json.{EMPTY}.enc", upstream_xor(data, key))
    with pytest.raises(CheckFailed, match="no-table-check"):
        crypto.decrypt([enc], key, tmp_path / "dec", key_check=False)
    assert no_leftovers(tmp_path / "dec") == []
    result = crypto.decrypt([enc], key, tmp_path / "dec", key_check=False, table_check=False)
    statuses = {c.name: c.status for c in result.files[0].checks}
    assert statuses["input md5"] == "mismatch" and statuses["output md5"] == "mismatch"
    assert len(result.warnings) == 2 and "techgpt-7b" in result.warnings[0]
    assert (tmp_path / "dec" / "config.json").read_bytes() == data


# ------------------------------------------------------------------ inputs and outputs


def test_folder_input_decrypts_only_enc_files(tmp_path):
    key = write(tmp_path / "key", randbytes(1000, 35))
    write(tmp_path / "enc" / f"a.dat.{EMPTY}.enc", upstream_xor(b"abc", key))
    write(tmp_path / "enc" / "README.md", b"# TechGPT\n")
    result = crypto.decrypt([tmp_path / "enc"], key, tmp_path / "dec", key_check=False)
    assert no_leftovers(tmp_path / "dec") == ["a.dat"]
    assert result.ignored == [str(tmp_path / "enc" / "README.md")]


def test_a_named_non_enc_file_is_refused(tmp_path):
    key = write(tmp_path / "key", b"k")
    readme = write(tmp_path / "README.md", b"x")
    with pytest.raises(InputError, match=r"not an \.enc file"):
        crypto.decrypt([readme], key, tmp_path / "dec", key_check=False)


def test_existing_output_is_refused_without_force(tmp_path):
    key = write(tmp_path / "key", randbytes(1000, 36))
    enc = write(tmp_path / "enc" / f"a.dat.{EMPTY}.enc", upstream_xor(b"new", key))
    write(tmp_path / "dec" / "a.dat", b"old")
    with pytest.raises(OutputExistsError):
        crypto.decrypt([enc], key, tmp_path / "dec", key_check=False)
    assert (tmp_path / "dec" / "a.dat").read_bytes() == b"old"
    crypto.decrypt([enc], key, tmp_path / "dec", key_check=False, force=True)
    assert (tmp_path / "dec" / "a.dat").read_bytes() == b"new"


def test_existing_belle_output_is_refused_without_force_on_encrypt(tmp_path):
    key = write(tmp_path / "key", randbytes(1000, 37))
    src = write(tmp_path / "in" / "a.dat", b"version 1")
    crypto.encrypt([src], key, tmp_path / "enc", fmt="belle", key_check=False)
    src.write_bytes(b"version 2")
    with pytest.raises(OutputExistsError):
        crypto.encrypt([src], key, tmp_path / "enc", fmt="belle", key_check=False)
    crypto.encrypt([src], key, tmp_path / "enc", fmt="belle", key_check=False, force=True)
    assert no_leftovers(tmp_path / "enc") == [f"a.dat.{hashlib.sha256(b'version 2').hexdigest()}.enc"]


def test_two_inputs_with_the_same_output_name_are_refused(tmp_path):
    key = write(tmp_path / "key", b"k" * 10)
    a = write(tmp_path / "x" / f"a.dat.{EMPTY}.enc", b"1")
    b = write(tmp_path / "y" / f"a.dat.{EMPTY}.enc", b"2")
    with pytest.raises(InputError, match=r"both write a\.dat"):
        crypto.decrypt([a, b], key, tmp_path / "dec", key_check=False)


def test_encrypt_of_a_folder_skips_readme_and_enc_files(tmp_path):
    key = write(tmp_path / "key", b"k" * 10)
    write(tmp_path / "m" / "config.json", b"{}")
    write(tmp_path / "m" / "README.md", b"# x")
    write(tmp_path / "m" / f"old.{EMPTY}.enc", b"1")
    crypto.encrypt([tmp_path / "m"], key, tmp_path / "enc", key_check=False)
    assert no_leftovers(tmp_path / "enc") == [f"config.json.{EMPTY}.enc"]


def test_peak_memory_does_not_grow_with_the_file(tmp_path):
    # 256 MB through the pipeline must not raise the peak RSS by more than a few tens of MB.
    enc = tmp_path / f"big.dat.{EMPTY}.enc"
    with open(enc, "wb") as f:
        f.truncate(256 * 2**20)
    key = write(tmp_path / "key", randbytes(C + 12_345, 38))
    code = f"""
import resource, llmkit.crypto as c
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
c.decrypt([{str(enc)!r}], {str(key)!r}, {str(tmp_path / "dec")!r}, key_check=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    growth_mb = int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)
    assert growth_mb < 64, f"peak RSS grew by {growth_mb} MB"
    assert (tmp_path / "dec" / "big.dat").stat().st_size == 256 * 2**20


def test_a_failure_in_one_parallel_file_leaves_no_temporary_files(tmp_path):
    key = write(tmp_path / "key", randbytes(C + 5, 39))
    good = randbytes(3 * C, 40)
    write(tmp_path / "enc" / f"a.dat.{EMPTY}.enc", upstream_xor(good, key))
    bad = _belle_file(tmp_path, randbytes(C, 41), key, name="b.dat")
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(CheckFailed):
        crypto.decrypt([tmp_path / "enc"], key, tmp_path / "dec", key_check=False, jobs=2)
    leftovers = no_leftovers(tmp_path / "dec")
    assert not [n for n in leftovers if n.endswith(crypto.TMP_SUFFIX)] and "b.dat" not in leftovers
    if "a.dat" in leftovers:  # finished before the failure: complete and exact
        assert (tmp_path / "dec" / "a.dat").read_bytes() == good
