"""The sharded writer: deterministic bytes, HF-standard shards, safe writes, bounded memory."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import llmkit.io.core.writer as sinks
from llmkit.errors import DiskSpaceError, InputError, OutputExistsError
from llmkit.io import ShardedWriter, TensorSpec, open_source, parse_size


def _specs(state: dict[str, torch.Tensor]) -> list[TensorSpec]:
    return [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in state.items()]


def _write(out: Path, state: dict[str, torch.Tensor], **kw) -> ShardedWriter:
    with ShardedWriter(out, _specs(state), **kw) as w:
        for k, v in state.items():
            w.write(k, v)
    return w


def test_single_shard_bytes_equal_safetensors_save_file(tmp_path):
    gen = torch.Generator().manual_seed(0)
    state = {
        "a.weight": torch.randn(7, 3, generator=gen),
        "b.weight": torch.randn(5, generator=gen),
        "c.bias": torch.randn(2, 2, generator=gen),
    }  # one dtype, sorted names: save_file's own order
    save_file(state, tmp_path / "ref.safetensors", metadata={"format": "pt"})
    _write(tmp_path / "out", state)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()


def test_golden_header_bytes(tmp_path):
    _write(tmp_path / "out", {"w": torch.tensor([1.0, 2.0], dtype=torch.float16)}, metadata={})
    body = (tmp_path / "out" / "model.safetensors").read_bytes()
    header = b'{"__metadata__":{},"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}'
    header += b" " * (-len(header) % 8)
    assert body == struct.pack("<Q", len(header)) + header + bytes.fromhex("003c0040")


def test_sharded_output_is_hf_standard_and_loads_in_transformers(tiny_factory, tmp_path):
    from transformers import LlamaForCausalLM

    model = tiny_factory("safetensors")
    out = tmp_path / "out"
    with open_source(model.path) as src, ShardedWriter(out, _specs(model.state), shard_size=60_000) as w:
        for name, t in src:
            w.write(name, t)
        w.copy_aux_files(src.folder)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    n = len(shards)
    assert n > 1 and shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in model.state.values())
    for shard in shards:  # each shard within the size unless it holds a single larger tensor
        tensors = load_file(out / shard)
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        assert size <= 60_000 or len(tensors) == 1
    loaded = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).state_dict()
    for k, v in model.state.items():
        assert torch.equal(loaded[k], v), k
    assert {"config.json", "tokenizer.model", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}


def test_bin_shards_load_with_torch_and_have_valid_zip_crcs(tiny_factory, tmp_path):
    model = tiny_factory("safetensors", dtype=torch.bfloat16)
    out = tmp_path / "out"
    _write(out, model.state, fmt="bin", shard_size=30_000)
    index = json.loads((out / "pytorch_model.bin.index.json").read_text())
    seen = {}
    for shard in sorted(set(index["weight_map"].values())):
        assert zipfile.ZipFile(out / shard).testzip() is None  # every CRC checks out
        seen.update(torch.load(out / shard, weights_only=True))  # not mmap: the plain reference path
    assert seen.keys() == model.state.keys()
    for k, v in model.state.items():
        assert seen[k].dtype == torch.bfloat16 and torch.equal(seen[k], v)


def test_single_bin_is_named_pytorch_model_bin(tmp_path):
    state = {"x": torch.arange(6, dtype=torch.int64).reshape(2, 3), "s": torch.tensor(2.5)}
    _write(tmp_path / "o", state, fmt="bin")
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["pytorch_model.bin"]
    back = torch.load(tmp_path / "o" / "pytorch_model.bin", weights_only=True)
    assert torch.equal(back["x"], state["x"]) and torch.equal(back["s"], state["s"])


def test_tensors_may_arrive_in_any_order(tmp_path):
    state = {f"t{i}": torch.full((10,), float(i)) for i in range(6)}
    with ShardedWriter(tmp_path / "o", _specs(state), shard_size=100) as w:
        for k in reversed(list(state)):
            w.write(k, state[k])
    with open_source(tmp_path / "o") as src:
        assert all(torch.equal(src.get(k), v) for k, v in state.items())


def test_failure_mid_write_leaves_nothing(tmp_path):
    state = {f"t{i}": torch.ones(100) for i in range(4)}
    out = tmp_path / "o"
    with pytest.raises(RuntimeError), ShardedWriter(out, _specs(state), shard_size=500) as w:
        w.write("t0", state["t0"])
        w.write("t1", state["t1"])
        raise RuntimeError("disk on fire")
    assert not out.exists()  # the folder this run created is removed too


def test_a_failure_keeps_a_folder_that_existed_before_and_removes_only_what_it_created(tmp_path):
    state = {"a": torch.ones(3)}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for out in (mine, tmp_path / "new" / "deeper"):
        with pytest.raises(RuntimeError), ShardedWriter(out, _specs(state)):
            raise RuntimeError("interrupted")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert not (tmp_path / "new").exists()


def test_unwritten_planned_tensor_is_an_error_and_leaves_nothing(tmp_path):
    state = {"a": torch.ones(3), "b": torch.ones(3)}
    out = tmp_path / "o"
    with pytest.raises(InputError, match="never written"), ShardedWriter(out, _specs(state)) as w:
        w.write("a", state["a"])
    assert not out.exists()  # the folder this run created is removed too


def test_wrong_shape_or_dtype_is_refused(tmp_path):
    with (
        pytest.raises(InputError, match="planned"),
        ShardedWriter(tmp_path / "o", [TensorSpec("a", torch.float16, (3,))]) as w,
    ):
        w.write("a", torch.ones(3))


def test_existing_output_is_refused_without_force(tmp_path):
    state = {"a": torch.ones(3)}
    _write(tmp_path / "o", state)
    with pytest.raises(OutputExistsError, match="--force"):
        ShardedWriter(tmp_path / "o", _specs(state))


def test_force_replaces_output_and_removes_stale_shards(tmp_path):
    big = {f"t{i}": torch.ones(100) for i in range(4)}
    _write(tmp_path / "o", big, shard_size=500)
    assert (tmp_path / "o" / "model.safetensors.index.json").exists()
    small = {"a": torch.zeros(2)}
    _write(tmp_path / "o", small, force=True)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["model.safetensors"]
    assert torch.equal(load_file(tmp_path / "o" / "model.safetensors")["a"], small["a"])


def test_disk_space_is_checked_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(sinks, "free_bytes", lambda folder: 1000)
    with pytest.raises(DiskSpaceError, match="free space"):
        ShardedWriter(tmp_path / "o", [TensorSpec("a", torch.float32, (1000, 1000))])
    assert not (tmp_path / "o").exists()


def test_config_gets_new_dtype_and_vocab(tiny_factory, tmp_path):
    model = tiny_factory("safetensors")
    state = {"a": torch.ones(2)}
    with ShardedWriter(tmp_path / "o", _specs(state)) as w:
        w.write("a", state["a"])
        w.copy_aux_files(model.path, dtype=torch.float16, vocab_size=101)
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    orig = json.loads((model.path / "config.json").read_text())
    dtype_keys = [k for k in ("torch_dtype", "dtype") if k in orig] or ["torch_dtype"]
    assert all(cfg[k] == "float16" for k in dtype_keys) and cfg["vocab_size"] == 101
    assert cfg["hidden_size"] == orig["hidden_size"]
    assert (tmp_path / "o" / "tokenizer.model").read_bytes() == (model.path / "tokenizer.model").read_bytes()


@pytest.mark.parametrize(
    "text,value", [("5GB", 5_000_000_000), ("500MB", 500_000_000), ("2GiB", 2 * 2**30), ("1000", 1000), ("1.5kb", 1500)]
)
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_parse_size_rejects_nonsense():
    with pytest.raises(InputError, match="cannot parse size"):
        parse_size("lots")


def test_read_write_peak_memory_stays_near_the_largest_tensor(tmp_path):
    """Re-shard a 256 MB model of 32 MB tensors; the RSS growth must stay well under the model size."""
    script = textwrap.dedent(f"""
        import resource, torch
        from pathlib import Path
        from safetensors.torch import save_file
        from llmkit.io import ShardedWriter, TensorSpec, open_source
        src_dir = Path({str(tmp_path)!r}) / "src"; src_dir.mkdir()
        for i in range(8):
            save_file({{f"t{{i}}": torch.full((8 * 2**20,), float(i))}}, src_dir / f"part{{i}}.safetensors")
        import json
        json.dump({{"metadata": {{}}, "weight_map": {{f"t{{i}}": f"part{{i}}.safetensors" for i in range(8)}}}},
                  open(src_dir / "model.safetensors.index.json", "w"))
        src = open_source(src_dir)
        specs = [TensorSpec(i.name, i.dtype, i.shape) for i in src.infos()]
        # Warm up allocator and code paths with one tensor, then measure the whole copy.
        src.get("t0")
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with ShardedWriter(Path({str(tmp_path)!r}) / "out", specs, shard_size=100_000_000) as w:
            for name, t in src:
                w.write(name, t)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((peak - base) * 1024)
    """)
    grown = int(
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout.split()[-1]
    )
    largest = 32 * 2**20
    assert grown < 3 * largest, f"RSS grew by {grown / 2**20:.0f} MiB for a 256 MiB model"


def test_every_registered_sink_satisfies_the_sink_protocol(tmp_path):
    """The runner uses a sink only through ``Sink``: mypy checks the classes, this the registry's entries."""
    from llmkit.io.core.formats import load_builtin_formats
    from llmkit.io.core.sink import SINKS, Sink, open_sink

    load_builtin_formats()
    assert sorted(SINKS) == ["bin", "ckpt", "gguf", "meta-pth", "safetensors"]
    options = {"meta-pth": {"config": {"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1}}}
    specs = [TensorSpec("model.norm.weight", torch.float32, (8,))]
    for fmt in SINKS:
        sink = open_sink(fmt, tmp_path / fmt, specs, **options.get(fmt, {}))
        assert isinstance(sink, Sink), fmt
        assert sink.files, fmt
    assert list(tmp_path.iterdir()) == []  # opening a sink checks the destination and creates nothing
