"""The peers llmkit's GGUF output is tested against (tests/test_gguf_peers.py): llama.cpp's own converter,
``convert_hf_to_gguf.py``, from the sdist of the installed llama-cpp-python (which vendors llama.cpp); llama.cpp
itself, through llama-cpp-python in a subprocess (``tests/llama_cpp_probe.py``); SentencePiece tokenizers of
LLaMA's and Chinese-LLaMA's sizes built as a ``ModelProto``; tiny models with those vocabularies; and a
comparison of two files through the ``gguf`` package's ``GGUFReader``.

Imported by module name (``from gguf_peers import ...``), as ``common`` is.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
import torch

from llmkit.tiny import TINY_HEADS, TINY_HIDDEN, TINY_INTERMEDIATE, TINY_LAYERS

PROBE = Path(__file__).parent / "llama_cpp_probe.py"
SCRIPT = "convert_hf_to_gguf.py"

# ------------------------------------------------------------------ the converter


def cache_root() -> Path:
    """Where test downloads are kept between runs: ``$LLMKIT_TEST_CACHE``, else ``~/.cache/llmkit-tests``."""
    return Path(os.environ.get("LLMKIT_TEST_CACHE") or Path.home() / ".cache" / "llmkit-tests")


def llama_cpp_version() -> str:
    """The installed llama-cpp-python's version (``llama_cpp.__version__``, read without loading the library)."""
    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        pytest.fail("llama-cpp-python is not installed: pip install -e '.[test]' (its test extra)", pytrace=False)


def converter_dir() -> Path:
    """The folder holding ``convert_hf_to_gguf.py``, its ``conversion/`` package and ``gguf-py/``, as the
    installed llama-cpp-python's sdist vendors them under ``vendor/llama.cpp/``.

    Downloaded once with pip (the package registry is all CI needs) into
    ``cache_root()/llama-cpp-python-VER/llama.cpp`` and reused: extracted into a temporary folder and renamed
    into place (a folder is there complete or not at all), under a file lock (two pytest-xdist workers, or
    two test runs, download it once). A failed download fails the tests that need it.
    """
    from filelock import FileLock

    ver = llama_cpp_version()
    cache = cache_root() / f"llama-cpp-python-{ver}"
    final = cache / "llama.cpp"
    if (final / SCRIPT).is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / ".lock")):
        if (final / SCRIPT).is_file():  # the other worker made it while this one waited
            return final
        work = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
        try:
            sdist = _download_sdist(ver, work / "sdist")
            _extract_converter(sdist, work / "llama.cpp")
            (work / "llama.cpp").rename(final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def _download_sdist(ver: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={ver}"]
    cmd += ["--no-binary", ":all:", "--no-deps", "--disable-pip-version-check", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    found = sorted(dest.glob("*.tar.gz")) if dest.is_dir() else []
    if proc.returncode != 0 or len(found) != 1:
        pytest.fail(
            f"could not download the llama-cpp-python {ver} sdist, whose vendored llama.cpp convert_hf_to_gguf.py "
            f"is the reference of the GGUF tests: `{' '.join(cmd)}` exited {proc.returncode}\n"
            f"{proc.stderr[-3000:]}",
            pytrace=False,
        )
    return found[0]


_VENDORED = re.compile(r"^[^/]+/vendor/llama\.cpp/(convert_hf_to_gguf\.py|(?:conversion|gguf-py)/.+)$")


def _extract_converter(sdist: Path, dest: Path) -> None:
    """Only ``vendor/llama.cpp/{convert_hf_to_gguf.py,conversion/**,gguf-py/**}`` of ``sdist``, into ``dest``."""
    dest.mkdir()
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            m = _VENDORED.match(member.name)
            if not m or not member.isfile():
                continue
            rel = Path(m.group(1))
            if rel.is_absolute() or ".." in rel.parts:
                continue
            data = tar.extractfile(member)
            assert data is not None
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data.read())
    if not (dest / SCRIPT).is_file() or not (dest / "gguf-py" / "gguf" / "__init__.py").is_file():
        pytest.fail(f"{sdist.name} has no vendor/llama.cpp/{SCRIPT} and gguf-py/", pytrace=False)


# Runs the converter once per job, as `python convert_hf_to_gguf.py MODEL --outtype T --outfile F` does (the
# script's folder first on sys.path, so its `conversion` package and its own gguf-py copy are the ones
# imported), in one interpreter: its imports take seconds, one conversion of a tiny model a fraction.
_DRIVER = r"""
import json, os, runpy, sys
script, jobs = sys.argv[1], json.loads(sys.stdin.read())
sys.path.insert(0, os.path.dirname(script))
for i, (model, outtype, outfile) in enumerate(jobs):
    print(f"=== job {i}: {model} --outtype {outtype}", file=sys.stderr, flush=True)
    sys.argv = [script, model, "--outtype", outtype, "--outfile", outfile]
    runpy.run_path(script, run_name="__main__")
print(json.dumps({"gguf": sys.modules["gguf"].__file__}))
"""


def run_converters(jobs: Sequence[tuple[Path, str, Path]]) -> str:
    """Convert each ``(model_dir, outtype, outfile)`` with llama.cpp's converter (the venv's python, one
    subprocess); returns the file of the ``gguf`` package it used (its own ``gguf-py`` copy)."""
    script = converter_dir() / SCRIPT
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    env["HF_HUB_OFFLINE"] = "1"
    payload = json.dumps([[str(m), t, str(o)] for m, t, o in jobs])
    cmd = [sys.executable, "-c", _DRIVER, str(script)]
    proc = subprocess.run(cmd, input=payload, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        last = proc.stderr.rsplit("=== job", 1)[-1]
        raise RuntimeError(f"{SCRIPT} failed (exit {proc.returncode}) on job{last[-4000:]}")
    for _, _, out in jobs:
        assert Path(out).is_file(), out
    return json.loads(proc.stdout.strip().splitlines()[-1])["gguf"]


def run_converter(model_dir: Path, outtype: str, outfile: Path) -> Path:
    """``convert_hf_to_gguf.py MODEL_DIR --outtype OUTTYPE --outfile OUTFILE`` in a subprocess; ``outfile``."""
    run_converters([(model_dir, outtype, outfile)])
    return outfile


# ------------------------------------------------------------------ llama.cpp


def llama_cpp_run(jobs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Load each job's ``model`` (.gguf) with llama.cpp in one subprocess (``tests/llama_cpp_probe.py``).

    Job keys: ``model``; ``tokens`` (ids to evaluate; their logits, one row per position, are saved to the
    ``.npy`` file ``logits``); ``texts`` (each tokenized with ``add_bos=True``); ``f32_cache`` (a float32 KV
    cache instead of llama.cpp's default f16 one). Per job: ``tokens`` (one list per text), ``n_vocab`` and
    ``metadata`` (the key-values as llama.cpp read them, as strings).
    """
    proc = subprocess.run(
        [sys.executable, str(PROBE)], input=json.dumps(list(jobs)), capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"llama.cpp probe failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


# ------------------------------------------------------------------ SentencePiece tokenizers

LLAMA_VOCAB, CHINESE_LLAMA_VOCAB = 32000, 49953
# Sentences the tokenizer tests encode; every character of CHINESE is a piece of Chinese-LLaMA's vocabulary.
CHINESE = "中文大语言模型的知识抽取与关系图谱构建，是自然语言处理的重要研究方向。"
# OUT_OF_VOCAB is in no vocabulary: SentencePiece and llama.cpp spell it as its UTF-8 bytes (byte fallback).
OUT_OF_VOCAB = "龘🦙"
MIXED = f"用 LLaMA 模型 merge 了 lora weights，{OUT_OF_VOCAB} knowledge  graph 2023 年的数据！"
_ENGLISH = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "with",
    "on",
    "model",
    "models",
    "merge",
    "merged",
    "weights",
    "weight",
    "lora",
    "llama",
    "data",
    "language",
    "large",
    "knowledge",
    "graph",
    "extraction",
    "recover",
    "file",
    "run",
    "chinese",
    "alpaca",
    "token",
    "tokens",
    "vocabulary",
    "byte",
    "bytes",
    "text",
]
_CJK_WORDS = (
    "中文",
    "模型",
    "语言",
    "知识",
    "抽取",
    "关系",
    "图谱",
    "构建",
    "自然",
    "处理",
    "重要",
    "研究",
    "方向",
    "数据",
)
_CJK = range(0x4E00, 0x9FA6)  # CJK Unified Ideographs (GB2312's characters are all in it)


def _pseudo_words(rng: random.Random) -> list[str]:
    """English words, then made-up ones (syllables), each as its prefixes: every piece BPE can reach."""
    words = list(_ENGLISH) + [w.capitalize() for w in _ENGLISH[:10]] + ["LLaMA", "GGUF"]
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    while len(words) < 40000:
        word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 3)))
        words.append(word + (rng.choice(consonants) if rng.random() < 0.5 else ""))
    return words


def _llama_pieces(rng: random.Random) -> tuple[list[str], set[str]]:
    """LLaMA's normal pieces after the 259 specials and bytes: words (with and without ``▁``), then single
    characters (ASCII and ~700 CJK ones, as LLaMA's vocabulary has). Returns (pieces, its CJK characters)."""
    common = [c for c in CHINESE if "\u4e00" <= c <= "\u9fa5"][:20]  # in order: no set's hash order here
    cjk = sorted(set(rng.sample([chr(c) for c in _CJK], 680)) | set(common) - set(OUT_OF_VOCAB))
    singles = ["▁", *(chr(c) for c in range(33, 127)), *cjk]
    pieces: dict[str, None] = {}
    want = LLAMA_VOCAB - 259 - len(singles)
    for word in _pseudo_words(rng):
        for end in range(1, len(word) + 1):
            for piece in ("▁" + word[:end], word[:end]):
                if len(pieces) < want and len(piece) > 1:
                    pieces.setdefault(piece)
        if len(pieces) >= want:
            break
    return [*pieces, *singles], set(cjk)


def _chinese_pieces(rng: random.Random, llama_cjk: set[str], count: int) -> list[str]:
    """What Chinese-LLaMA appends to LLaMA's vocabulary: 2-character words (some with ``▁``) and the CJK
    characters LLaMA lacks (CHINESE's among them), ``count`` pieces."""
    new_chars = sorted((set(rng.sample([chr(c) for c in _CJK], 6500)) | set(CHINESE)) - llama_cjk - set(OUT_OF_VOCAB))
    chars = sorted(llama_cjk | set(new_chars))
    words: dict[str, None] = {}
    for w in _CJK_WORDS:
        words.setdefault(w)
        words.setdefault("▁" + w[0])
    while len(words) < count - len(new_chars):
        w = rng.choice(chars) + rng.choice(chars)
        words.setdefault(w)
        if rng.random() < 0.1 and len(words) < count - len(new_chars):
            words.setdefault("▁" + w[0])
    return [*words, *new_chars]


def sentencepiece_model(size: int) -> bytes:
    """A LLaMA-like SentencePiece BPE model of ``size`` pieces (32000: LLaMA's shape; 49953: Chinese-LLaMA's,
    LLaMA's pieces then the Chinese ones): byte fallback, ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, the 256 byte
    pieces ``<0x00>``..``<0xFF>`` at 3..258, LLaMA's normalizer (identity, dummy prefix, spaces kept), then
    normal pieces with strictly decreasing scores (-1 per id, no ties). Deterministic."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    rng = random.Random(20230401)
    normal, llama_cjk = _llama_pieces(rng)
    if size > LLAMA_VOCAB:
        normal += _chinese_pieces(rng, llama_cjk, size - LLAMA_VOCAB)
    assert len(normal) + 259 == size and len(set(normal)) == len(normal), (len(normal), size)
    m = pb.ModelProto()
    spec = m.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback = pb.TrainerSpec.BPE, size, True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    spec.split_digits = True
    norm = m.normalizer_spec
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces, norm.escape_whitespaces = (
        "identity",
        True,
        False,
        True,
    )
    kinds = pb.ModelProto.SentencePiece
    for text, kind in (("<unk>", kinds.UNKNOWN), ("<s>", kinds.CONTROL), ("</s>", kinds.CONTROL)):
        m.pieces.add(piece=text, score=0.0, type=kind)
    for b in range(256):
        m.pieces.add(piece=f"<0x{b:02X}>", score=0.0, type=kinds.BYTE)
    for i, text in enumerate(normal):
        m.pieces.add(piece=text, score=-float(i), type=kinds.NORMAL)
    return m.SerializeToString()


_SP_CACHE: dict[int, bytes] = {}


def write_sentencepiece_tokenizer(folder: Path, size: int, *, pad_token: bool = False) -> int:
    """``tokenizer.model`` of :func:`sentencepiece_model` (``size`` pieces) and the LLaMA tokenizer files
    llmkit.tiny writes; ``pad_token``: Chinese-Alpaca's ``[PAD]`` at id ``size``, added through
    ``added_tokens.json`` and ``tokenizer_config.json``'s ``added_tokens_decoder``. Returns ``len(tokenizer)``."""
    if size not in _SP_CACHE:
        _SP_CACHE[size] = sentencepiece_model(size)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(_SP_CACHE[size])
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config: dict[str, Any] = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "model_max_length": 1000000000000000019884624838656,
        **special,
    }
    if pad_token:
        special["pad_token"] = config["pad_token"] = "[PAD]"
        flags = {"lstrip": False, "rstrip": False, "normalized": False, "single_word": False}
        config["added_tokens_decoder"] = {str(size): {"content": "[PAD]", "special": True, **flags}}
        (folder / "added_tokens.json").write_text(json.dumps({"[PAD]": size}) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return size + pad_token


# ------------------------------------------------------------------ tiny models


def save_model(
    folder: Path,
    vocab_size: int,
    *,
    intermediate: int = TINY_INTERMEDIATE,
    kv_heads: int = TINY_HEADS,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    rope_parameters: dict | None = None,
    max_positions: int = 128,
) -> Path:
    """A random tiny ``LlamaForCausalLM`` as llmkit.tiny makes them (hidden 64, 2 layers, 4 heads; norms
    perturbed) saved by transformers' ``save_pretrained``; ``kv_heads`` < 4: grouped-query attention;
    ``rope_parameters``: rope scaling as transformers 5 takes (and writes) it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {"rope_parameters": rope_parameters} if rope_parameters else {}
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=TINY_HIDDEN,
        intermediate_size=intermediate,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        torch_dtype=dtype,
        **rope,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
            else:
                p.normal_(0.0, 0.05, generator=gen)
    model.to(dtype).save_pretrained(folder)
    return folder


def link_model(src: Path, dest: Path, config: dict) -> Path:
    """``dest``: ``src``'s files as hard links, with ``config`` as its config.json (a config-only variant)."""
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "config.json":
            (dest / f.name).hardlink_to(f)
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return dest


# ------------------------------------------------------------------ two files through GGUFReader


def gguf_differences(a: Path, b: Path) -> list[str]:
    """What differs between two GGUF files read by the ``gguf`` package's ``GGUFReader``: the key list (in
    order), each key's value types and value, the tensor list (in order), each tensor's type, shape and data."""
    from gguf import GGUFReader

    ra, rb = GGUFReader(a), GGUFReader(b)
    diffs: list[str] = []
    if list(ra.fields) != list(rb.fields):
        only_a, only_b = ra.fields.keys() - rb.fields.keys(), rb.fields.keys() - ra.fields.keys()
        diffs.append(f"keys: only in {a.name}: {sorted(only_a)}; only in {b.name}: {sorted(only_b)}")
        if not only_a and not only_b:
            diffs.append(f"keys in another order: {list(ra.fields)} != {list(rb.fields)}")
    for key in ra.fields.keys() & rb.fields.keys():
        fa, fb = ra.fields[key], rb.fields[key]
        if fa.types != fb.types:
            diffs.append(f"{key}: types {fa.types} != {fb.types}")
        elif (va := fa.contents()) != (vb := fb.contents()):
            diffs.append(f"{key}: {_first_difference(va, vb)}")
    ta, tb = {t.name: t for t in ra.tensors}, {t.name: t for t in rb.tensors}
    if list(ta) != list(tb):
        diffs.append(f"tensors: {list(ta)} != {list(tb)}")  # names or order
    for name in ta.keys() & tb.keys():
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type or x.shape.tolist() != y.shape.tolist():
            diffs.append(f"{name}: {x.tensor_type.name}{x.shape.tolist()} != {y.tensor_type.name}{y.shape.tolist()}")
        elif x.data.tobytes() != y.data.tobytes():
            diffs.append(f"{name}: data differs")
    return sorted(diffs)


def _first_difference(a: Any, b: Any) -> str:
    if isinstance(a, list) and isinstance(b, list):
        i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        return f"{len(a)} values != {len(b)} values, first difference at [{i}]: {a[i : i + 1]} != {b[i : i + 1]}"
    return f"{a!r} != {b!r}"
