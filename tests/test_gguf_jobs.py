"""GGUF as the output of every tensor job: recover, merge-lora, from-meta, from-ckpt write the same file as
writing a Hugging Face folder first and converting it with to-gguf (whose bytes the peer tests hold equal to
llama.cpp's converter); GGUF-only flags are refused elsewhere; the GGUF output is safe (staged, refused
over an input or an existing file, nothing left by a failure) and split like llama.cpp's gguf-split."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from common import one_error_line, tiny_state, tuned_state, write_hf, write_lora, write_meta
from gguf import GGUFReader


def _to_gguf(run_cli, folder: Path, out: Path, *extra: str) -> bytes:
    r = run_cli("to-gguf", folder, "-o", out, *extra)
    assert r.exit_code == 0, r.stderr
    return out.read_bytes()


@pytest.fixture
def models(tmp_path):
    base = write_hf(tmp_path / "base", tiny_state(0))
    target = write_hf(tmp_path / "target", tuned_state(tiny_state(0)))
    return base, target


def test_recover_writes_the_gguf_of_its_output(run_cli, models, tmp_path):
    base, target = models
    assert run_cli("make-diff", "--base", base, "--target", target, "-o", tmp_path / "diff").exit_code == 0
    # the HF folder and the .gguf share their name: general.name comes from it
    assert (
        run_cli("recover", "--base", base, "--diff", tmp_path / "diff", "-o", tmp_path / "hf" / "zhixi").exit_code == 0
    )
    r = run_cli(
        "recover",
        "--base",
        base,
        "--diff",
        tmp_path / "diff",
        "-o",
        tmp_path / "zhixi.gguf",
        "--format",
        "gguf",
        "--outtype",
        "q8_0",
    )
    assert r.exit_code == 0, r.stderr
    expected = _to_gguf(run_cli, tmp_path / "hf" / "zhixi", tmp_path / "ref" / "zhixi.gguf", "--outtype", "q8_0")
    assert (tmp_path / "zhixi.gguf").read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "diff", "hf", "ref", "target", "zhixi.gguf"]


def test_merge_lora_writes_the_gguf_of_the_merged_model(run_cli, models, tmp_path):
    base, _ = models
    lora = write_lora(tmp_path / "lora")
    assert run_cli("merge-lora", "--base", base, "--lora", lora, "-o", tmp_path / "hf" / "merged").exit_code == 0
    r = run_cli("merge-lora", "--base", base, "--lora", lora, "-o", tmp_path / "merged.gguf", "--format", "gguf")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "merged.gguf").read_bytes() == _to_gguf(
        run_cli, tmp_path / "hf" / "merged", tmp_path / "r" / "merged.gguf"
    )


def test_from_meta_writes_gguf(run_cli, tmp_path):
    meta = write_meta(tmp_path / "7B", tiny_state(3))
    assert run_cli("from-meta", meta, "-o", tmp_path / "hf" / "llama").exit_code == 0
    r = run_cli("from-meta", meta, "-o", tmp_path / "llama.gguf", "--format", "gguf", "--outtype", "bf16")
    assert r.exit_code == 0, r.stderr
    expected = _to_gguf(run_cli, tmp_path / "hf" / "llama", tmp_path / "r" / "llama.gguf", "--outtype", "bf16")
    assert (tmp_path / "llama.gguf").read_bytes() == expected
    # to-gguf reads the Meta folder itself too: the same tensors (the name differs: the folder's)
    direct = GGUFReader(tmp_path / "llama.gguf")
    via = GGUFReader(_to_gguf(run_cli, meta, tmp_path / "d.gguf", "--outtype", "bf16") and tmp_path / "d.gguf")
    assert [(t.name, bytes(t.data)) for t in direct.tensors] == [(t.name, bytes(t.data)) for t in via.tensors]


def test_from_ckpt_writes_gguf(run_cli, models, tmp_path):
    base, _ = models
    assert run_cli("to-ckpt", base, "-o", tmp_path / "m.ckpt").exit_code == 0
    assert run_cli("from-ckpt", tmp_path / "m.ckpt", "-o", tmp_path / "hf" / "m", "--config", base).exit_code == 0
    r = run_cli("from-ckpt", tmp_path / "m.ckpt", "-o", tmp_path / "m.gguf", "--config", base, "--format", "gguf")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "m.gguf").read_bytes() == _to_gguf(run_cli, tmp_path / "hf" / "m", tmp_path / "r" / "m.gguf")


@pytest.mark.parametrize(
    ("args", "flag"),
    [(("--outtype", "q8_0"), "--outtype"), (("--split-max-size", "1M"), "--split-max-size")],
)
def test_gguf_flags_without_format_gguf_are_refused(run_cli, models, tmp_path, args, flag):
    base, _ = models
    lora = write_lora(tmp_path / "lora")
    r = run_cli("merge-lora", "--base", base, "--lora", lora, "-o", tmp_path / "out", *args)
    assert r.exit_code == 2
    assert f"{flag} applies to --format gguf only" in one_error_line(r)
    assert not (tmp_path / "out").exists()


def test_merge_shard_size_with_gguf_is_refused(run_cli, models, tmp_path):
    base, _ = models
    lora = write_lora(tmp_path / "lora")
    r = run_cli(
        "merge-lora",
        "--base",
        base,
        "--lora",
        lora,
        "-o",
        tmp_path / "o.gguf",
        "--format",
        "gguf",
        "--shard-size",
        "1G",
    )
    assert r.exit_code == 2 and "--split-max-size" in one_error_line(r)


def test_gguf_output_is_safe(run_cli, models, tmp_path):
    base, _ = models
    out = tmp_path / "m.gguf"
    out.write_bytes(b"mine")
    r = run_cli("to-gguf", base, "-o", out)
    assert r.exit_code == 2 and "exists" in one_error_line(r, out)
    assert out.read_bytes() == b"mine"
    assert run_cli("to-gguf", base, "-o", out, "--force").exit_code == 0
    assert out.read_bytes()[:4] == b"GGUF"
    r = run_cli("to-gguf", base, "-o", base / "inside.gguf")
    assert r.exit_code == 2 and not (base / "inside.gguf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "m.gguf", "target"]  # no staged leftovers


def test_no_tokenizer_is_one_error_before_anything_is_written(run_cli, models, tmp_path):
    base, _ = models
    bare = tmp_path / "bare"
    shutil.copytree(base, bare)
    (bare / "tokenizer.model").unlink()
    r = run_cli("to-gguf", bare, "-o", tmp_path / "x.gguf")
    assert r.exit_code == 2 and "tokenizer.model" in one_error_line(r)
    assert not (tmp_path / "x.gguf").exists()


def test_adapter_is_refused_with_the_merge_hint(run_cli, tmp_path):
    lora = write_lora(tmp_path / "lora")
    r = run_cli("to-gguf", lora, "-o", tmp_path / "x.gguf")
    assert r.exit_code == 2 and "merge-lora" in one_error_line(r)


def test_split_output_is_llama_cpp_split_files_in_one_folder(run_cli, models, tmp_path):
    base, _ = models
    whole = GGUFReader(_to_gguf(run_cli, base, tmp_path / "whole.gguf") and tmp_path / "whole.gguf")
    r = run_cli("to-gguf", base, "-o", tmp_path / "parts", "--split-max-size", "60K")
    assert r.exit_code == 0, r.stderr
    files = sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert len(files) > 1 and files[0] == f"parts-00001-of-{len(files):05d}.gguf"
    readers = [GGUFReader(tmp_path / "parts" / f) for f in files]
    for i, rd in enumerate(readers):
        assert rd.fields["split.no"].contents() == i
        assert rd.fields["split.count"].contents() == len(files)
        assert rd.fields["split.tensors.count"].contents() == len(whole.tensors)
        assert sum(t.n_bytes for t in rd.tensors) <= 60_000 or len(rd.tensors) == 1
    split_tensors = [(t.name, bytes(t.data)) for rd in readers for t in rd.tensors]
    assert split_tensors == [(t.name, bytes(t.data)) for t in whole.tensors]
    assert "tokenizer.ggml.tokens" in readers[0].fields and "tokenizer.ggml.tokens" not in readers[1].fields


def test_dry_run_shows_the_exact_file_size_and_writes_nothing(run_cli, models, tmp_path):
    base, _ = models
    r = run_cli("to-gguf", base, "-o", tmp_path / "m.gguf", "--outtype", "q8_0", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    planned = r.json()["plan"]["output_bytes"]
    assert not (tmp_path / "m.gguf").exists()
    _to_gguf(run_cli, base, tmp_path / "m.gguf", "--outtype", "q8_0")
    assert planned == (tmp_path / "m.gguf").stat().st_size
    assert r.json()["plan"]["files"] == ["m.gguf"]


def test_to_gguf_of_a_stream_is_the_file_of_the_folder(run_cli, models, tmp_path):
    from typer.testing import CliRunner

    from llmkit.cli import app

    base, _ = models
    merge = ["merge-lora", "--base", str(base), "--lora", str(write_lora(tmp_path / "lora")), "-q", "-o"]
    stream = CliRunner().invoke(app, [*merge, "-"])
    assert stream.exit_code == 0, stream.stderr
    r = CliRunner().invoke(app, ["to-gguf", "-", "-o", str(tmp_path / "merged.gguf"), "-q"], input=stream.stdout_bytes)
    assert r.exit_code == 0, r.stderr
    assert CliRunner().invoke(app, [*merge, str(tmp_path / "f" / "merged")]).exit_code == 0
    _to_gguf(run_cli, tmp_path / "f" / "merged", tmp_path / "f.gguf")
    # the stream carries the producer's planned order (here the base's files'): the same file as via a folder
    assert (tmp_path / "merged.gguf").read_bytes() == (tmp_path / "f.gguf").read_bytes()
