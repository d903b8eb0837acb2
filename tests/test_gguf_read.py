"""Reading GGUF: the ``gguf`` source, inspect / checksum / verify of ``.gguf`` files, and ``from-gguf``.

The GGUF files are written two ways: by the ``gguf`` package's own ``GGUFWriter`` here (names from
``gguf.get_tensor_name_map``, q/k rows by ``convert_hf_to_gguf.py``'s ``permute`` written out below, types by
``gguf.quants``), independent of llmkit's sink; and by ``llmkit to-gguf``. Expected values come from the
transformers model the files were made from and from ``gguf.quants``, never from llmkit's reader.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

from llmkit.errors import InputError
from llmkit.io import open_source
from llmkit.tiny import write_tokenizer

T = gguf.GGMLQuantizationType
OUTTYPES = {"f32": (T.F32, 0), "f16": (T.F16, 1), "bf16": (T.BF16, 32), "q8_0": (T.Q8_0, 7), "q4_k": (T.Q4_K, 15)}
HEADS, KV_HEADS = 4, 2


# ---- the reference: convert_hf_to_gguf.py's row permutation and type rules, written out ----
def permute(w: np.ndarray, heads: int) -> np.ndarray:
    """``LlamaModel.permute`` of convert_hf_to_gguf.py: rotate-half halves -> interleaved pairs, per head."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def heads_of(hf: str) -> int | None:
    return HEADS if hf.endswith("q_proj.weight") else KV_HEADS if hf.endswith("k_proj.weight") else None


def ggml_type(hf: str, shape: tuple[int, ...], outtype: str) -> T:
    """F32 for 1-D tensors; the outtype for 2-D ones, F16 when its blocks do not fit a row."""
    if len(shape) == 1:
        return T.F32
    wanted = OUTTYPES[outtype][0]
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    return wanted if shape[-1] % block == 0 else T.F16


def stored_bytes(hf: str, t: torch.Tensor, ttype: T) -> np.ndarray:
    """What the file holds for ``t``: its rows permuted, then quantized (gguf.quants) as ``ttype``."""
    arr = t.float().numpy()
    if heads_of(hf):
        arr = permute(arr, heads_of(hf))
    if ttype == T.Q4_K:  # gguf.quants cannot make it: zero blocks (all values 0.0)
        size = gguf.GGML_QUANT_SIZES[T.Q4_K]
        return np.zeros((arr.shape[0], arr.shape[1] // size[0] * size[1]), np.uint8)
    return gguf.quants.quantize(arr, ttype)


def expected(hf: str, t: torch.Tensor, ttype: T) -> torch.Tensor:
    """What a reader of the file should return: dequantized (quantized types), rows back to rotate-half."""
    q = stored_bytes(hf, t, ttype)
    if ttype == T.F32:
        arr = q.astype(np.float32)
    elif ttype == T.F16:
        arr = q.astype(np.float16)
    elif ttype == T.BF16:
        arr = q.view(np.int16)
    else:
        arr = gguf.quants.dequantize(q, ttype)
    if heads_of(hf):
        arr = unpermute(arr, heads_of(hf))
    out = torch.from_numpy(np.ascontiguousarray(arr))
    return out.view(torch.bfloat16) if ttype == T.BF16 else out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def write_gguf(path: Path, state: dict, cfg: LlamaConfig, outtype: str, **kw) -> Path:
    """A LLaMA GGUF by ``gguf.GGUFWriter`` (``kw``: ``arch``, ``split_max_tensors``, ``extra`` tensors, ``rope``)."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    w = gguf.GGUFWriter(path, kw.get("arch", "llama"), split_max_tensors=kw.get("split_max_tensors", 0))
    w.add_name("Tiny GQA")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if kw.get("rope"):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(kw["rope"])
    w.add_file_type(OUTTYPES[outtype][1])
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}".encode() for i in range(cfg.vocab_size)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    for hf, t in state.items():
        ttype = ggml_type(hf, tuple(t.shape), outtype)
        data = stored_bytes(hf, t, ttype)
        raw = ttype if data.dtype == np.uint8 else None
        w.add_tensor(names.get_name(hf, try_suffixes=(".weight",)), data, raw_dtype=raw)
    for name, data in kw.get("extra", {}).items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gqa_model(folder: Path, hidden: int = 64, intermediate: int = 176, layers: int = 2):
    """A tiny GQA LLaMA (4 heads, 2 kv heads, linear rope scaling 2.0), fp32, saved by transformers."""
    cfg = LlamaConfig(
        vocab_size=100,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        rope_theta=500000.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(3)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return folder, cfg, {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def gqa(tmp_path_factory):
    return gqa_model(tmp_path_factory.mktemp("gqa"))


@pytest.fixture(scope="session")
def written(gqa, tmp_path_factory):
    """``outtype -> path`` of the GQA model written by GGUFWriter as f32, f16, bf16 and q8_0."""
    _, cfg, state = gqa
    root = tmp_path_factory.mktemp("written")
    return {o: write_gguf(root / f"gqa-{o}.gguf", state, cfg, o, rope=2.0) for o in OUTTYPES if o != "q4_k"}


# ---- the source ----
@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0"])
def test_a_file_the_gguf_writer_wrote_reads_as_the_hf_model(gqa, written, outtype):
    _, _, state = gqa
    with open_source(written[outtype]) as src:
        assert src.layout == "gguf" and set(src.keys()) == set(state)
        for name, t in state.items():
            ttype = ggml_type(name, tuple(t.shape), outtype)
            want = expected(name, t, ttype)
            got = src.get(name)
            assert tuple(src.info(name).shape) == tuple(t.shape) == tuple(got.shape)
            assert got.dtype == want.dtype == src.info(name).dtype, name
            assert same_bits(got, want), name
            assert src.stored_type(name) == (None if ttype in (T.F32, T.F16, T.BF16) else ttype.name)
            if ttype in (T.F32, T.F16, T.BF16):  # the rows un-permuted: the HF tensor itself, in the file's type
                assert same_bits(got, t.to(got.dtype)), name


def test_the_config_derived_from_the_metadata_is_the_models(gqa, written):
    _, cfg, _ = gqa
    with open_source(written["f16"]) as src:
        derived = LlamaConfig(**src.config())
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "rms_norm_eps",
        "max_position_embeddings",
        "vocab_size",
        "head_dim",
        "bos_token_id",
        "eos_token_id",
        "tie_word_embeddings",
        "rope_parameters",
    ):
        assert getattr(derived, key) == getattr(cfg, key), key
    assert derived.dtype == torch.float16


def test_the_reader_keeps_no_mapping_of_the_file(written):
    with open_source(written["q8_0"]) as src:
        src.get("model.embed_tokens.weight")
        maps = Path("/proc/self/maps").read_text()
    assert str(written["q8_0"].resolve()) not in maps


def test_a_split_set_reads_as_one_model_from_its_first_part_any_part_or_its_folder(gqa, tmp_path):
    _, cfg, state = gqa
    single = write_gguf(tmp_path / "one.gguf", state, cfg, "f16")
    (tmp_path / "parts").mkdir()
    write_gguf(tmp_path / "parts" / "gqa.gguf", state, cfg, "f16", split_max_tensors=8)
    parts = sorted((tmp_path / "parts").iterdir())
    assert [p.name for p in parts] == [f"gqa-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    with open_source(single) as one:
        reference = {n: one.get(n) for n in one.keys()}
    for path in (parts[0], parts[2], tmp_path / "parts"):
        with open_source(path) as src:
            assert len(src.files) == 3 and set(src.keys()) == set(reference)
            assert all(torch.equal(src.get(n), t) for n, t in reference.items())
    parts[1].unlink()
    with pytest.raises(InputError, match="part 2 of 3 of this split GGUF is missing") as e:
        open_source(parts[0])
    assert Path(e.value.path).name == "gqa-00002-of-00003.gguf"


def test_damaged_and_foreign_gguf_files_are_one_error_each(gqa, written, tmp_path, run_cli):
    _, cfg, state = gqa
    data = written["f16"].read_bytes()
    cases = {
        "truncated.gguf": (data[: len(data) - 1000], "truncated GGUF file: tensor"),
        "header.gguf": (data[:2000], "damaged or truncated GGUF file"),
        "magic.gguf": (b"GGML" + data[4:], "not a GGUF file"),
    }
    for name, (raw, _) in cases.items():
        (tmp_path / name).write_bytes(raw)
    other = write_gguf(
        tmp_path / "gpt2.gguf", {"model.norm.weight": state["model.norm.weight"]}, cfg, "f32", arch="gpt2"
    )
    cases["gpt2.gguf"] = (None, "'gpt2' model, not a LLaMA")
    for name, (_, message) in cases.items():
        for args in (("inspect", tmp_path / name), ("from-gguf", tmp_path / name, "-o", tmp_path / "out")):
            r = run_cli(*args)
            assert r.exit_code == 2, (name, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (name, lines)
    assert other.exists() and not (tmp_path / "out").exists()


# ---- inspect, checksum --tensors, verify --tensors ----
def test_inspect_shows_the_files_gguf_facts(written, run_cli):
    path = written["q8_0"]
    reader = gguf.GGUFReader(path)
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    r = run_cli("inspect", path, "--json")
    assert r.exit_code == 0, r.stderr
    got = r.json()
    assert got["layout"] == "gguf" and got["dtypes"] == types
    assert got["total_bytes"] == sum(int(t.n_bytes) for t in reader.tensors)
    g = got["gguf"]
    assert g["architecture"] == "llama" and g["name"] == "Tiny GQA" and g["version"] == 3
    assert (g["file_type"], g["file_type_name"], g["outtype"]) == (7, "MOSTLY_Q8_0", "q8_0")
    assert g["tensor_types"] == types and g["quantized"] == {"Q8_0": types["Q8_0"]}
    assert (g["vocab_size"], g["context_length"], g["parts"]) == (100, 128, 1)
    rows = {t["name"]: t for t in got["tensors"]}
    assert rows["model.layers.0.self_attn.q_proj.weight"]["dtype"] == "Q8_0"
    assert rows["model.layers.0.mlp.down_proj.weight"]["dtype"] == "F16"  # 176-value rows: no 32-blocks
    text = run_cli("inspect", path, "--no-tensors").stdout
    for row in (
        "layout          gguf",
        "model name      Tiny GQA",
        "MOSTLY_Q8_0 (7; to-gguf --outtype q8_0)",
        f"quantized       {types['Q8_0']} tensors (Q8_0)",
        "context length  128",
        "vocab size      100",
    ):
        assert row in text, text


def test_checksum_tensors_of_a_gguf_hashes_what_the_reader_gives(gqa, written, run_cli):
    _, _, state = gqa
    r = run_cli("checksum", "--tensors", written["q8_0"], "--json")
    assert r.exit_code == 0, r.stderr
    table = r.json()
    lines = {t["name"]: t for t in table["tensors"]}
    assert set(lines) == set(state)
    for name, t in state.items():
        ttype = ggml_type(name, tuple(t.shape), "q8_0")
        want = expected(name, t, ttype)
        assert lines[name]["digest"] == hashlib.sha256(want.numpy().tobytes()).hexdigest(), name
        assert lines[name]["dtype"] == {T.F32: "F32", T.F16: "F16"}.get(ttype, ttype.name)
    assert table["quantized"] == {n: "Q8_0" for n, line in lines.items() if line["dtype"] == "Q8_0"}
    text = run_cli("checksum", "--tensors", written["q8_0"]).stdout
    assert "stored quantized" in text.splitlines()[2] and " model.embed_tokens.weight Q8_0 [100,64]" in text


def test_verify_tensors_of_a_quantized_gguf_and_its_source_reports_it_as_converted(gqa, written, run_cli):
    folder, _, state = gqa
    r = run_cli("verify", "--tensors", written["q8_0"], folder, "--json")
    assert r.exit_code == 0, r.stdout
    got = r.json()
    want = {n: ggml_type(n, tuple(t.shape), "q8_0").name for n, t in state.items()}
    assert got["ok"] is True and got["identical"] is False and got["checks"][0]["status"] == "converted"
    # every tensor stored in another type than the fp32 source: Q8_0, and F16 where the blocks do not fit
    assert got["converted"] == {n: t for n, t in want.items() if t != "F32"} and got["differing"] == []
    text = run_cli("verify", "--tensors", folder, written["q8_0"]).stdout
    assert "tensors match as converted, not identical" in text and "dequantized values" in text


def test_verify_tensors_of_a_gguf_against_another_model_or_an_unmakeable_type_fails(gqa, written, tmp_path, run_cli):
    wide, cfg, state = gqa_model(tmp_path / "wide", hidden=256, intermediate=512, layers=1)  # rows of 256-blocks
    q4k = write_gguf(tmp_path / "q4k.gguf", state, cfg, "q4_k")
    r = run_cli("verify", "--tensors", q4k, wide, "--json")
    got = r.json()
    assert r.exit_code == 1 and got["ok"] is False and got["checks"][0]["status"] == "unverified"
    assert set(got["unchecked"]) == {n for n, t in state.items() if t.dim() == 2} and got["differing"] == []
    assert all("Q4_K" in why for why in got["unchecked"].values())
    assert "NOT VERIFIED" in run_cli("verify", "--tensors", q4k, wide).stdout
    folder = gqa[0]
    # the q8_0 file against a model with other values: every weight differs from that model converted
    with open_source(written["q8_0"]) as src:
        shapes = {n: tuple(src.info(n).shape) for n in src.keys()}
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    st = load_file(other / "model.safetensors")
    save_file({k: v + 0.01 for k, v in st.items()}, other / "model.safetensors", metadata={"format": "pt"})
    r = run_cli("verify", "--tensors", written["q8_0"], other, "--json")
    got = r.json()
    assert r.exit_code == 1 and set(got["differing"]) == set(shapes)
    assert "converted to Q8_0 by gguf.quants" in got["reasons"]["model.embed_tokens.weight"]


def test_verify_tensors_of_two_ggufs_compares_them_bit_for_bit(gqa, tmp_path, run_cli):
    _, cfg, state = gqa
    one = write_gguf(tmp_path / "one.gguf", state, cfg, "f16")
    (tmp_path / "parts").mkdir()
    write_gguf(tmp_path / "parts" / "x.gguf", state, cfg, "f16", split_max_tensors=10)
    r = run_cli("verify", "--tensors", one, tmp_path / "parts", "--json")
    assert r.exit_code == 0 and r.json()["identical"] is True and r.json()["compared"] == len(state)


# ---- llmkit to-gguf -> from-gguf ----
def _logits(folder: Path) -> torch.Tensor:
    model = LlamaForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 17, 42, 7, 2]])).logits


@pytest.mark.parametrize(
    ("dtype", "outtype", "flag"),
    [(torch.float32, "f32", "fp32"), (torch.float16, "f16", "fp16"), (torch.bfloat16, "bf16", "bf16")],
)
def test_to_gguf_then_from_gguf_gives_the_model_back_bit_for_bit(tiny_factory, tmp_path, run_cli, dtype, outtype, flag):
    tiny = tiny_factory("safetensors", seed=2, dtype=dtype)
    gguf_file = tmp_path / f"m-{outtype}.gguf"
    assert run_cli("to-gguf", tiny.path, "-o", gguf_file, "--outtype", outtype).exit_code == 0
    keep = run_cli("from-gguf", gguf_file, "-o", tmp_path / "keep", "--json")
    assert keep.exit_code == 0, keep.stderr
    back = load_file(tmp_path / "keep" / "model.safetensors")
    assert set(back) == set(tiny.state)
    for name, t in tiny.state.items():  # 2-D weights bit for bit, 1-D norms as llama.cpp keeps them: f32
        assert torch.equal(back[name], t if t.dim() == 2 else t.float()), name
    exact = run_cli("from-gguf", gguf_file, "-o", tmp_path / "exact", "--dtype", flag, "--tokenizer", tiny.path)
    assert exact.exit_code == 0, exact.stderr
    back = load_file(tmp_path / "exact" / "model.safetensors")
    assert set(back) == set(tiny.state)
    assert all(back[n].dtype == t.dtype and torch.equal(back[n], t) for n, t in tiny.state.items())
    assert torch.equal(_logits(tmp_path / "exact"), _logits(tiny.path))
    cfg, src_cfg = LlamaConfig.from_pretrained(tmp_path / "exact"), LlamaConfig.from_pretrained(tiny.path)
    for key in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_key_value_heads",
        "rms_norm_eps",
        "max_position_embeddings",
        "vocab_size",
        "rope_parameters",
        "dtype",
        "bos_token_id",
        "eos_token_id",
    ):
        assert getattr(cfg, key) == getattr(src_cfg, key), key


def test_from_gguf_of_llmkits_q8_0_file_refuses_without_dequantize(tiny_factory, tmp_path, run_cli):
    tiny = tiny_factory("safetensors", seed=4, dtype=torch.float16)
    q8 = tmp_path / "m.gguf"
    assert run_cli("to-gguf", tiny.path, "-o", q8, "--outtype", "q8_0").exit_code == 0
    r = run_cli("from-gguf", q8, "-o", tmp_path / "out")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "stored quantized" in lines[0] and "--dequantize" in lines[0]
    r = run_cli("from-gguf", q8, "-o", tmp_path / "out", "--dequantize", "--json")
    assert r.exit_code == 0, r.stderr
    got = r.json()
    back = load_file(tmp_path / "out" / "model.safetensors")
    quantized = {n for n, t in tiny.state.items() if ggml_type(n, tuple(t.shape), "q8_0") == T.Q8_0}
    assert got["dequantized"] == {"Q8_0": len(quantized)} and got["tokenizer_from"] is None
    for name, t in tiny.state.items():
        want = expected(name, t, ggml_type(name, tuple(t.shape), "q8_0"))
        assert back[name].dtype == want.dtype and torch.equal(back[name], want), name
    assert "written as float32" in r.stderr and "no tokenizer.model" in r.stderr
    assert not (tmp_path / "out" / "tokenizer.model").exists()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "float32"


def test_from_gguf_leaves_out_tensors_with_no_hf_name_and_checks_the_tokenizer(gqa, tmp_path, run_cli):
    folder, cfg, state = gqa
    path = write_gguf(tmp_path / "r.gguf", state, cfg, "f32", extra={"rope_freqs.weight": np.ones(8, np.float32)})
    r = run_cli("from-gguf", path, "-o", tmp_path / "out", "--tokenizer", folder, "--json")
    assert r.exit_code == 0, r.stderr
    got = r.json()
    assert got["left_out"] == ["rope_freqs.weight"] and "rope_freqs.weight" in r.stderr
    tok = next(c for c in got["checks"] if c["name"] == "tokenizer")
    assert tok["status"] == "mismatch"  # the writer's vocabulary is t0..t99, not the SentencePiece pieces
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (folder / "tokenizer.model").read_bytes()
    assert set(load_file(tmp_path / "out" / "model.safetensors")) == set(state)


def test_a_gguf_without_output_weight_is_a_model_with_tied_embeddings(gqa, tmp_path, run_cli):
    _, cfg, state = gqa
    tied = {k: v for k, v in state.items() if k != "lm_head.weight"}
    path = write_gguf(tmp_path / "tied.gguf", tied, cfg, "f32")
    assert run_cli("from-gguf", path, "-o", tmp_path / "out").exit_code == 0
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
    model = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.equal(model.lm_head.weight, state["model.embed_tokens.weight"])
