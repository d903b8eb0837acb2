"""``llmkit verify`` / ``checksum`` / ``inspect`` / ``models`` flags -> the options object
(huggingface_hub-style CLI tests).

The library call is replaced by a recorder: each test asserts the options the command built from its
flags (defaults included) and the runtime arguments beside them, and that the command renders the
result it got back (text, or ``--json`` with the common ``ok``/``outputs``/``checks``/``notices`` keys).
The real end-to-end runs are in test_verify.py, test_checksums.py, test_inspect.py and test_registry.py.
Last, the library check recover and decrypt call: ``llmkit.verify.published_matches``.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from pathlib import Path

import pytest

from llmkit import registry, summary, verify
from llmkit.pipeline import Check, Notice
from llmkit.summary import InspectOptions, ModelSummary
from llmkit.verify import (
    ChecksumOptions,
    ChecksumResult,
    FileCheck,
    FileDigest,
    TensorChecksums,
    TensorDigest,
    TensorTable,
    TensorVerifyOptions,
    TensorVerifyReport,
    VerifyOptions,
    VerifyReport,
)

COMMON_KEYS = {"ok", "outputs", "checks", "notices"}


@pytest.fixture
def calls(monkeypatch):
    """Record every library call the verify/checksum commands make; return small canned results."""
    seen: list[tuple[str, object, dict]] = []

    def verify_files(options, **runtime):
        seen.append(("verify_files", options, runtime))
        row = FileCheck("m/a.bin", "0" * 32, "0" * 32, "md5", "ok", "t")
        return VerifyReport(
            algorithm="md5",
            files=[row],
            tables=["t"],
            notes=["a note"],
            checks=[row.check()],
            notices=[Notice.info("a note")],
        )

    def verify_tensors(options, **runtime):
        seen.append(("verify_tensors", options, runtime))
        return TensorVerifyReport(
            a=str(options.a),
            b=str(options.b),
            method="bytes",
            identical=True,
            compared=3,
            checks=[Check("tensors", "ok", "3 compared")],
        )

    def checksum(options, **runtime):
        seen.append(("checksum", options, runtime))
        if options.tensors:
            tables = [TensorTable("sha256", str(p), [TensorDigest("w", "F32", (2,), "a" * 64)]) for p in options.paths]
            return TensorChecksums(algorithm="sha256", tables=tables)
        return ChecksumResult(algorithm=options.algorithm or "md5", files=[FileDigest("m/a.bin", "b" * 32, 3)])

    for name, fake in (("verify_files", verify_files), ("verify_tensors", verify_tensors), ("checksum", checksum)):
        monkeypatch.setattr(verify, name, fake)
    return seen


def only_call(result, calls, function: str):
    """The options of the one library call the command made (to ``function``, with a progress factory)."""
    assert result.exit_code == 0, result.stderr
    [(name, options, runtime)] = calls
    assert name == function and callable(runtime["progress"])
    return options


# ---------------------------------------------------------------- verify


def test_verify_defaults(run_cli, calls):
    r = run_cli("verify", "m")
    assert only_call(r, calls, "verify_files") == VerifyOptions(paths=(Path("m"),), table=None, algorithm=None, jobs=0)
    assert "m/a.bin: OK" in r.stdout and "note: a note" in r.stdout


def test_verify_every_flag(run_cli, calls):
    r = run_cli("verify", "a", "b/c.bin", "--table", "t.sha256", "--algo", "sha256", "-j", "3")
    assert r.exit_code == 0, r.stderr
    [(_, options, _)] = calls
    assert options == VerifyOptions(paths=(Path("a"), Path("b/c.bin")), table="t.sha256", algorithm="sha256", jobs=3)


def test_verify_table_without_paths_checks_the_current_folder(run_cli, calls):
    r = run_cli("verify", "-t", "zhixi-13b", "--jobs", "1")
    assert r.exit_code == 0, r.stderr
    [(_, options, _)] = calls
    assert options == VerifyOptions(paths=(), table="zhixi-13b", jobs=1)


def test_verify_json_has_the_common_result_keys(run_cli, calls):
    data = run_cli("verify", "m", "--json").json()
    assert COMMON_KEYS | {"algorithm", "files", "tables", "notes"} <= set(data)
    assert data["checks"] == [{"name": "m/a.bin", "status": "ok", "detail": "md5 " + "0" * 32 + " (table t)"}]
    assert data["notices"] == [{"level": "info", "text": "a note"}] and data["notes"] == ["a note"]


def test_verify_tensors_builds_tensor_options(run_cli, calls):
    r = run_cli("verify", "--tensors", "a", "b.tensors", "-j", "2")
    assert only_call(r, calls, "verify_tensors") == TensorVerifyOptions(a=Path("a"), b=Path("b.tensors"), jobs=2)
    assert "tensors identical: 3 tensors compared bit for bit" in r.stdout


def test_verify_tensors_default_jobs(run_cli, calls):
    assert run_cli("verify", "--tensors", "a", "b").exit_code == 0
    assert calls[0][1] == TensorVerifyOptions(Path("a"), Path("b"))


@pytest.mark.parametrize(
    "args, words",
    [
        (["--tensors", "a"], "exactly two models"),
        (["--tensors", "a", "b", "c"], "exactly two models"),
        (["--tensors", "a", "b", "--table", "t.md5"], "do not combine"),
    ],
)
def test_verify_tensors_flag_conflicts_fail_before_the_library_call(run_cli, calls, args, words):
    r = run_cli("verify", *args)
    assert r.exit_code == 2 and words in r.stderr
    assert calls == []


# ---------------------------------------------------------------- checksum


def test_checksum_defaults(run_cli, calls):
    r = run_cli("checksum", "m")
    assert only_call(r, calls, "checksum") == ChecksumOptions(paths=(Path("m"),), algorithm=None, tensors=False, jobs=0)
    assert r.stdout == f"{'b' * 32}  m/a.bin\n"


def test_checksum_every_flag(run_cli, calls):
    r = run_cli("checksum", "a", "b", "--algo", "sha256", "--tensors", "--jobs", "4")
    assert r.exit_code == 0, r.stderr
    [(_, options, _)] = calls
    assert options == ChecksumOptions(paths=(Path("a"), Path("b")), algorithm="sha256", tensors=True, jobs=4)
    assert r.stdout.count("# llmkit tensor checksums v1") == 2


def test_checksum_json_keeps_its_shape(run_cli, calls):
    files = run_cli("checksum", "m", "--algo", "md5", "--json").json()
    assert COMMON_KEYS | {"algorithm", "files"} <= set(files) and files["files"][0]["digest"] == "b" * 32
    one = run_cli("checksum", "--tensors", "m", "--json").json()  # one model: its table, as an object
    assert COMMON_KEYS | {"algorithm", "source", "tensors"} <= set(one) and one["source"] == "m"
    two = run_cli("checksum", "--tensors", "m", "n", "--json").json()  # several: an array of tables
    assert [t["source"] for t in two] == ["m", "n"]


# ---------------------------------------------------------------- inspect and models


def _summary(path) -> ModelSummary:
    return ModelSummary(
        path=str(path),
        layout="safetensors",
        kind="model",
        files=["model.safetensors"],
        tensor_count=1,
        parameters=4,
        total_bytes=16,
        dtypes={"F32": 1},
        hidden_size=None,
        num_layers=None,
        vocab_size=None,
        architecture=None,
        adapter=None,
        warnings=["vocab_size ignored"],
        notices=[Notice.warning("vocab_size ignored")],
    )


@pytest.mark.parametrize("flags", [[], ["--tensors"], ["--no-tensors"]])
def test_inspect_builds_options_and_shows_notices(run_cli, monkeypatch, flags):
    seen = []

    def fake(options):
        seen.append(options)
        return _summary(options.path)

    monkeypatch.setattr(summary, "inspect_model", fake)
    r = run_cli("inspect", "model", *flags)
    assert r.exit_code == 0, r.stderr
    assert seen == [InspectOptions(path=Path("model"))]  # --tensors only changes the text output
    assert "warning: vocab_size ignored" in r.stderr
    assert "layout" in r.stdout


def test_inspect_json_has_the_common_result_keys(run_cli, monkeypatch):
    monkeypatch.setattr(summary, "inspect_model", lambda options: _summary(options.path))
    data = run_cli("inspect", "model", "--json").json()
    assert set(data) >= COMMON_KEYS and data["warnings"] == ["vocab_size ignored"]
    assert data["notices"] == [{"level": "warning", "text": "vocab_size ignored"}]


def test_models_makes_one_library_call(run_cli, monkeypatch):
    seen = []

    def fake():
        seen.append(True)
        return registry.ModelsListing(
            models=[], tables=[registry.TableListing("t", "md5", "src", "t.md5", [{"path": "a", "digest": "c" * 32}])]
        )

    monkeypatch.setattr(registry, "list_models", fake)
    r = run_cli("models", "--files")
    assert r.exit_code == 0, r.stderr
    assert seen == [True]
    assert f"{'c' * 32}  a" in r.stdout
    data = run_cli("models", "--json").json()
    assert COMMON_KEYS | {"models", "tables"} <= set(data) and data["tables"][0]["name"] == "t"


# ---------------------------------------------------------------- the published-table check other jobs call


def test_published_matches_hashes_only_listed_files_against_the_named_tables(tmp_path, monkeypatch):
    tables = tmp_path / "tables"
    tables.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "pytorch_model.bin").write_bytes(b"weights")
    (out / "config.json").write_bytes(b"{}")
    (out / "notes.txt").write_bytes(b"not listed anywhere")
    good = hashlib.md5(b"weights").hexdigest()
    (tables / "recovered.md5").write_text(f"{good}  pytorch_model.bin\n{'0' * 32}  config.json\n")
    (tables / "other.md5").write_text(f"{'1' * 32}  ./pytorch_model.bin\n")
    monkeypatch.setenv("LLMKIT_CHECKSUMS", str(tables))
    bars = []

    def progress(label, total):
        bars.append((label, total))
        return nullcontext(lambda n: None)

    got = verify.published_matches(out, ["pytorch_model.bin", "notes.txt", "config.json"], None, progress)
    assert [(m.file, m.tables, m.matched_table, m.ok) for m in got] == [
        ("pytorch_model.bin", ["other", "recovered"], "recovered", True),
        ("config.json", ["recovered"], None, False),
    ]
    assert got[0].digest == good and got[1].check().status == "mismatch"
    assert bars == [("hashing", len(b"weights") + 2)]
    only_other = verify.published_matches(out, ["pytorch_model.bin", "config.json"], {"other"})
    assert [(m.file, m.matched_table) for m in only_other] == [("pytorch_model.bin", None)]
    assert verify.published_matches(out, ["notes.txt"], None, progress) == [] and len(bars) == 1
