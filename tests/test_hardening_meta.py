"""Meta folders: params.json against the tensors, missing and swapped shards, wherever a Meta folder is
read (inspect, from-meta, merge-lora/recover --base, checksum, verify). Swaps are found by the published
sha256 of the shards (a table written here from the tiny files' own hashes, as the shipped tables are).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from common import one_error_line

from llmkit.tiny import TINY_HEADS, TINY_HIDDEN, TINY_LAYERS, TINY_VOCAB


@pytest.fixture
def meta2(tiny_factory, tmp_path) -> Path:
    """A private copy of the tiny 2-shard Meta folder (params.json, consolidated.00/01.pth, tokenizer.model)."""
    src = tiny_factory("meta-2shards").path
    dst = tmp_path / "meta"
    shutil.copytree(src, dst)
    return dst


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def published(meta2, tmp_path, monkeypatch) -> Path:
    """Built-in tables = one sha256 table listing the tiny folder's two shards, described by its shapes."""
    tables = tmp_path / "tables"
    tables.mkdir()
    lines = "".join(f"{_sha256(meta2 / n)}  {n}\n" for n in ("consolidated.00.pth", "consolidated.01.pth"))
    (tables / "tiny-meta.sha256").write_text(
        "# Tiny Meta folder (test table).\n# Source: this test.\n"
        f"# describes: meta-pth dim={TINY_HIDDEN} vocab={TINY_VOCAB} layers={TINY_LAYERS} shards=2\n" + lines
    )
    monkeypatch.setenv("LLMKIT_CHECKSUMS", str(tables))
    return tables


def _swap(folder: Path) -> None:
    a, b = folder / "consolidated.00.pth", folder / "consolidated.01.pth"
    tmp = folder / "tmp.pth"
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def _edit_params(folder: Path, **changes) -> Path:
    p = folder / "params.json"
    params = json.loads(p.read_text())
    params.update(changes)
    p.write_text(json.dumps(params))
    return p


# ------------------------------------------------------------------ params.json


@pytest.mark.parametrize("key, value", [("dim", TINY_HIDDEN * 2), ("n_layers", TINY_LAYERS + 1), ("n_heads", 3)])
def test_inspect_refuses_a_params_json_that_contradicts_the_tensors(meta2, run_cli, key, value):
    _edit_params(meta2, **{key: value})
    line = one_error_line(run_cli("inspect", meta2), "params.json")
    assert key in line


@pytest.mark.parametrize(
    "key, value", [("dim", str(TINY_HIDDEN)), ("n_heads", "4"), ("norm_eps", "1e-6"), ("vocab_size", "-1")]
)
def test_inspect_refuses_strings_for_numbers_in_params_json(meta2, run_cli, key, value):
    _edit_params(meta2, **{key: value})
    line = one_error_line(run_cli("inspect", meta2), "params.json")
    assert key in line and repr(value) in line


@pytest.mark.parametrize("command", ["inspect", "checksum --tensors", "verify --tensors"])
def test_params_json_is_checked_by_every_reader_of_a_meta_folder(meta2, run_cli, tiny_factory, command):
    _edit_params(meta2, n_layers=TINY_LAYERS + 1)
    args = [*command.split(), str(meta2)]
    if command == "verify --tensors":
        args.append(str(tiny_factory("meta-2shards").path))
    one_error_line(run_cli(*args), "params.json", "n_layers")


def test_from_meta_refuses_a_string_in_params_json(meta2, run_cli, tmp_path):
    _edit_params(meta2, n_heads=str(TINY_HEADS))
    one_error_line(run_cli("from-meta", meta2, "-o", tmp_path / "out"), "params.json", "n_heads")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ missing shards


def test_a_missing_last_shard_is_one_error_naming_it(meta2, run_cli, tmp_path):
    (meta2 / "consolidated.01.pth").unlink()
    for args in (("inspect", meta2), ("from-meta", meta2, "-o", tmp_path / "out"), ("checksum", "--tensors", meta2)):
        one_error_line(run_cli(*args), "consolidated.01.pth", "missing")
    assert not (tmp_path / "out").exists()


def test_a_gap_in_the_shard_numbers_is_one_error_naming_the_missing_file(meta2, run_cli):
    (meta2 / "consolidated.01.pth").rename(meta2 / "consolidated.02.pth")
    one_error_line(run_cli("inspect", meta2), "consolidated.01.pth", "missing")


def test_a_missing_shard_is_found_from_the_shapes_when_params_json_is_gone(meta2, run_cli):
    (meta2 / "consolidated.01.pth").unlink()
    (meta2 / "params.json").unlink()
    one_error_line(run_cli("inspect", meta2), "consolidated.01.pth", "missing")


# ------------------------------------------------------------------ swapped shards


def test_swapped_shards_of_a_published_model_are_refused_before_any_output(meta2, published, run_cli, tmp_path):
    _swap(meta2)
    line = one_error_line(
        run_cli("from-meta", meta2, "-o", tmp_path / "out"), "consolidated.00.pth", "consolidated.01.pth", "swapped"
    )
    assert "tiny-meta" in line
    assert not (tmp_path / "out").exists()


def test_swapped_shards_are_refused_as_a_merge_lora_base(meta2, published, run_cli, tmp_path, lora_work):
    _swap(meta2)
    r = run_cli("merge-lora", "--base", meta2, "--lora", lora_work / "cute", "-o", tmp_path / "out")
    one_error_line(r, "swapped")
    assert not (tmp_path / "out").exists()


def test_published_shards_in_order_convert_without_an_order_warning(meta2, published, run_cli, tmp_path):
    r = run_cli("from-meta", meta2, "-o", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.stderr
    assert not [n for n in r.json()["notices"] if "order" in n["text"]]


def test_shards_of_an_unknown_model_convert_with_a_warning_that_their_order_is_unverified(
    meta2, run_cli, tmp_path, monkeypatch
):
    empty = tmp_path / "no-tables"
    empty.mkdir()
    (empty / "other.sha256").write_text("# Source: test.\n" + "0" * 64 + "  x.bin\n")
    monkeypatch.setenv("LLMKIT_CHECKSUMS", str(empty))
    r = run_cli("from-meta", meta2, "-o", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.stderr
    texts = [n["text"] for n in r.json()["notices"] if n["level"] == "warning"]
    assert any("order of the 2 shards cannot be verified" in t for t in texts), texts


def test_inspect_points_to_verify_for_the_order_of_a_published_model(meta2, published, run_cli):
    _swap(meta2)
    r = run_cli("inspect", meta2, "--json")
    assert r.exit_code == 0, r.stderr
    assert any("llmkit verify" in w and "tiny-meta" in w for w in r.json()["warnings"])


def test_verify_names_swapped_shards_by_their_published_sha256(meta2, published, run_cli):
    _swap(meta2)
    r = run_cli("verify", meta2, "--json")
    assert r.exit_code == 1
    rows = {Path(f["path"]).name: f for f in r.json()["files"]}
    for name, other in (("consolidated.00.pth", "consolidated.01.pth"), ("consolidated.01.pth", "consolidated.00.pth")):
        assert rows[name]["status"] == "mismatch"
        assert "swapped" in rows[name]["note"] and other in rows[name]["note"]


def test_verify_without_algo_checks_the_sha256_tables(meta2, published, run_cli):
    r = run_cli("verify", meta2, "--json")
    assert r.exit_code == 0, r.stdout
    data = r.json()
    assert data["tables"] == ["tiny-meta"] and data["algorithm"] == "sha256"
    ok = {Path(f["path"]).name for f in data["files"] if f["status"] == "ok"}
    assert ok == {"consolidated.00.pth", "consolidated.01.pth"}


def test_an_uneven_output_split_the_wrong_way_round_is_reported(tmp_path, run_cli):
    import torch

    from llmkit.tiny import write_random_meta

    folder = tmp_path / "m"
    write_random_meta(folder, layers=1, hidden=16, intermediate=48, vocab=11, heads=2)
    rows = [
        torch.load(folder / f"consolidated.0{i}.pth", weights_only=True)["output.weight"].shape[0] for i in range(2)
    ]
    assert rows == [6, 5]  # torch.chunk puts the larger piece first; Chinese-LLaMA-Alpaca's script puts it last
    r = run_cli("inspect", folder, "--json")
    assert r.exit_code == 0
    assert any("larger piece of output.weight" in w and "consolidated.00.pth" in w for w in r.json()["warnings"])
