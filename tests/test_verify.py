"""llmkit verify / checksum: file tables, per-tensor hashes, comparisons. Expected values come from
hashlib, numpy bytes and torch in the tests, never from llmkit's own output of the same run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from common import md5

from llmkit.errors import InputError
from llmkit.verify import compare_sources, hash_file, plan_verify, run_verify, tensor_digest, verify_file, verify_paths

LLMKIT = [sys.executable, "-m", "llmkit"]  # the installed package, run as a separate process


def write_table(path: Path, folder: Path, names: list[str], algo: str = "md5") -> Path:
    lines = [f"{hashlib.new(algo, (folder / n).read_bytes()).hexdigest()}  {n}" for n in names]
    path.write_text("# test table\n" + "\n".join(lines) + "\n")
    return path


def make_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.bin").write_bytes(os.urandom(3000))
    (root / "b.json").write_text('{"k": 1}\n')
    (root / "c.model").write_bytes(b"sentencepiece")
    return root


def write_shards(folder: Path, state: dict[str, torch.Tensor], sizes: list[int]) -> None:
    """A sharded .bin checkpoint written directly with torch.save (not by llmkit)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(state)
    weight_map, start = {}, 0
    for i, n in enumerate(sizes, 1):
        fname = f"pytorch_model-{i:05d}-of-{len(sizes):05d}.bin"
        group = names[start : start + n]
        torch.save({k: state[k] for k in group}, folder / fname)
        weight_map.update(dict.fromkeys(group, fname))
        start += n
    assert start == len(names)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


# ---------------------------------------------------------------- hashing primitives


@pytest.mark.parametrize("size", [0, 1, 8 * 1024 * 1024 - 1, 8 * 1024 * 1024 + 7])
def test_hash_file_equals_hashlib_across_buffer_boundaries(tmp_path, size):
    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    seen = []
    assert hash_file(p, "md5", progress=seen.append) == md5(data)
    assert hash_file(p, "sha256") == hashlib.sha256(data).hexdigest()
    assert sum(seen) == size


def test_hash_file_rejects_unknown_algorithm(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(InputError, match="algorithm"):
        hash_file(tmp_path / "f", "crc32")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool])
def test_tensor_digest_is_sha256_of_raw_bytes(dtype):
    t = (torch.arange(24).reshape(2, 3, 4) % 5).to(dtype)
    # Raw bytes the independent way: reinterpret through a same-width integer numpy array.
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    raw = t.view(ints).numpy().tobytes()
    assert tensor_digest(t) == hashlib.sha256(raw).hexdigest()
    assert tensor_digest(t, "md5") == md5(raw)


def test_tensor_digest_of_a_view_hashes_its_c_order_values():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert tensor_digest(t.T) == hashlib.sha256(t.T.numpy().copy(order="C").tobytes()).hexdigest()
    assert tensor_digest(torch.tensor(2.5)) == hashlib.sha256(torch.tensor(2.5).numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------- comparing models


def test_compare_sources_same_tensors_in_other_layouts_are_identical(tiny_factory):
    a, b = tiny_factory("bin"), tiny_factory("safetensors-sharded")
    result = compare_sources(a.path, b.path)
    assert result.identical and result.differing == [] and result.only_a == [] and result.only_b == []


def test_compare_sources_names_differing_tensors_in_order(tiny_factory, tmp_path):
    base = tiny_factory("bin")
    state = dict(base.state)
    changed = ["model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"]
    for name in changed:
        state[name] = state[name].clone()
        state[name][0, 0] += 1
    state["model.norm.weight"] = state["model.norm.weight"].to(torch.float16)
    del state["lm_head.weight"]
    state["extra.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "pytorch_model.bin")
    result = compare_sources(base.path, tmp_path / "pytorch_model.bin")
    order = list(base.state)
    expected_diff = sorted([*changed, "model.norm.weight"], key=order.index)
    assert not result.identical
    assert result.differing == expected_diff
    assert result.only_a == ["lm_head.weight"] and result.only_b == ["extra.bias"]


def test_compare_sources_is_bit_exact(tmp_path):
    torch.save({"w": torch.tensor([0.0, float("nan")])}, tmp_path / "a.bin")
    torch.save({"w": torch.tensor([-0.0, float("nan")])}, tmp_path / "b.bin")
    torch.save({"w": torch.tensor([0.0, float("nan")])}, tmp_path / "c.bin")
    assert compare_sources(tmp_path / "a.bin", tmp_path / "b.bin").differing == ["w"]
    assert compare_sources(tmp_path / "a.bin", tmp_path / "c.bin").identical


def test_resharded_bin_differs_by_bytes_and_verifies_equal_by_tensors(tiny_factory, tmp_path, run_cli):
    ref = tiny_factory("bin")
    a, b = tmp_path / "a", tmp_path / "b"
    write_shards(a, ref.state, [6, 6, 6, 3])
    write_shards(b, ref.state, [5, 5, 5, 6])  # same shard names, other split
    names = [f"pytorch_model-{i:05d}-of-00004.bin" for i in range(1, 5)]
    table = write_table(tmp_path / "a.md5", a, names)
    by_bytes = run_cli("verify", b, "--table", table, "--json")
    assert by_bytes.exit_code == 1
    assert {f["status"] for f in by_bytes.json()["files"] if f["path"].endswith(".bin")} == {"mismatch"}
    by_tensors = run_cli("verify", "--tensors", a, b)
    assert by_tensors.exit_code == 0, by_tensors.stdout
    assert "identical" in by_tensors.stdout
    ta = run_cli("checksum", "--tensors", a).stdout.splitlines()
    tb = run_cli("checksum", "--tensors", b).stdout.splitlines()
    assert [x for x in ta if not x.startswith("#")] == [x for x in tb if not x.startswith("#")]


def test_verify_tensors_names_the_first_differing_tensor(tiny_factory, tmp_path, run_cli):
    ref = tiny_factory("bin")
    state = dict(ref.state)
    state["model.layers.0.mlp.down_proj.weight"] = state["model.layers.0.mlp.down_proj.weight"] * 2
    torch.save(state, tmp_path / "pytorch_model.bin")
    result = run_cli("verify", "--tensors", ref.path / "pytorch_model.bin", tmp_path / "pytorch_model.bin")
    assert result.exit_code == 1
    assert "differs: model.layers.0.mlp.down_proj.weight (bytes differ)" in result.stdout
    data = run_cli(
        "verify", "--tensors", ref.path / "pytorch_model.bin", tmp_path / "pytorch_model.bin", "--json"
    ).json()
    assert data["ok"] is False and data["differing"] == ["model.layers.0.mlp.down_proj.weight"]


def test_verify_tensors_against_a_tensor_table(tiny_factory, tmp_path, run_cli):
    st, meta_free = tiny_factory("safetensors"), tiny_factory("bin-sharded")
    table = tmp_path / "ref.tensors"
    table.write_text(run_cli("checksum", "--tensors", st.path).stdout)
    same = run_cli("verify", "--tensors", meta_free.path, table)
    assert same.exit_code == 0, same.stdout
    other = tiny_factory("bin", seed=1)
    result = run_cli("verify", "--tensors", table, other.path, "--json")
    assert result.exit_code == 1
    assert sorted(result.json()["differing"]) == sorted(other.state)  # another seed: every tensor differs


def test_checksum_tensors_lines_are_independent_sha256(tiny_factory, run_cli):
    model = tiny_factory("safetensors-sharded")
    lines = [x for x in run_cli("checksum", "--tensors", model.path).stdout.splitlines() if not x.startswith("#")]
    expected = []
    for name, t in model.state.items():
        raw = t.numpy().tobytes()
        shape = "[" + ",".join(map(str, t.shape)) + "]"
        expected.append((hashlib.sha256(raw).hexdigest(), name, "F32", shape))
    got = [(ln.split("  ", 1)[0], *ln.split("  ", 1)[1].split(" ")) for ln in lines]
    assert sorted(got) == sorted(expected)


def test_verify_tensors_reports_config_differences_semantically(tiny_factory, tmp_path, run_cli):
    import shutil

    ref = tiny_factory("bin")
    copy = tmp_path / "copy"
    shutil.copytree(ref.path, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["transformers_version"] = "0.0.1"
    (copy / "config.json").write_text(json.dumps(cfg))  # other formatting and version
    data = run_cli("verify", "--tensors", copy, ref.path, "--json").json()
    row = next(f for f in data["files"] if f["path"] == "config.json")
    assert row["status"] == "ok" and "metadata" in row["note"]
    assert data["ok"] is True
    cfg["rms_norm_eps"] = 0.5
    (copy / "config.json").write_text(json.dumps(cfg))
    data = run_cli("verify", "--tensors", copy, ref.path, "--json").json()
    row = next(f for f in data["files"] if f["path"] == "config.json")
    assert row["status"] == "mismatch" and "rms_norm_eps" in row["note"] and data["ok"] is False


# ---------------------------------------------------------------- verifying against tables


def test_verify_reports_ok_mismatch_missing_extra(tmp_path, run_cli):
    folder = make_folder(tmp_path / "m")
    table = write_table(tmp_path / "t.md5", folder, ["a.bin", "b.json", "c.model"])
    (folder / "a.bin").write_bytes(b"corrupted")
    (folder / "c.model").unlink()
    (folder / "README.md").write_text("extra")
    result = run_cli("verify", folder, "--table", table, "--json")
    assert result.exit_code == 1
    rows = {Path(f["path"]).name: f for f in result.json()["files"]}
    assert rows["a.bin"]["status"] == "mismatch" and rows["a.bin"]["actual"] == md5(b"corrupted")
    assert rows["b.json"]["status"] == "ok"
    assert rows["c.model"]["status"] == "missing" and rows["c.model"]["actual"] is None
    assert rows["README.md"]["status"] == "extra" and rows["README.md"]["expected"] is None


def test_verify_exit_0_only_when_all_expected_files_match(tmp_path, run_cli):
    folder = make_folder(tmp_path / "m")
    table = write_table(tmp_path / "t.md5", folder, ["a.bin", "b.json", "c.model"])
    (folder / "notes.txt").write_text("extra files do not fail the check")
    ok = run_cli("verify", folder, "--table", table)
    assert ok.exit_code == 0 and "3 ok" in ok.stdout
    (folder / "b.json").write_text('{"k": 2}\n')
    assert run_cli("verify", folder, "--table", table).exit_code == 1


def test_verify_json_shape(tmp_path, run_cli):
    folder = make_folder(tmp_path / "m")
    table = write_table(tmp_path / "t.md5", folder, ["a.bin"])
    data = run_cli("verify", folder, "--table", table, "--json").json()
    assert isinstance(data["ok"], bool) and data["ok"] is True
    for row in data["files"]:
        assert {"path", "expected", "actual", "algorithm", "status"} <= set(row)
        assert row["status"] in ("ok", "mismatch", "missing", "extra")
    assert data["files"][0] == {
        **data["files"][0],
        "algorithm": "md5",
        "status": "ok",
        "expected": md5((folder / "a.bin").read_bytes()),
    }


def test_verify_sha256_table(tmp_path, run_cli):
    folder = make_folder(tmp_path / "m")
    table = write_table(tmp_path / "t.sha256", folder, ["a.bin", "b.json"], algo="sha256")
    result = run_cli("verify", folder, "--table", table, "--json")
    assert result.exit_code == 0 and {f["algorithm"] for f in result.json()["files"]} == {"sha256"}
    bad = run_cli("verify", folder, "--table", table, "--algo", "md5")
    assert bad.exit_code == 2 and bad.stderr.startswith("error:")


def test_verify_table_from_current_folder_like_md5sum_c(tmp_path, run_cli, monkeypatch):
    folder = make_folder(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.md5").write_text(run_cli("checksum", "m").stdout)
    result = run_cli("verify", "--table", "t.md5", "--json")
    assert result.exit_code == 0
    assert sorted(f["path"] for f in result.json()["files"]) == ["m/a.bin", "m/b.json", "m/c.model"]
    # The same table also checks the folder given as PATH.
    assert run_cli("verify", "m", "--table", "t.md5").exit_code == 0
    (folder / "c.model").unlink()
    assert run_cli("verify", "--table", "t.md5").exit_code == 1


def test_verify_parallel_jobs_give_the_same_report(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for i in range(6):
        (folder / f"f{i}.bin").write_bytes(os.urandom(100_000 + i))
    table = write_table(tmp_path / "t.md5", folder, [f"f{i}.bin" for i in range(6)])
    (folder / "f3.bin").write_bytes(b"x")
    one = verify_paths([folder], table=table, jobs=1)
    two = verify_paths([folder], table=table, jobs=3)
    assert [(f.path, f.actual, f.status) for f in one.files] == [(f.path, f.actual, f.status) for f in two.files]
    assert [f.status for f in two.files].count("mismatch") == 1


def test_mismatched_json_with_only_formatting_and_version_changes_is_classified(tmp_path, run_cli):
    published = {
        "architectures": ["LlamaForCausalLM"],
        "torch_dtype": "float16",
        "transformers_version": "4.28.1",
        "vocab_size": 32000,
    }
    # The published bytes the way transformers 4.x wrote them; the table holds their md5.
    blob = (json.dumps(published, indent=2, sort_keys=True) + "\n").encode()
    folder = tmp_path / "m"
    folder.mkdir()
    (tmp_path / "t.md5").write_text(f"{md5(blob)}  config.json\n")
    mine = {
        "vocab_size": 32000,
        "architectures": ["LlamaForCausalLM"],
        "torch_dtype": "float16",
        "transformers_version": "5.24.0",
    }
    (folder / "config.json").write_text(json.dumps(mine))
    row = run_cli("verify", folder, "--table", tmp_path / "t.md5", "--json").json()["files"][0]
    assert row["status"] == "mismatch"
    assert "transformers_version was 4.28.1" in row["note"] and "not corruption" in row["note"]
    (folder / "config.json").write_text(json.dumps(published))
    row = run_cli("verify", folder, "--table", tmp_path / "t.md5", "--json").json()["files"][0]
    assert "only the formatting differs" in row["note"]
    (folder / "config.json").write_text(json.dumps({**published, "vocab_size": 49953}))
    row = run_cli("verify", folder, "--table", tmp_path / "t.md5", "--json").json()["files"][0]
    assert "differs from the published file" in row["note"]


def test_mismatched_weights_say_whether_the_checkpoint_is_readable(tiny_factory, tmp_path, run_cli):
    ref = tiny_factory("bin")
    folder = tmp_path / "m"
    folder.mkdir()
    (tmp_path / "t.md5").write_text(f"{md5((ref.path / 'pytorch_model.bin').read_bytes())}  pytorch_model.bin\n")
    # Re-saved with another key order: same tensors, other bytes.
    torch.save(dict(reversed(list(ref.state.items()))), folder / "pytorch_model.bin")
    row = run_cli("verify", folder, "--table", tmp_path / "t.md5", "--json").json()["files"][0]
    assert row["status"] == "mismatch" and "readable checkpoint with 21 tensors" in row["note"]
    assert "--tensors" in row["note"]
    data = (ref.path / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    row = run_cli("verify", folder, "--table", tmp_path / "t.md5", "--json").json()["files"][0]
    assert "not a readable checkpoint" in row["note"]


def test_auto_table_rejects_tiny_files_named_like_zhixi_shards(tmp_path, run_cli):
    folder = tmp_path / "m"
    folder.mkdir()
    for i in range(1, 7):
        (folder / f"pytorch_model-{i:05d}-of-00006.bin").write_bytes(b"tiny")
    result = run_cli("verify", folder)
    assert result.exit_code == 2
    assert "zhixi-13b-diff" in result.stderr and result.stderr.startswith("error:")


def test_auto_table_picks_zhixi_candidates_by_names_and_sizes(tmp_path):
    folder = tmp_path / "zhixi-diff"
    folder.mkdir()
    for i in range(1, 7):  # sparse files of a real shard's size: only names and sizes are looked at
        with open(folder / f"pytorch_model-{i:05d}-of-00006.bin", "wb") as f:
            f.truncate(9_900_000_000 if i < 6 else 2_000_000_000)
    plan = plan_verify([folder])
    assert {t.name for t, _ in plan.candidates[0]} == {"zhixi-13b-diff", "zhixi-13b"}


def test_auto_table_chooses_the_table_whose_hashes_match(tmp_path, monkeypatch):
    folder = make_folder(tmp_path / "m")
    tables = tmp_path / "tables"
    tables.mkdir()
    write_table(tables / "first.md5", folder, ["a.bin", "b.json"])
    (tables / "decoy.md5").write_text(f"{'0' * 32}  a.bin\n{'1' * 32}  b.json\n")
    (tables / "other.md5").write_text(f"{md5((folder / 'c.model').read_bytes())}  c.model.bin\n")
    monkeypatch.setenv("LLMKIT_CHECKSUMS", str(tables))
    report = run_verify(plan_verify([folder]))
    assert report.tables == ["first"] and report.ok
    assert any("decoy" in n for n in report.notes)


def test_verify_file_against_builtin_tables_by_basename(tmp_path, monkeypatch):
    tables = tmp_path / "tables"
    tables.mkdir()
    (tmp_path / "adapter_model.bin").write_bytes(b"lora")
    (tables / "lora.md5").write_text(f"{md5(b'lora')}  adapter_model.bin\n")
    (tables / "lora2.md5").write_text(f"{md5(b'other')}  sub/adapter_model.bin\n")
    monkeypatch.setenv("LLMKIT_CHECKSUMS", str(tables))
    assert verify_file(tmp_path / "adapter_model.bin") == [
        ("lora", md5(b"lora"), True),
        ("lora2", md5(b"other"), False),
    ]


def test_verify_errors_are_one_line_with_exit_2(tmp_path, run_cli):
    for args in (
        ["verify", tmp_path / "nope", "--table", "zhixi-13b"],
        ["verify", tmp_path, "--table", "no-such-table"],
        ["verify", "--tensors", tmp_path],
        ["checksum", tmp_path / "nope"],
    ):
        result = run_cli(*args)
        assert result.exit_code == 2, args
        assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1, result.stderr


def test_checksum_json_shape(tmp_path, run_cli):
    folder = make_folder(tmp_path / "m")
    data = run_cli("checksum", folder, "--json").json()
    assert data["algorithm"] == "md5"
    assert [(Path(f["path"]).name, f["digest"]) for f in data["files"]] == [
        (n, md5((folder / n).read_bytes())) for n in ("a.bin", "b.json", "c.model")
    ]


def test_checksum_skips_hidden_download_caches(tmp_path, run_cli):
    folder = make_folder(tmp_path / "m")
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "lock").write_text("x")
    lines = run_cli("checksum", folder).stdout.splitlines()
    assert len(lines) == 3 and not any(".cache" in x for x in lines)


def test_end_to_end_subprocess_checksum_then_verify(tmp_path):
    folder = make_folder(tmp_path / "m")
    env = {**os.environ, "LLMKIT_DEBUG": ""}
    table = subprocess.run(
        [*LLMKIT, "checksum", "m", "--jobs", "2"], cwd=tmp_path, capture_output=True, text=True, env=env, check=True
    ).stdout
    (tmp_path / "t.md5").write_text(table)
    ok = subprocess.run(
        [*LLMKIT, "verify", "m", "--table", "t.md5", "--json"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    (folder / "b.json").write_text("{}")
    bad = subprocess.run(
        [*LLMKIT, "verify", "m", "--table", "t.md5", "-q"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert bad.returncode == 1 and "m/b.json: FAILED" in bad.stdout and bad.stderr == ""


@pytest.mark.parametrize("layout", ["safetensors", "bin-sharded"])
def test_checksum_tensors_with_jobs_equals_sequential(tiny_factory, layout):
    from llmkit.verify import tensor_table

    model = tiny_factory(layout)
    want = [(n, hashlib.sha256(t.numpy().tobytes()).hexdigest()) for n, t in model.state.items()]
    for _ in range(5):  # sources are read on one thread, hashed on several: results must never mix up
        got = [(t.name, t.digest) for t in tensor_table(model.path, "sha256", jobs=4).tensors]
        assert sorted(got) == sorted(want)


def test_auto_table_checks_a_folder_against_two_disjoint_tables(tmp_path, monkeypatch):
    # Like a TechGPT folder holding both the .enc downloads and the decrypted files.
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"plain")
    (folder / "pytorch_model.bin.x.enc").write_bytes(b"cipher")
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "dec.md5").write_text(f"{md5(b'plain')}  ./pytorch_model.bin\n")
    (tables / "enc.md5").write_text(f"{md5(b'cipher')}  ./pytorch_model.bin.x.enc\n")
    monkeypatch.setenv("LLMKIT_CHECKSUMS", str(tables))
    report = verify_paths([folder])
    assert sorted(report.tables) == ["dec", "enc"] and report.ok
    assert sorted(f.status for f in report.files) == ["ok", "ok"]


def test_verify_explicit_files_reports_only_those_files(tmp_path, run_cli):
    folder = make_folder(tmp_path / "m")
    table = write_table(tmp_path / "t.md5", folder, ["a.bin", "b.json", "c.model"])
    data = run_cli("verify", folder / "a.bin", "--table", table, "--json").json()
    assert data["ok"] is True
    assert [(Path(f["path"]).name, f["status"]) for f in data["files"]] == [("a.bin", "ok")]
