"""to-ckpt / from-ckpt against the real MindSpore (the ``mindspore`` test extra), run in subprocesses:
importing MindSpore switches protobuf's backend for the whole process.

- MindSpore's ``load_checkpoint`` reads what llmkit writes (bf16, fp16, fp32; CRC checked), bit for bit;
- llmkit's file is byte-identical to MindSpore's ``save_checkpoint`` of the same named tensors, including
  a tensor just over 512 MiB (split into two records; slow, but run in CI);
- what MindSpore saves, llmkit converts to a Hugging Face folder that transformers loads with the
  original model's logits (also from Meta's interleaved rotary rows, ``--rotary meta``).
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmkit.io.mindspore.mindformers import hf_to_mindformers


def save_ordered(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file for the SAVE script, with the dict's order beside it."""
    save_file(tensors, path)
    Path(str(path) + ".order.json").write_text(json.dumps(list(tensors)))


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


# Loads a checkpoint with MindSpore and dumps every parameter (bf16 as float32, which is exact) to a
# safetensors file in load order, for comparison in the test process.
DUMP = """
    from safetensors.numpy import save_file
    params = ms.load_checkpoint(sys.argv[1], crc_check=sys.argv[3] == "crc", format=sys.argv[4])
    out, types = {}, {}
    for name, p in params.items():
        types[name] = str(p.dtype)
        out[name] = (p.float() if p.dtype == ms.bfloat16 else p).asnumpy()
    save_file(out, sys.argv[2])
    print(json.dumps({"order": list(params), "types": types}))
"""

# Saves the tensors of a safetensors file (bf16 given as float32, exactly representable) with MindSpore,
# in the order of the names listed in ``<file>.order.json`` (safetensors files sort their tensors).
SAVE = """
    import torch
    from safetensors.torch import load_file
    items = []
    tensors = load_file(sys.argv[1])
    for name in json.load(open(sys.argv[1] + ".order.json")):
        t = tensors[name]
        if t.dtype == torch.bfloat16:
            data = ms.Tensor(t.float().numpy(), ms.float32).astype(ms.bfloat16)
        else:
            data = ms.Tensor(t.numpy())
        items.append({"name": name, "data": data})
    ms.save_checkpoint(items, sys.argv[2], crc_check=sys.argv[3] == "crc")
"""

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MS_TYPES = {"fp32": "Float32", "fp16": "Float16", "bf16": "BFloat16"}


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_mindspore_loads_llmkits_checkpoint_and_saves_the_same_bytes(
    tmp_path, run_cli, tiny_factory, mindspore_run, dtype
):
    m = tiny_factory("safetensors")
    out = tmp_path / "model.ckpt"
    assert run_cli("to-ckpt", m.path, "-o", out, "--dtype", dtype, "--crc").exit_code == 0
    # transformers' state-dict order: the order the MindFormers converter hands save_checkpoint
    expected = {hf_to_mindformers(k): v.to(DTYPES[dtype]) for k, v in m.state.items()}

    # 1. MindSpore's loader (CRC checked) gives back every tensor, bit for bit, in that order.
    info = json.loads(mindspore_run(DUMP, out, tmp_path / "dump.safetensors", "crc", "ckpt").splitlines()[-1])
    assert info["order"] == list(expected)
    assert set(info["types"].values()) == {MS_TYPES[dtype]}
    loaded = load_file(tmp_path / "dump.safetensors")
    for name, t in expected.items():
        want = t.float() if dtype == "bf16" else t
        assert raw(loaded[name]) == raw(want), name

    # 2. MindSpore's writer, given the same named tensors in the same order, writes the same bytes.
    save_ordered(expected, tmp_path / "expected.safetensors")
    mindspore_run(SAVE, tmp_path / "expected.safetensors", tmp_path / "ms.ckpt", "crc")
    assert filecmp.cmp(out, tmp_path / "ms.ckpt", shallow=False)
    # ... and without the CRC trailer too.
    assert run_cli("to-ckpt", m.path, "-o", tmp_path / "plain.ckpt", "--dtype", dtype).exit_code == 0
    mindspore_run(SAVE, tmp_path / "expected.safetensors", tmp_path / "ms-plain.ckpt", "none")
    assert filecmp.cmp(tmp_path / "plain.ckpt", tmp_path / "ms-plain.ckpt", shallow=False)


def test_mindformers_named_safetensors_load_in_mindspore(tmp_path, run_cli, tiny_factory, mindspore_run):
    m = tiny_factory("safetensors")
    out = tmp_path / "ms-st"
    assert run_cli("to-ckpt", m.path, "-o", out, "--format", "safetensors", "--dtype", "fp16").exit_code == 0
    info = json.loads(
        mindspore_run(
            DUMP, out / "model.safetensors", tmp_path / "dump.safetensors", "none", "safetensors"
        ).splitlines()[-1]
    )
    loaded = load_file(tmp_path / "dump.safetensors")
    assert sorted(info["order"]) == sorted(hf_to_mindformers(k) for k in m.state)
    for k, v in m.state.items():
        assert raw(loaded[hf_to_mindformers(k)]) == raw(v.half()), k


@pytest.mark.slow
def test_a_tensor_over_512_mib_is_split_exactly_as_mindspore_splits_it(tmp_path, run_cli, mindspore_run):
    """One run with a 512 MiB + 4 byte tensor: llmkit's bytes equal save_checkpoint's, MindSpore loads
    llmkit's file, and llmkit reads MindSpore's (two records joined)."""
    n = 512 * 2**20 // 4 + 1
    (tmp_path / "src").mkdir()
    src = tmp_path / "src" / "big.safetensors"
    save_file({"big": torch.arange(n, dtype=torch.float32), "small": torch.arange(6, dtype=torch.float16)}, src)
    ours = tmp_path / "ours.ckpt"
    result = run_cli("to-ckpt", src, "-o", ours, "--names", "hf", "--json")
    assert result.exit_code == 0 and result.json()["split"] == ["big"]
    check = """
        from safetensors.numpy import load_file
        src = load_file(sys.argv[1])
        ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in src.items()], sys.argv[3])
        loaded = ms.load_checkpoint(sys.argv[2])
        assert list(loaded) == ["big", "small"]
        assert all(np.array_equal(loaded[k].asnumpy().view(np.uint8), v.view(np.uint8)) for k, v in src.items())
        print("loaded")
    """
    assert "loaded" in mindspore_run(check, src, ours, tmp_path / "ms.ckpt")
    assert filecmp.cmp(ours, tmp_path / "ms.ckpt", shallow=False)
    from llmkit.io.mindspore.ckpt import SLICE_BYTES
    from llmkit.io.mindspore.reader import CkptFile

    f = CkptFile(tmp_path / "ms.ckpt")
    try:
        assert f.records("big") == 2 and SLICE_BYTES == 536_870_912
        assert torch.equal(f.get("big"), torch.arange(n, dtype=torch.float32))
    finally:
        f.close()


def _meta_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF rotate-half rows -> Meta's interleaved rows (SPEC.md section 4's permutation, inverted)."""
    rows, cols = w.shape
    return w.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


@pytest.mark.parametrize("rotary", ["hf", "meta"])
def test_from_ckpt_of_a_mindspore_checkpoint_gives_the_original_logits(
    tmp_path, run_cli, tiny_factory, mindspore_run, rotary
):
    from transformers import LlamaForCausalLM

    m = tiny_factory("safetensors")
    heads = json.loads((m.path / "config.json").read_text())["num_attention_heads"]
    tensors = {}
    for k, v in m.state.items():  # MindFormers names, in transformers' state-dict order
        if rotary == "meta" and (".q_proj." in k or ".k_proj." in k):
            v = _meta_rows(v, heads)
        tensors[hf_to_mindformers(k)] = v.contiguous()
    save_ordered(tensors, tmp_path / "named.safetensors")
    mindspore_run(SAVE, tmp_path / "named.safetensors", tmp_path / "ms.ckpt", "crc")

    out = tmp_path / "hf"
    result = run_cli("from-ckpt", tmp_path / "ms.ckpt", "-o", out, "--config", m.path, "--rotary", rotary, "--json")
    assert result.exit_code == 0, result.stderr
    assert {c["name"]: c["status"] for c in result.json()["checks"]} == {"crc": "ok"}
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        want = LlamaForCausalLM.from_pretrained(m.path).eval()(ids).logits
        got = LlamaForCausalLM.from_pretrained(out).eval()(ids).logits
    assert torch.equal(want, got)


# ------------------------------------------------------------------ encrypted checkpoints (enc_key / dec_key)

ENC_KEY_HEX = "00112233445566778899aabbccddeeff"


@pytest.mark.parametrize("mode", ["AES-GCM", "AES-CBC", "SM4-CBC"])
def test_encrypted_checkpoints_cross_both_ways_with_a_tensor_over_one_block(
    tmp_path, run_cli, mindspore_run, monkeypatch, mode
):
    """llmkit's encrypted file loads in MindSpore with the key and mode; MindSpore's decrypts in llmkit to
    exactly the saved tensors. A 68 MiB tensor spans two 64 MiB blocks."""
    monkeypatch.setenv("LLMKIT_MS_KEY", ENC_KEY_HEX)
    (tmp_path / "src").mkdir()
    src = tmp_path / "src" / "t.safetensors"
    tensors = {
        "big": torch.arange(17 * 2**20, dtype=torch.float32).reshape(17, 2**20),
        "half": (torch.arange(300, dtype=torch.float16) / 7),
        "step": torch.tensor(3, dtype=torch.int64),
    }
    save_ordered(tensors, src)
    ours = tmp_path / "ours.ckpt"
    r = run_cli(
        "to-ckpt", src, "-o", ours, "--names", "hf", "--enc-key", "env:LLMKIT_MS_KEY", "--enc-mode", mode, "--json"
    )
    assert r.exit_code == 0 and r.json()["encryption"] == mode
    check = """
        import torch
        from safetensors.torch import load_file
        key, mode = bytes.fromhex(sys.argv[3]), sys.argv[4]
        src = load_file(sys.argv[1])
        loaded = ms.load_checkpoint(sys.argv[2], dec_key=key, dec_mode=mode)
        assert list(loaded) == list(json.load(open(sys.argv[1] + ".order.json")))
        for k, t in src.items():
            assert np.array_equal(loaded[k].asnumpy(), t.numpy()), k
        items = [{"name": k, "data": ms.Tensor(src[k].numpy())} for k in loaded]
        ms.save_checkpoint(items, sys.argv[5], enc_key=key, enc_mode=mode)
        print("loaded")
    """
    assert "loaded" in mindspore_run(check, src, ours, ENC_KEY_HEX, mode, tmp_path / "ms.ckpt")
    from llmkit.io.mindspore.keys import CkptKey
    from llmkit.io.mindspore.reader import CkptFile

    f = CkptFile(tmp_path / "ms.ckpt", CkptKey(bytes.fromhex(ENC_KEY_HEX), mode, "test"))
    try:
        assert f.encryption == mode and len(f._plain.blocks) == 2
        assert list(f.infos) == list(tensors)
        for k, t in tensors.items():
            assert raw(f.get(k)) == raw(t) and f.infos[k].shape == tuple(t.shape), k
    finally:
        f.close()
