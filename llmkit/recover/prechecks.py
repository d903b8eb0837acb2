"""Checks before the long work: the two models fit each other, and where config/tokenizer files come from.

Every check here reads headers and small files only, and names the file and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from llmkit.errors import InputError
from llmkit.io.core.dtypes import st_code
from llmkit.io.core.files import CONFIG_FILES, TOKENIZER_FILES
from llmkit.io.core.jsonfile import int_field
from llmkit.io.core.regular import is_special
from llmkit.io.core.source import TensorSource, open_model
from llmkit.io.core.spec import TensorInfo
from llmkit.recover.arithmetic import ROTARY_BUFFER

_EMBED_SUFFIXES = ("embed_tokens.weight", "lm_head.weight")


def dtype_counts(infos: list[TensorInfo]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for i in infos:
        code = st_code(i.dtype)
        counts[code] = counts.get(code, 0) + 1
    return counts


def open_input(path: str | os.PathLike, role: str) -> TensorSource:
    """The base, the diff or the tuned model: a full state dict in fp32, fp16 or bf16 (a Meta folder only as
    the base, through its HF view). Its completeness is checked later, after the pairwise checks, which
    explain a wrong base better."""

    def refuse(src: TensorSource) -> InputError | None:
        if src.adapter is not None:
            return InputError(
                f"the {role} is a LoRA adapter, not a full model",
                path=path,
                hint="weight diffs are full state dicts; LoRA adapters are merged with merge-lora",
            )
        if src.layout == "meta-pth" and role != "base":
            return InputError(
                f"the {role} is in Meta consolidated.NN.pth layout, whose tensor names differ "
                "from the Hugging Face names of weight diffs",
                path=path,
                hint="convert it first: llmkit from-meta",
            )
        return None

    from llmkit.io.meta.as_hf import open_as_hf

    # Meta originals as the HF model from-meta writes (no intermediate copy)
    src = open_model(path, refuse=refuse, view=open_as_hf, complete=False)
    for info in src.infos():
        if not info.dtype.is_floating_point or info.dtype.itemsize == 1:
            src.close()
            raise InputError(
                f"tensor {info.name!r} has dtype {info.dtype}; weight diffs need fp32, fp16 or bf16", path=path
            )
    return src


def layer_count(names: list[str]) -> int | None:
    layers = set()
    for n in names:
        parts = n.split(".")
        for i, p in enumerate(parts[:-1]):
            if p == "layers" and parts[i + 1].isdigit():
                layers.add(int(parts[i + 1]))
    return max(layers) + 1 if layers else None


def rope_settings(*sources: TensorSource) -> tuple[int, float] | None:
    """(head_dim, rope theta) from the first config.json that has them."""
    for src in sources:
        cfg = src.config() or {}
        where = src.folder / "config.json" if src.folder else None
        hidden = int_field(cfg, "hidden_size", path=where)
        heads = int_field(cfg, "num_attention_heads", path=where)
        head_dim = int_field(cfg, "head_dim", path=where) or (hidden // heads if hidden and heads else None)
        if head_dim:
            rope = cfg.get("rope_parameters")
            theta = cfg.get("rope_theta") or (rope.get("rope_theta") if isinstance(rope, dict) else None) or 10000.0
            if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not theta > 0:
                raise InputError(
                    f"rope_theta must be a positive number, found {theta!r}",
                    path=where,
                    hint="the file is damaged or was edited by hand; download it again",
                )
            return int(head_dim), float(theta)
    return None


def describe_role(role: str) -> str:
    return "diff" if role == "diff" else "tuned model"


def check_names(other: TensorSource, base: TensorSource, role: str) -> tuple[list[str], list[str]]:
    """Key-set check; returns (base buffers to compute, base tensors ignored). Raises on a real mismatch."""
    o_keys, b_keys = set(other.keys()), set(base.keys())
    missing = [k for k in other.keys() if k not in b_keys]
    computed = [k for k in missing if k.endswith(ROTARY_BUFFER)]
    missing = [k for k in missing if not k.endswith(ROTARY_BUFFER)]
    extra = [k for k in base.keys() if k not in o_keys]
    ignored = [k for k in extra if k.endswith(ROTARY_BUFFER)]
    extra = [k for k in extra if not k.endswith(ROTARY_BUFFER)]
    what = describe_role(role)
    layers = (layer_count(base.keys()), layer_count(other.keys()))
    layer_note = (
        f"; the base has {layers[0]} layers, the {what} {layers[1]}"
        if layers[0] != layers[1] and None not in layers
        else ""
    )
    if missing:
        raise InputError(
            f"the base lacks {len(missing)} tensor(s) the {what} has, e.g. {', '.join(missing[:3])}{layer_note}",
            path=base.path,
            hint=f"use the base model the {what} was made from (for ZhiXi-13B: LLaMA-13B converted to Hugging Face)",
        )
    if extra:
        raise InputError(
            f"the {what} lacks {len(extra)} tensor(s) the base has, e.g. {', '.join(extra[:3])}{layer_note}",
            path=other.path,
            hint=f"the {what} is incomplete (download it again) or was made from another base",
        )
    return computed, ignored


def check_shapes(
    other: TensorSource, base: TensorSource, role: str, computed: list[str], rope: tuple[int, float] | None
) -> None:
    what = describe_role(role)
    bad: list[tuple[str, tuple[int, ...] | None, tuple[int, ...]]] = []  # (name, base shape, other's shape)
    computed_shape = (rope[0] // 2,) if rope else None  # a base buffer made from config.json
    for name in other.keys():
        o_shape = other.info(name).shape
        b_shape = computed_shape if name in computed else base.info(name).shape
        if b_shape != o_shape:
            bad.append((name, b_shape, o_shape))
    if not bad:
        return
    listing = "; ".join(f"{n}: base {list(b) if b else '?'} vs {what} {list(o)}" for n, b, o in bad[:3])
    embeds = [(b, o) for n, b, o in bad if n.endswith(_EMBED_SUFFIXES) and b and len(b) == 2]
    explained, hint = _embedding_explanation(embeds, role, what)
    raise InputError(
        f"shapes differ for {len(bad)} tensor(s): {listing}{explained}",
        path=base.path,
        hint=hint or f"use the base model the {what} was made from",
    )


def _embedding_explanation(
    embeds: Sequence[tuple[tuple[int, ...], tuple[int, ...]]], role: str, what: str
) -> tuple[str, str | None]:
    """What differing embedding shapes (base, other) say: another vocabulary, or another model size
    (the message's tail, and a hint when the fix is more specific than the usual one)."""
    vocab = next(((b, o) for b, o in embeds if b[1] == o[1]), None)
    if vocab is None:
        hidden = next(((b[-1], o[-1]) for b, o in embeds), None)
        if hidden and hidden[0] != hidden[1]:
            from llmkit.summary import describe_hidden_size

            base_size, other_size = describe_hidden_size(hidden[0]), describe_hidden_size(hidden[1])
            return f". The base is {base_size} but the {what} is {other_size}: wrong base", None
        return "", None
    b, o = vocab
    if b[0] >= o[0]:
        return (
            f". The base has a {b[0]}-token vocabulary but the {what} only {o[0]}: this is the wrong "
            "base (perhaps an already-extended or merged model)"
        ), None
    if role == "diff":
        return (
            f". The base has a {b[0]}-token vocabulary but the diff {o[0]}: this is the wrong base "
            f"(the diff was made against a model with an extended {o[0]}-token vocabulary)"
        ), f"recover from the {o[0]}-token model the diff was made from, not from the original LLaMA"
    return (
        f". The base has a {b[0]}-token vocabulary but the tuned model {o[0]}: a diff needs "
        f"both with the same vocabulary (the tuned model was trained from a model with an "
        f"extended {o[0]}-token vocabulary)"
    ), (
        f"pass the {o[0]}-token model the tuned model was trained from as --base, e.g. the "
        "vocabulary-extended base rather than the original LLaMA"
    )


def _present(p: Path) -> bool:
    """A file to carry: a regular one, or a FIFO or device, which the carry refuses (never taken as absent)."""
    return p.is_file() or is_special(p)


def aux_plan(other: TensorSource, base: TensorSource, role: str) -> tuple[dict[str, str], list[str]]:
    """Which config/tokenizer file comes from where: the diff's folder first (SPEC.md section 2)."""
    plan: dict[str, str] = {}
    notes: list[str] = []
    ofolder, bfolder = other.folder, base.folder
    what = describe_role(role)
    for name in CONFIG_FILES:
        if ofolder and _present(ofolder / name):
            plan[name] = str(ofolder)
        elif bfolder and _present(bfolder / name):
            plan[name] = str(bfolder)
            notes.append(f"{name} copied from the base folder: the {what} folder has none")
    tok_from = ofolder if ofolder and any(_present(ofolder / n) for n in TOKENIZER_FILES) else None
    if tok_from is None and bfolder and any(_present(bfolder / n) for n in TOKENIZER_FILES):
        tok_from = bfolder
        notes.append(f"tokenizer files copied from the base folder: the {what} folder has none")
    if tok_from is not None:
        for name in TOKENIZER_FILES:
            if _present(tok_from / name):
                plan[name] = str(tok_from)
    if not any(n in plan for n in TOKENIZER_FILES):
        notes.append("no tokenizer files found in either folder; the output has none")
    return plan, notes
