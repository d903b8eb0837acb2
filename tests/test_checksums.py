"""The built-in tables in llmkit/checksums/ and the md5sum format llmkit writes and reads."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from llmkit.registry import builtin_tables, load_table

REPO = Path(__file__).resolve().parents[1]
TABLES = sorted((REPO / "llmkit" / "checksums").glob("*.md5"))
# The MD5 lines of the TechGPT-1.0 and ZhiXi model cards, copied as published (the cards repeat some tables).
CARDS = Path(__file__).resolve().parent / "data" / "model_cards"
LINE = re.compile(r"^([0-9a-f]{32})  (\S+)$")  # md5sum text-mode line, written out independently here

needs_md5sum = pytest.mark.skipif(shutil.which("md5sum") is None, reason="GNU md5sum is not installed")


def _lines(path: Path) -> list[tuple[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = LINE.match(line)
        assert m, f"{path.name}: not an md5sum line: {line!r}"
        out.append((m.group(2), m.group(1)))
    return out


def test_every_table_line_parses():
    assert len(TABLES) >= 8
    for path in TABLES:
        entries = _lines(path)
        table = load_table(path)
        assert [(e.path, e.digest) for e in table.entries] == entries
        assert table.algorithm == "md5"


def test_every_table_names_its_source_in_a_header_comment():
    for path in TABLES:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# "), path.name
        assert "Source:" in path.read_text(), path.name


def test_registry_loads_exactly_the_files_in_checksums():
    sha256 = {p.name.removesuffix(".sha256") for p in (REPO / "llmkit" / "checksums").glob("*.sha256")}
    assert {p.name.removesuffix(".md5") for p in TABLES} | sha256 == set(builtin_tables())


def _card_blocks(card: Path) -> list[list[tuple[str, str]]]:
    """Every run of consecutive '<32 hex>  <name>' lines in a model card (the published tables)."""
    blocks, cur = [], []
    for line in card.read_text(encoding="utf-8").splitlines():
        m = LINE.match(line.strip())
        if m:
            cur.append((m.group(2), m.group(1)))
        elif cur:
            blocks.append(cur)
            cur = []
    if cur:
        blocks.append(cur)
    return blocks


def test_tables_are_transcribed_exactly_from_the_model_cards():
    blocks = [b for card in sorted(CARDS.glob("*.txt")) for b in _card_blocks(card)]
    published = {tuple(b) for b in blocks}
    # TechGPT's card repeats both tables (Chinese and English); ZhiXi has five.
    assert len(published) == 7
    ours = {tuple(_lines(p)) for p in TABLES if p.name != "llama-7b-meta.md5"}
    assert ours == published


def test_llama_7b_key_table_matches_spec():
    # SPEC.md section 1: the XOR key's md5 and its params.json.
    assert dict(_lines(REPO / "llmkit" / "checksums" / "llama-7b-meta.md5")) == {
        "consolidated.00.pth": "6efc8dab194ab59e49cd24be5574d85e",
        "params.json": "7596560e011154b90eb51a1b15739763",
    }


@needs_md5sum
def test_md5sum_accepts_the_builtin_table_format(tmp_path):
    # Files with the tables' names but other content: md5sum must parse every line and report FAILED,
    # never "improperly formatted".
    for path in TABLES:
        work = tmp_path / path.stem
        entries = _lines(path)
        for name, _ in entries:
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(b"not the published file")
        shutil.copy(path, work / "table.md5")
        run = subprocess.run(["md5sum", "-c", "--strict", "table.md5"], cwd=work, capture_output=True, text=True)
        assert "improperly formatted" not in run.stderr, run.stderr
        assert run.stdout.count(": FAILED") == len(entries), run.stdout


@needs_md5sum
def test_md5sum_checks_a_table_written_by_llmkit_checksum(tmp_path, run_cli, monkeypatch):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"\x00\x01" * 5000)
    (folder / "sub" / "config.json").write_text('{"x": 1}\n')
    (folder / "space name.txt").write_text("hello")
    monkeypatch.chdir(tmp_path)
    result = run_cli("checksum", "model")
    assert result.exit_code == 0
    (tmp_path / "t.md5").write_text(result.stdout)
    run = subprocess.run(["md5sum", "-c", "--strict", "t.md5"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count(": OK") == 3


def test_checksum_lines_match_hashlib(tmp_path, run_cli):
    files = {"x.bin": b"abc" * 1000, "y.json": b"{}\n", "z": b""}
    for n, data in files.items():
        (tmp_path / n).write_bytes(data)
    for algo in ("md5", "sha256"):
        out = run_cli("checksum", "--algo", algo, tmp_path).stdout.splitlines()
        expected = [f"{hashlib.new(algo, data).hexdigest()}  {tmp_path}/{n}" for n, data in sorted(files.items())]
        assert out == expected


@needs_md5sum
def test_checksum_escapes_odd_names_like_md5sum(tmp_path, run_cli):
    odd = tmp_path / "back\\slash.bin"
    odd.write_bytes(b"data")
    ours = run_cli("checksum", odd).stdout.strip()
    theirs = subprocess.run(["md5sum", str(odd)], capture_output=True, text=True).stdout.strip()
    assert ours == theirs
    (tmp_path / "t.md5").write_text(ours + "\n")
    assert subprocess.run(["md5sum", "-c", "t.md5"], cwd=tmp_path, capture_output=True).returncode == 0
