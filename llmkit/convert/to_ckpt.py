"""``to-ckpt``: any model llmkit reads -> one MindSpore ``.ckpt`` (or MindFormers-named safetensors), as a
plan on the one runner (see :mod:`llmkit.convert.ckpt`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from llmkit.convert import ckpt_options
from llmkit.convert.ckpt_options import TO_NAMES, CkptResult, ToCkptOptions
from llmkit.errors import InputError
from llmkit.io.core.files import CONFIG_FILES, TOKENIZER_FILES
from llmkit.io.core.llama_weights import hf_sort_key
from llmkit.io.core.source import TensorSource, open_model
from llmkit.io.core.spec import TensorInfo, TensorSpec
from llmkit.io.meta.as_hf import open_as_hf
from llmkit.io.meta.names import check_rotary_heads, unpermute_hf_to_meta
from llmkit.io.mindspore.mindformers import hf_to_mindformers, is_mindformers, llama_hf_name
from llmkit.pipeline import AuxCopy, Notice, Plan, ProgressFactory


def _split(specs: list[TensorSpec], fmt: str) -> list[str]:
    from llmkit.io.mindspore.ckpt import SLICE_BYTES

    return [s.name for s in specs if s.nbytes > SLICE_BYTES] if fmt == "ckpt" else []


def _refuse_adapter(path: Path) -> Callable[[TensorSource], InputError | None]:
    def refuse(src: TensorSource) -> InputError | None:
        if src.adapter is None:
            return None
        return InputError(
            "this is a LoRA adapter, not a model",
            path=path,
            hint="merge it into its base first (llmkit merge-lora), then convert the merged folder",
        )

    return refuse


def to_ckpt(options: ToCkptOptions, *, progress: ProgressFactory | None = None) -> CkptResult:
    """Convert a model to a MindSpore checkpoint; every check runs before the first tensor is read."""
    dtype = ckpt_options.checked_dtype(options, TO_NAMES, ("ckpt", "safetensors"))
    if options.fmt != "ckpt" and (options.crc or options.enc_key):
        flag = "--crc" if options.crc else "--enc-key"
        raise InputError(
            f"{flag}: only a .ckpt has {'a CRC trailer' if options.crc else 'encryption'}",
            hint=f"drop {flag} or use --format ckpt",
        )
    key = ckpt_options.read_ckpt_key(options.enc_key, options.enc_mode, "--enc-key")
    # a Meta folder through its HF view; every weight of the LLaMA its config describes, once (no output yet)
    src = open_model(options.source, refuse=_refuse_adapter(options.source), view=open_as_hf)
    with src.closed_on_error():
        plan, unmapped = _to_ckpt_plan(options, src, dtype)
        if key is not None:
            plan.sink_options.update(enc_key=key, enc_mode=options.enc_mode)  # encrypts as it streams
    encryption = options.enc_mode if key is not None else None
    split = _split(plan.specs, options.fmt)
    return ckpt_options.run_ckpt(
        "to-ckpt", plan, options, progress, crc=options.crc, unmapped=unmapped, split=split, encryption=encryption
    )


def _model_order(src: TensorSource) -> list[TensorInfo]:
    """The source's tensors in transformers' state-dict order (embedding, layers 0..N with their modules in
    order, norm, lm_head): the order the MindFormers converter iterates ``model.state_dict()`` in, so the
    file is byte-identical to its output whatever order the source files store (safetensors sorts by name)."""

    def key(info: TensorInfo) -> tuple:
        return hf_sort_key(llama_hf_name(info.name) or info.name)

    return sorted(src.infos(), key=key)


class _Names:
    """The output tensors of to-ckpt: ``specs`` in model order, each output name's source name and HF name
    (for the rotary rows), the tensors with no name in the target naming, and the notices about them."""

    def __init__(self, options: ToCkptOptions, src: TensorSource, dtype: torch.dtype | None):
        self.specs: list[TensorSpec] = []
        self.src_of: dict[str, str] = {}  # output name -> source name
        self.hf_of: dict[str, str] = {}  # output name -> HF name of the source tensor
        self.unmapped: list[str] = []
        empty: list[str] = []
        for info in _model_order(src):
            if info.numel == 0:
                empty.append(info.name)
            else:
                self._add(options, info, dtype)
        self.notices: list[Notice] = []
        if self.unmapped:
            what = f"{len(self.unmapped)} tensor(s) have no MindFormers LLaMA name: {ckpt_options.few(self.unmapped)}"
            if options.strict:
                raise InputError(what, path=options.source, hint="drop --strict to keep them under their own names")
            if options.names == "mindformers":
                self.notices.append(Notice.warning(f"{what}; kept under their own names"))
        if empty:
            self.notices.append(
                Notice.info(f"{len(empty)} empty tensor(s) left out, as MindSpore does: {ckpt_options.few(empty)}")
            )

    def _add(self, options: ToCkptOptions, info: TensorInfo, dtype: torch.dtype | None) -> None:
        name, hf = info.name, llama_hf_name(info.name)
        if options.names == "mindformers":
            out = hf_to_mindformers(name) or (name if is_mindformers(name) else None)
        else:
            out = hf or name
        if out is None or hf is None:
            self.unmapped.append(name)
            out = name
        if out in self.src_of:
            raise InputError(
                f"tensors {self.src_of[out]!r} and {name!r} both become {out!r}",
                path=options.source,
                hint="the model mixes Hugging Face and MindFormers names; convert one naming only",
            )
        self.src_of[out] = name
        self.hf_of[out] = hf or name
        d = dtype if dtype is not None and info.dtype.is_floating_point else info.dtype
        self.specs.append(TensorSpec(out, d, info.shape))


def _to_ckpt_plan(options: ToCkptOptions, src: TensorSource, dtype: torch.dtype | None) -> tuple[Plan, list[str]]:
    """The plan, and the source tensors with no MindFormers name (kept under their own)."""
    names = _Names(options, src, dtype)
    specs, src_of, hf_of = names.specs, names.src_of, names.hf_of
    transform: ckpt_options.RowTransform = ckpt_options.unchanged
    if options.rotary == "meta":
        heads = ckpt_options.config_heads(src.config(), options.source, "--rotary meta")
        check_rotary_heads(
            {hf_of[s.name]: s.shape for s in specs},
            *heads,
            path=src.folder / "config.json" if src.folder else options.source,
        )
        transform = ckpt_options.rotary_rows(heads, unpermute_hf_to_meta)
    spec_of = {s.name: s for s in specs}

    def produce(out: str) -> torch.Tensor:
        return transform(hf_of[out], src.get(src_of[out]).to(spec_of[out].dtype))

    sink_options: dict = (
        {"crc": options.crc}
        if options.fmt == "ckpt"
        else {"shard_size": options.shard_size, "metadata": {"format": "ms"}}
    )
    aux = (
        [AuxCopy(src.folder, CONFIG_FILES + TOKENIZER_FILES, dtype=dtype)]
        if options.fmt != "ckpt" and src.folder
        else []
    )
    plan = ckpt_options.renaming_plan(
        "to-ckpt",
        options,
        src,
        specs,
        src_of,
        produce,
        inputs=[p for p in (src.path, src.folder) if p is not None],
        input_bytes=src.total_bytes,
        aux=aux,
        sink_options=sink_options,
        notices=names.notices,
    )
    return plan, names.unmapped
