"""Demo step: to-ckpt -> from-ckpt (Hugging Face ⇄ MindSpore ``.ckpt`` with MindFormers names).

Independent references: the expected ``.ckpt`` bytes are built here by hand from SPEC.md section 5
(MindFormers name table, protobuf wire format, ``b"crc_num"`` + ``zlib.crc32`` trailer) from the tensors
transformers saved, in the order of transformers' own ``state_dict()`` (the MindFormers converter's); the Meta rotary
rows come from ``llmkit.tiny``'s reference formula. The way back is judged by transformers itself:
``LlamaForCausalLM.from_pretrained`` of both folders, same state dict and identical logits.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

from llmkit.demo import DemoContext, demo_step
from llmkit.errors import CheckFailed, InputError

# SPEC.md section 5, restated name by name (the converter applies it as ordered string replacements): the
# MindFormers name of each Hugging Face LLaMA tensor; the model. and model.layers.N. prefixes are kept.
_TOP_LEVEL = {
    "model.embed_tokens.weight": "model.tok_embeddings.embedding_weight",
    "model.norm.weight": "model.norm_out.weight",
}
_IN_LAYER = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}
_MS_TYPES = {torch.float32: b"Float32", torch.float16: b"Float16", torch.bfloat16: b"BFloat16"}
_IDS = torch.tensor([[1, 7, 23, 42, 5, 99, 64, 3, 18]])  # a fixed prompt of token ids (vocab 100)


def _mindformers(name: str) -> str:
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name]
    parts = name.split(".")  # model.layers.N.<module>.weight
    if parts[:2] != ["model", "layers"] or len(parts) < 5:
        return name  # lm_head.weight
    module = ".".join(parts[3:-1])
    return ".".join([*parts[:3], _IN_LAYER.get(module, module), parts[-1]])


def _varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def _field(key: int, data: bytes) -> bytes:
    return bytes([key]) + _varint(len(data)) + data


def _record(name: str, t: torch.Tensor) -> bytes:
    """``0a len { 0a len tag | 12 len { (08 dim)* | 12 len type | 1a len raw } }`` (one record: < 512 MiB)."""
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()  # little-endian C order
    tensor = b"".join(b"\x08" + _varint(d) for d in t.shape) + _field(0x12, _MS_TYPES[t.dtype]) + _field(0x1A, raw)
    return _field(0x0A, _field(0x0A, name.encode()) + _field(0x12, tensor))


def _transformers(folder: Path) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """State dict and logits of the fixed prompt, as transformers loads the folder."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model.state_dict(), model(_IDS).logits


@demo_step(68, "to-ckpt -> from-ckpt (MindSpore)")
def _ckpt_round_trip(ctx: DemoContext) -> str:
    work = ctx.workdir / "ckpt"
    ref_state, ref_logits = _transformers(ctx.base)
    order = list(ref_state)  # transformers' state-dict order: what the MindFormers converter iterates
    sizes = []
    for rotary in ("hf", "meta"):  # MindFormers r0.7+ rows, then r0.6's Meta interleaved rows
        ckpt = work / f"{rotary}.ckpt"
        size, first_record = _to_ckpt_is_hand_built(ctx, ckpt, order, rotary)
        _from_ckpt_is_the_original(ctx, ckpt, work / f"{rotary}-hf", rotary, ref_state, ref_logits)
        sizes.append(size)
    _flipped_byte_is_refused(ctx, work, first_record // 2)
    return (
        f"{len(order)} tensors -> {sizes[0]:,}-byte .ckpt = the bytes built by hand (protobuf records, "
        "MindFormers names, crc32 trailer), also with --rotary meta; from-ckpt back: transformers state dict "
        "and logits identical; flipped byte refused by the CRC"
    )


def _to_ckpt_is_hand_built(ctx: DemoContext, ckpt: Path, order: list[str], rotary: str) -> tuple[int, int]:
    """to-ckpt of the base into ``ckpt`` must be the records built by hand in ``order`` plus the CRC
    trailer (and, for HF rows, the same tensors as its source); returns (file bytes, first record bytes)."""
    from llmkit.convert.ckpt import ToCkptOptions, to_ckpt
    from llmkit.tiny import TINY_HEADS, meta_permute_inverse
    from llmkit.verify import compare_sources

    made = to_ckpt(ToCkptOptions(ctx.base, ckpt, rotary=rotary, crc=True, force=ctx.force))
    records = []
    for name in order:
        t = ctx.reference[name]
        if rotary == "meta" and name.endswith((".q_proj.weight", ".k_proj.weight")):
            t = meta_permute_inverse(t, TINY_HEADS)
        records.append(_record(_mindformers(name), t))
    data = ckpt.read_bytes()
    body, trailer = data[:-17], data[-17:]
    if data[: len(records[0])] != records[0]:
        raise CheckFailed(
            f"to-ckpt --rotary {rotary}: the first record ({_mindformers(order[0])}) is not "
            "the bytes built by hand (protobuf records, MindFormers names)"
        )
    if trailer != b"crc_num" + zlib.crc32(body).to_bytes(10, "big"):
        raise CheckFailed(f"to-ckpt --rotary {rotary}: the trailer is not b'crc_num' + crc32 of the records")
    if body != b"".join(records):
        at = next((n for n, r in zip(order, records, strict=True) if r not in body), "the end")
        raise CheckFailed(f"to-ckpt --rotary {rotary}: the records differ from the hand-built bytes (at {at})")
    if made.unmapped or made.split or not made.crc:
        raise CheckFailed(f"to-ckpt reports unmapped {made.unmapped}, split {made.split}, crc {made.crc}")
    if rotary == "hf":  # verify --tensors: a .ckpt against the folder it came from, by HF names
        cmp = compare_sources(ckpt, ctx.base)
        if not cmp.identical or cmp.compared != len(order):
            raise CheckFailed(f"verify --tensors: the .ckpt differs from its source: {cmp.differing[:3]}")
    return len(data), len(records[0])


def _from_ckpt_is_the_original(
    ctx: DemoContext,
    ckpt: Path,
    back: Path,
    rotary: str,
    ref_state: dict[str, torch.Tensor],
    ref_logits: torch.Tensor,
) -> None:
    """from-ckpt of ``ckpt`` into ``back`` checks the CRC, and transformers loads the original state
    dict from it and gives the same logits."""
    from llmkit.convert.ckpt import FromCkptOptions, from_ckpt

    result = from_ckpt(FromCkptOptions(ckpt, back, rotary=rotary, config=ctx.base, force=ctx.force))
    if [c.status for c in result.checks if c.name == "crc"] != ["ok"]:
        raise CheckFailed("from-ckpt did not check the CRC trailer")
    state, logits = _transformers(back)
    if state.keys() != ref_state.keys():
        raise CheckFailed(
            f"from-ckpt --rotary {rotary}: tensor names differ, e.g. {sorted(state.keys() ^ ref_state.keys())[:3]}"
        )
    for name, ref in ref_state.items():
        if state[name].dtype != ref.dtype or not torch.equal(state[name], ref):
            raise CheckFailed(f"from-ckpt --rotary {rotary}: {name} differs from the original in transformers")
    if not torch.equal(logits, ref_logits):
        raise CheckFailed(f"from-ckpt --rotary {rotary}: transformers gives different logits")


def _flipped_byte_is_refused(ctx: DemoContext, work: Path, at: int) -> None:
    """One flipped data byte (at offset ``at`` of hf.ckpt): the CRC trailer refuses the file and nothing is written."""
    from llmkit.convert.ckpt import FromCkptOptions, from_ckpt

    bad = work / "flipped.ckpt"
    flipped = bytearray((work / "hf.ckpt").read_bytes())
    flipped[at] ^= 0x01
    bad.write_bytes(bytes(flipped))
    try:
        from_ckpt(FromCkptOptions(bad, work / "flipped-hf", config=ctx.base))
    except InputError as e:
        if "CRC mismatch" not in str(e):
            raise CheckFailed(f"from-ckpt refused a flipped byte for another reason: {e}") from None
    else:
        raise CheckFailed("from-ckpt accepted a .ckpt with a flipped byte")
    out = work / "flipped-hf"
    if out.exists():
        raise CheckFailed(f"from-ckpt left {out} behind after the CRC mismatch")
