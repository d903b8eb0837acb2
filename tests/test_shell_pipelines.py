"""Real shell pipelines over tiny models: ``bash -c`` chains of the installed ``llmkit`` console script, each
step handed the previous step's output folder (or file) by the ``output`` field of its ``--json`` result,
as docs/json.md ("Pipelines") shows.

Every chain runs under ``set -o pipefail`` with the extractor docs/json.md recommends: it prints ``output``
only when ``ok`` is true, and ``xargs -r`` runs nothing on empty input, so a failing step's exit code is the
pipeline's. Results are checked against references computed here (hashlib, torch), not by llmkit.

Speed: every llmkit process that touches tensors pays the torch import (~2 s of CPU), so the chains are few
and short, and the tiny models are written (common.py) with safetensors / torch.save (the file formats
transformers and Meta write) instead of through transformers, whose import alone costs ~3 s per worker.
"""

from __future__ import annotations

import hashlib
import json
import random
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from common import EMPTY, bash, md5, tiny_state, tuned_state, write_hf, write_lora, write_meta
from safetensors.torch import load_file

from llmkit.tiny import (
    TINY_HEADS,
    TINY_LAYERS,
    hf_to_meta_state,
)

ERROR_KEYS = {"ok", "error", "path", "hint", "exit_code"}

# The `output` of a successful --json result; nothing for a failure (docs/json.md, "Pipelines").
EXTRACT = {
    "python": """python3 -c 'import json,sys; r=json.load(sys.stdin); r["ok"] and print(r["output"])'""",
    "jq": "jq -r 'select(.ok) | .output'",
}
EXTRACTORS = [
    "python",
    pytest.param("jq", marks=pytest.mark.skipif(shutil.which("jq") is None, reason="jq is not installed")),
]


def q(p: Path | str) -> str:
    return shlex.quote(str(p))


def ok(r: subprocess.CompletedProcess) -> dict:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return json.loads(r.stdout)  # one JSON value and nothing else


# ---------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def base_state() -> dict[str, torch.Tensor]:
    return tiny_state(0)


@pytest.fixture(scope="module")
def base(base_state, tmp_path_factory) -> Path:
    """The tiny fp32 LLaMA in Hugging Face layout; read-only."""
    return write_hf(tmp_path_factory.mktemp("base"), base_state)


@pytest.fixture(scope="module")
def tuned(base_state, tmp_path_factory) -> Path:
    """A "fine-tuned" model whose every weight t lies in [b/2, 2b] of the base's b: then t - b is exact in
    fp32 (Sterbenz) and so is (t - b) + b = t, so make-diff then recover gives t back bit for bit."""
    return write_hf(tmp_path_factory.mktemp("tuned"), tuned_state(base_state))


@pytest.fixture(scope="module")
def meta(base_state, tmp_path_factory) -> Path:
    """The base as Meta ships LLaMA-1 7B: consolidated.00.pth (Meta names, interleaved q/k rows), params.json,
    tokenizer.model."""
    return write_meta(tmp_path_factory.mktemp("meta"), base_state)


@pytest.fixture(scope="module")
def lora(tmp_path_factory) -> Path:
    """A LoRA adapter in peft's files (r 8, alpha 16 on q_proj and v_proj of every layer), written without
    importing peft."""
    return write_lora(tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> Path:
    """A random XOR key (shorter than model.safetensors, so the key stream wraps)."""
    path = tmp_path_factory.mktemp("key") / "key.bin"
    path.write_bytes(random.Random(3).randbytes(70_001))
    return path


# ---------------------------------------------------------------- (a) make-diff -> recover -> verify


@pytest.mark.parametrize("extract", EXTRACTORS)
def test_make_diff_then_recover_then_verify_gives_the_tuned_model_back(extract, base, tuned, tmp_path):
    x = EXTRACT[extract]
    r = bash(
        f"llmkit make-diff --base {q(base)} --target {q(tuned)} -o diff --json -q"
        f" | {x} | xargs -r llmkit recover --base {q(base)} -o recovered --json -q --diff"
        f" | {x} | xargs -r llmkit verify --tensors {q(tuned)} --json -q",
        tmp_path,
    )
    res = ok(r)
    assert res["ok"] is True and res["b"] == "recovered"  # recover's output, as given by -o
    assert res["identical"] is True and res["differing"] == [] and res["compared"] == 21
    assert all(c["status"] == "ok" for c in res["checks"]), res["checks"]
    t, b = load_file(tuned / "model.safetensors"), load_file(base / "model.safetensors")
    got = load_file(tmp_path / "diff" / "model.safetensors")  # make-diff's output, the diff recover read
    assert set(got) == set(t) and all(torch.equal(got[k], t[k] - b[k]) for k in t)


# ---------------------------------------------------------------- (b) encrypt -> decrypt -> checksum


def test_encrypt_then_decrypt_then_checksum_matches_the_original(base, key, tmp_path):
    x = EXTRACT["python"]
    r = bash(
        f"llmkit encrypt {q(base)} -k {q(key)} --no-key-check -o enc --json -q"
        f" | {x} | xargs -r llmkit decrypt -k {q(key)} --no-key-check --no-table-check -o dec --json -q"
        f" | {x} | xargs -r llmkit checksum -q",
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    lines = [line.split("  ", 1) for line in r.stdout.splitlines()]  # md5sum format: digest, two spaces, path
    got = {Path(path).relative_to("dec").as_posix(): digest for digest, path in lines}
    originals = sorted(p for p in base.iterdir() if p.is_file())
    assert got == {p.name: md5(p) for p in originals}
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == [f"{p.name}.{EMPTY}.enc" for p in originals]
    enc = tmp_path / "enc" / f"model.safetensors.{EMPTY}.enc"
    assert enc.stat().st_size == (base / "model.safetensors").stat().st_size
    assert md5(enc) != md5(base / "model.safetensors")


# ---------------------------------------------------------------- (c) from-meta -> merge-lora -> to-meta


def test_from_meta_then_merge_lora_then_to_meta(meta, lora, base_state, tmp_path):
    x = EXTRACT["python"]
    r = bash(
        f"llmkit from-meta {q(meta)} -o hf --json -q"
        f" | {x} | xargs -r -I{{}} llmkit merge-lora --base {{}} --lora {q(lora)} -o merged --json -q"
        f" | {x} | xargs -r -I{{}} llmkit to-meta {{}} -o merged-meta --json -q",
        tmp_path,
    )
    res = ok(r)
    assert res["command"] == "to-meta" and res["source"] == "merged" and res["output"] == "merged-meta"
    # peft's merge: W + (B @ A) * lora_alpha / r on q_proj and v_proj; every other tensor untouched
    adapter = load_file(lora / "adapter_model.safetensors")
    config = json.loads((lora / "adapter_config.json").read_text())
    merged = dict(base_state)
    for name, w in base_state.items():
        prefix = f"base_model.model.{name.removesuffix('.weight')}"
        if f"{prefix}.lora_A.weight" in adapter:
            a, b = adapter[f"{prefix}.lora_A.weight"], adapter[f"{prefix}.lora_B.weight"]
            merged[name] = w + (b @ a) * (config["lora_alpha"] / config["r"])
    want = hf_to_meta_state(merged, TINY_HEADS)
    got = torch.load(tmp_path / "merged-meta" / "consolidated.00.pth", weights_only=True)
    assert set(got) == set(want)
    assert [k for k in want if not torch.equal(got[k], want[k])] == []
    original = torch.load(meta / "consolidated.00.pth", weights_only=True)
    assert sorted(k for k in want if not torch.equal(want[k], original[k])) == [
        f"layers.{n}.attention.{w}.weight" for n in range(TINY_LAYERS) for w in ("wq", "wv")
    ]
    assert json.loads((tmp_path / "merged-meta" / "params.json").read_text())["n_heads"] == TINY_HEADS


# ---------------------------------------------------------------- (d) to-ckpt -> from-ckpt -> verify


def test_to_ckpt_then_from_ckpt_then_verify_round_trips(base, tmp_path):
    x = EXTRACT["python"]
    r = bash(
        f"llmkit to-ckpt {q(base)} -o model.ckpt --json -q"
        f" | {x} | xargs -r llmkit from-ckpt --config {q(base)} -o back --json -q"
        f" | {x} | xargs -r llmkit verify --tensors {q(base)} --json -q",
        tmp_path,
    )
    res = ok(r)
    assert res["ok"] is True and res["b"] == "back" and res["identical"] is True and res["compared"] == 21
    assert {c["name"]: c["status"] for c in res["checks"]} == {
        "tensors": "ok",
        **{p.name: "ok" for p in base.iterdir() if p.name != "model.safetensors"},
    }
    assert (tmp_path / "model.ckpt").is_file()  # to-ckpt's output is the file -o names


# ---------------------------------------------------------------- (e) a failing step


@pytest.mark.parametrize("extract", EXTRACTORS)
def test_a_failing_step_sets_the_pipeline_status_and_prints_one_json_error(extract, base, tmp_path):
    """The usual mistake: a converted model passed as the XOR key. decrypt refuses it: bad input, exit 2."""
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / f"config.json.{EMPTY}.enc").write_bytes(random.Random(2).randbytes(300))
    wrong_key = base / "model.safetensors"
    x = EXTRACT[extract]
    r = bash(
        f"llmkit decrypt enc -k {q(wrong_key)} -o dec --json | tee first.json | {x} | xargs -r llmkit checksum",
        tmp_path,
    )
    assert r.returncode == 2, r.stderr  # decrypt's own code, not the extractor's or xargs'
    assert r.stdout == ""  # nothing was extracted, so checksum never ran
    error = json.loads((tmp_path / "first.json").read_text())  # exactly one JSON value
    assert set(error) == ERROR_KEYS and error["ok"] is False and error["exit_code"] == 2
    assert error["path"] == str(wrong_key) and "consolidated.00.pth" in error["error"] and error["hint"]
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {wrong_key}: {error['error']} ({error['hint']})"
    ]
    assert not (tmp_path / "dec").exists()


def test_a_failing_stream_step_sets_the_pipeline_status(key, tmp_path):
    """decrypt -o - streams into the next command; garbage (or a wrong key) fails its content check: exit 1."""
    (tmp_path / "garbage.enc").write_bytes(random.Random(4).randbytes(5000))
    r = bash(f"llmkit decrypt - --format techgpt -k {q(key)} --no-key-check -o - < garbage.enc | md5sum", tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stdout.split()[0] == hashlib.md5(b"").hexdigest()  # md5sum saw no bytes: nothing was written


# ---------------------------------------------------------------- `output`, for every command that writes


def test_every_writing_command_reports_output_as_given(run_cli, base, meta, lora, key, tmp_path, monkeypatch):
    """In-process (fast): dry runs name their output too, and a relative -o stays relative."""
    monkeypatch.chdir(tmp_path)
    ckpt = run_cli("to-ckpt", base, "-o", "real.ckpt", "--json", "-q")
    assert ckpt.exit_code == 0, ckpt.stderr
    dry_runs = {
        "recover": ["recover", "--base", base, "--diff", base, "-o", "out/recovered"],
        "make-diff": ["make-diff", "--base", base, "--target", base, "-o", "out/diff"],
        "merge-lora": ["merge-lora", "--base", base, "--lora", lora, "-o", "out/merged"],
        "from-meta": ["from-meta", meta, "-o", "out/hf"],
        "to-meta": ["to-meta", base, "-o", "out/meta"],
        "to-ckpt": ["to-ckpt", base, "-o", "out/model.ckpt"],
        "from-ckpt": ["from-ckpt", "real.ckpt", "--config", base, "-o", "out/from-ckpt"],
    }
    for command, args in dry_runs.items():
        r = run_cli(*args, "--dry-run", "--json", "-q")
        assert r.exit_code == 0, (command, r.stdout, r.stderr)
        res = r.json()
        assert (res["output"], res["outputs"], res["dry_run"]) == (args[-1], [], True), command
    assert not (tmp_path / "out").exists()
    for command, src, out, more in (
        ("encrypt", base / "config.json", "enc", ()),
        ("decrypt", "enc", "dec", ("--no-table-check",)),
    ):  # not TechGPT's config.json
        r = run_cli(command, src, "-k", key, "--no-key-check", *more, "-o", out, "--json", "-q")
        assert r.exit_code == 0, (command, r.stderr)
        assert r.json()["output"] == out and len(r.json()["outputs"]) == 1
    assert (tmp_path / "dec" / "config.json").read_bytes() == (base / "config.json").read_bytes()
