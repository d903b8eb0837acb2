"""``--dec-key FILE`` / ``--enc-key FILE``: a file larger than any key is refused from its size, never read whole.

A MindSpore checkpoint key is 16, 24 or 32 raw bytes (AES-128/192/256, SM4: 16). A 300 MB file passed by
mistake (a model file, a log) is refused with one line naming its size, and the peak RSS of the refusal, in a
fresh process (tests/rss_probe.py), stays far below the file's size.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from rss_probe import peak_growth

BIG = 300 * 10**6
GOLDEN = Path(__file__).parent / "data" / "ckpt" / "enc-AES-GCM.ckpt"

GENERATE = textwrap.dedent("""
    import sys
    from pathlib import Path
    with open(Path(sys.argv[1]) / "big.key", "wb") as f:  # sparse: no disk, but 300 MB of reads
        f.truncate(int(sys.argv[2]))
""")

MEASURE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from llmkit.errors import InputError
    from llmkit.io.mindspore.keys import read_key

    key = Path(sys.argv[1]) / "big.key"
    reset_peak()
    before = status("VmRSS")
    try:
        read_key(str(key), None, flag="--dec-key")
        refused = False
    except InputError:
        refused = True
    print(json.dumps({"growth": status("VmHWM") - before if refused else -1}))
""")


def test_a_key_file_far_larger_than_a_key_is_refused_without_reading_it(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    growth = peak_growth(GENERATE, MEASURE, tmp_path, str(BIG))
    assert growth >= 0, "the 300 MB key file was accepted"
    assert growth < 8 * 2**20, growth  # reading it whole costs >= 300 MB


def sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def test_a_too_large_dec_key_is_one_line_naming_the_size_and_the_key_lengths(run_cli, tmp_path):
    key = sparse(tmp_path / "model.bin", BIG)
    r = run_cli("inspect", GOLDEN, "--dec-key", key)
    assert r.exit_code == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert str(key) in lines[0] and f"{BIG:,}" in lines[0] and "16, 24 or 32" in lines[0], lines[0]


def test_a_too_large_enc_key_is_refused_before_any_output(run_cli, tmp_path, tiny_factory):
    key = sparse(tmp_path / "big.key", 33)
    out = tmp_path / "m.ckpt"
    r = run_cli("to-ckpt", tiny_factory("safetensors").path, "-o", out, "--enc-key", key, "--enc-mode", "AES-GCM")
    assert r.exit_code == 2, r.stderr
    assert "33 bytes" in r.stderr and "16, 24 or 32" in r.stderr, r.stderr
    assert not out.exists() and [p for p in tmp_path.iterdir() if p.name != "big.key"] == []


def test_a_key_file_of_the_right_length_still_opens_the_checkpoint(run_cli, tmp_path):
    """The golden file's key (tests/data/ckpt/make_golden.py: KEY, 16 bytes), as a key file."""
    key = tmp_path / "ckpt.key"
    key.write_bytes(bytes.fromhex("000102030405060708090a0b0c0d0e0f"))
    r = run_cli("inspect", GOLDEN, "--dec-key", key, "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["ok"] is True
