"""``to-ckpt`` / ``from-ckpt``: Hugging Face ⇄ MindSpore ``.ckpt`` with MindFormers names, streaming.

Both are plans run by the one runner (``llmkit.pipeline``); ``ckpt`` is one more sink format
(``llmkit.io.mindspore.sink``) and one more source format (``llmkit.io.mindspore.ckpt``):

- to-ckpt: any model llmkit reads (HF folder or file, Meta folder via its HF view) -> tensors in
  transformers' state-dict order (as the MindFormers converter writes them), MindFormers names (``--names hf`` keeps HF names), the requested dtype (one cast), wq/wk
  un-permuted to Meta's interleaved rows with ``--rotary meta`` (MindFormers r0.6). Empty tensors are
  left out, as ``mindspore.save_checkpoint`` leaves them out. ``--format safetensors`` writes the same
  tensors as MindFormers-named safetensors in a folder.
- from-ckpt: a ``.ckpt`` -> an HF LLaMA folder: HF names, rotary rows back to rotate-half with
  ``--rotary meta``, ``config.json`` from ``--config`` (checked against the shapes) or, for a published
  LLaMA size only (the shapes decide the head count), derived from the shapes with a notice naming what
  was guessed. Every tensor the config describes must be there, once, in its shape, and no name may be a
  damaged copy of one (``llmkit.io.core.llama_tensors``). Tensors with no HF name are left out with a notice
  saying what their names show (training state: optimizer moments, step counters; rotary buffers; other),
  or refused with ``--strict``.
  A CRC trailer is checked while the tensors stream and before the output is renamed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmkit.convert.meta import ConvertResult, _dtype
from llmkit.errors import InputError
from llmkit.io.core.dtypes import CONFIG_NAMES
from llmkit.io.core.files import CONFIG_FILES, TOKENIZER_FILES
from llmkit.io.core.jsonfile import int_field, read_json
from llmkit.io.core.llama_tensors import check_source, check_tensors, is_buffer, is_training_state, llama_shapes
from llmkit.io.core.source import TensorSource, open_source
from llmkit.io.core.spec import TensorSpec
from llmkit.io.meta.as_hf import config_files, hf_sort_key, open_as_hf
from llmkit.io.meta.names import check_rotary_heads, permute_meta_to_hf, unpermute_hf_to_meta
from llmkit.io.mindspore.mindformers import (
    ROTARY_LAYOUTS,
    check_config,
    guessed_config,
    hf_to_mindformers,
    is_mindformers,
    llama_hf_name,
    rotary_role,
)
from llmkit.io.mindspore.reader import CkptFile
from llmkit.pipeline import AuxCopy, Check, Notice, Plan, ProgressFactory, execute, open_plan_sink, plan_report
from llmkit.units import DEFAULT_SHARD_SIZE

TO_NAMES = ("mindformers", "hf")
FROM_NAMES = ("hf", "keep")


@dataclass(frozen=True)
class ToCkptOptions:
    """``llmkit to-ckpt``: a model -> one MindSpore ``.ckpt`` file (``fmt="ckpt"``, ``output`` a file) or a
    folder of MindFormers-named safetensors (``fmt="safetensors"``)."""

    source: Path
    output: Path
    dtype: str = "keep"
    names: str = "mindformers"
    rotary: str = "hf"
    crc: bool = False
    fmt: str = "ckpt"
    shard_size: int = DEFAULT_SHARD_SIZE
    strict: bool = False
    enc_key: str | None = None  # a key file path or env:VAR (hex): never the key itself
    enc_mode: str = "AES-GCM"
    force: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class FromCkptOptions:
    """``llmkit from-ckpt``: a MindSpore ``.ckpt`` -> a Hugging Face LLaMA folder. ``config``: a config.json,
    or a model folder (its config and tokenizer files are carried)."""

    source: Path
    output: Path
    names: str = "hf"
    rotary: str = "hf"
    fmt: str = "safetensors"
    config: Path | None = None
    dtype: str = "keep"
    shard_size: int = DEFAULT_SHARD_SIZE
    strict: bool = False
    dec_key: str | None = None  # a key file path or env:VAR (hex), for an encrypted checkpoint
    dec_mode: str | None = None  # None: read from the file
    force: bool = False
    dry_run: bool = False


@dataclass
class CkptResult(ConvertResult):
    """Result of ``to-ckpt`` / ``from-ckpt`` (docs/json.md). ``unmapped``: source tensors with no name in
    the target naming (kept by to-ckpt, left out by from-ckpt); ``split``: tensors stored as several
    512 MiB records; ``config_from``: the config file used, ``derived`` or None; ``encryption``: the
    cipher of the written (to-ckpt) or read (from-ckpt) checkpoint, or None."""

    names: str = ""
    rotary: str = "hf"
    crc: bool = False
    unmapped: list[str] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    config_from: str | None = None
    encryption: str | None = None


def _choice(value: str, choices: tuple[str, ...], flag: str) -> None:
    if value not in choices:
        raise InputError(f"{flag}: {value!r} is not one of {', '.join(choices)}")


def _heads(cfg: dict | None, where: object, why: str) -> tuple[int, int]:
    """(attention heads, key/value heads) from a config, for the rotary permutation."""
    heads = (cfg or {}).get("num_attention_heads")
    if not isinstance(heads, int) or heads <= 0:
        raise InputError(
            f"{why} needs num_attention_heads from config.json, which is missing",
            path=where,
            hint="put the model's config.json beside its weights (or pass --config)",
        )
    assert cfg is not None
    kv = int_field(cfg, "num_key_value_heads", path=where)  # a string or fraction: one line naming the file
    return heads, kv or heads


def _rotary(heads: tuple[int, int], fn):
    """A transform applying ``fn`` (permute/unpermute) to q/k rows (HF name), identity otherwise."""

    def apply(hf_name: str, t: torch.Tensor) -> torch.Tensor:
        role = rotary_role(hf_name)
        if role is None:
            return t
        return fn(t, heads[0] if role == "q" else heads[1]).contiguous()

    return apply


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")


def _finish(options, plan: Plan, result: CkptResult, progress: ProgressFactory | None) -> CkptResult:
    with plan:
        sink = open_plan_sink(plan, force=options.force)
        result.plan = plan_report(plan, sink)
        if options.dry_run:
            return result
        done = execute(plan, sink, progress=progress)
    result.files, result.seconds, result.outputs = done.files, done.seconds, [str(options.output)]
    result.checks += done.checks
    return result


def _split(specs: list[TensorSpec], fmt: str) -> list[str]:
    from llmkit.io.mindspore.ckpt import SLICE_BYTES

    return [s.name for s in specs if s.nbytes > SLICE_BYTES] if fmt == "ckpt" else []


# ------------------------------------------------------------------ to-ckpt


def _open_model(path: Path) -> TensorSource:
    src = open_source(path)
    if src.adapter is not None:
        src.close()
        raise InputError(
            "this is a LoRA adapter, not a model",
            path=path,
            hint="merge it into its base first (llmkit merge-lora), then convert the merged folder",
        )
    src = open_as_hf(src)  # a Meta folder through its HF view; closes src on failure
    try:
        check_source(src)  # every weight of the LLaMA its config describes, once (no output yet)
    except BaseException:
        src.close()
        raise
    return src


def to_ckpt(options: ToCkptOptions, *, progress: ProgressFactory | None = None) -> CkptResult:
    """Convert a model to a MindSpore checkpoint; every check runs before the first tensor is read."""
    dtype = _dtype(options)
    _choice(options.names, TO_NAMES, "--names")
    _choice(options.rotary, ROTARY_LAYOUTS, "--rotary")
    _choice(options.fmt, ("ckpt", "safetensors"), "--format")
    if options.fmt != "ckpt" and (options.crc or options.enc_key):
        flag = "--crc" if options.crc else "--enc-key"
        raise InputError(
            f"{flag}: only a .ckpt has {'a CRC trailer' if options.crc else 'encryption'}",
            hint=f"drop {flag} or use --format ckpt",
        )
    key = None
    if options.enc_key is not None:
        from llmkit.io.mindspore.keys import read_key

        key = read_key(options.enc_key, options.enc_mode, flag="--enc-key")
    src = _open_model(options.source)
    try:
        plan, result = _to_ckpt_plan(options, src, dtype)
        if key is not None:
            plan.sink_options.update(enc_key=key, enc_mode=options.enc_mode)  # encrypts as it streams
            result.encryption = options.enc_mode
    except BaseException:
        src.close()
        raise
    return _finish(options, plan, result, progress)


def _model_order(src: TensorSource) -> list:
    """The source's tensors in transformers' state-dict order (embedding, layers 0..N with their modules in
    order, norm, lm_head): the order the MindFormers converter iterates ``model.state_dict()`` in, so the
    file is byte-identical to its output whatever order the source files store (safetensors sorts by name)."""

    def key(info) -> tuple:
        return hf_sort_key(llama_hf_name(info.name) or info.name)

    return sorted(src.infos(), key=key)


def _to_ckpt_plan(options: ToCkptOptions, src: TensorSource, dtype: torch.dtype | None) -> tuple[Plan, CkptResult]:
    notices: list[Notice] = []
    hf_of: dict[str, str] = {}  # output name -> HF name of the source tensor (for the rotary rows)
    src_of: dict[str, str] = {}  # output name -> source name
    unmapped: list[str] = []
    empty: list[str] = []
    specs: list[TensorSpec] = []
    for info in _model_order(src):
        name = info.name
        if info.numel == 0:
            empty.append(name)
            continue
        hf = llama_hf_name(name)
        if options.names == "mindformers":
            out = hf_to_mindformers(name) or (name if is_mindformers(name) else None)
        else:
            out = hf or name
        if out is None or hf is None:
            unmapped.append(name)
            out = name
        if out in src_of:
            raise InputError(
                f"tensors {src_of[out]!r} and {name!r} both become {out!r}",
                path=options.source,
                hint="the model mixes Hugging Face and MindFormers names; convert one naming only",
            )
        src_of[out] = name
        hf_of[out] = hf or name
        d = dtype if dtype is not None and info.dtype.is_floating_point else info.dtype
        specs.append(TensorSpec(out, d, info.shape))
    if unmapped:
        what = f"{len(unmapped)} tensor(s) have no MindFormers LLaMA name: {_few(unmapped)}"
        if options.strict:
            raise InputError(what, path=options.source, hint="drop --strict to keep them under their own names")
        if options.names == "mindformers":
            notices.append(Notice.warning(f"{what}; kept under their own names"))
    if empty:
        notices.append(Notice.info(f"{len(empty)} empty tensor(s) left out, as MindSpore does: {_few(empty)}"))
    transform = lambda hf_name, t: t
    if options.rotary == "meta":
        heads = _heads(src.config(), options.source, "--rotary meta")
        check_rotary_heads(
            {hf_of[s.name]: s.shape for s in specs},
            *heads,
            path=src.folder / "config.json" if src.folder else options.source,
        )
        transform = _rotary(heads, unpermute_hf_to_meta)

    def produce(out: str) -> torch.Tensor:
        spec_dtype = spec_of[out].dtype
        return transform(hf_of[out], src.get(src_of[out]).to(spec_dtype))

    spec_of = {s.name: s for s in specs}
    largest = max((s.nbytes for s in specs), default=0)
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
    plan = Plan(
        job="to-ckpt",
        output=Path(options.output),
        fmt=options.fmt,
        specs=specs,
        produce=produce,
        reads=lambda out: [(src, src_of[out])],
        inputs=[p for p in (src.path, src.folder) if p is not None],
        input_bytes=src.total_bytes,
        working_set_bytes=3 * largest,
        label="converting",
        aux=aux,
        sink_options=sink_options,
        notices=notices,
        sources=[src],
    )
    result = CkptResult(
        command="to-ckpt",
        source=str(options.source),
        output=str(options.output),
        format=options.fmt,
        dtype=options.dtype,
        dry_run=options.dry_run,
        plan=None,  # type: ignore[arg-type]
        notices=list(notices),
        names=options.names,
        rotary=options.rotary,
        crc=options.crc,
        unmapped=unmapped,
        split=_split(specs, options.fmt),
    )
    return plan, result


# ------------------------------------------------------------------ from-ckpt


class _CkptCRC:
    """A tap that checks the checkpoint's CRC trailer before the output is renamed (the reads of the
    conversion already covered the bytes when every tensor was converted in order)."""

    def __init__(self, src: TensorSource):
        self.files = src.files

    def feed(self, name: str, tensor: torch.Tensor) -> None:
        pass

    def finish(self) -> Check | None:
        for f in self.files:
            if getattr(f, "verify_crc", None) and f.verify_crc():
                return Check("crc", "ok", f"the CRC trailer of {f.path.name} matches")
        return None


def _config(
    options: FromCkptOptions, shapes: dict, dtype: torch.dtype
) -> tuple[dict, str, list[Notice], list[AuxCopy]]:
    """(config, where it came from, notices, files to carry) for the output folder."""
    if options.config is None:
        cfg, guessed = guessed_config(shapes, dtype, options.source)
        return (
            cfg,
            "derived",
            [
                Notice.warning(
                    "config.json derived from the tensor shapes; guessed: "
                    + ", ".join(guessed)
                    + " (pass --config with the original "
                    "config.json to be sure)"
                )
            ],
            [],
        )
    where = Path(options.config)
    folder = where if where.is_dir() else None
    path = where / "config.json" if folder is not None else where
    if folder is not None and not path.is_file():
        raise InputError("no config.json in this folder", path=where, hint="pass a config.json or a model folder")
    cfg = read_json(path, what="the config")
    if not isinstance(cfg, dict):
        raise InputError("not a config.json (expected a JSON object)", path=path)
    check_config(cfg, shapes, path)
    aux = [AuxCopy(folder, ("generation_config.json",) + TOKENIZER_FILES)] if folder is not None else []
    return cfg, str(path), [], aux


def from_ckpt(options: FromCkptOptions, *, progress: ProgressFactory | None = None) -> CkptResult:
    """Convert a MindSpore checkpoint to a Hugging Face folder; every check runs before the first tensor is read."""
    dtype = _dtype(options)
    _choice(options.names, FROM_NAMES, "--names")
    _choice(options.rotary, ROTARY_LAYOUTS, "--rotary")
    _choice(options.fmt, ("safetensors", "bin"), "--format")
    key = None
    if options.dec_key is not None:
        from llmkit.io.mindspore.keys import read_key

        key = read_key(options.dec_key, options.dec_mode, flag="--dec-key")
    src = open_source(options.source, ckpt_key=key)
    try:
        if src.layout != "ckpt":
            raise InputError(
                f"not a MindSpore checkpoint (this is {src.layout})",
                path=options.source,
                hint="pass a .ckpt file; to convert a Hugging Face model use llmkit to-ckpt",
            )
        plan, result = _from_ckpt_plan(options, src, dtype)
    except BaseException:
        src.close()
        raise
    return _finish(options, plan, result, progress)


def _from_names(options: FromCkptOptions, src: TensorSource) -> tuple[dict, dict, list[str], list[Notice]]:
    """(output name -> stored name, output name -> HF name, the tensors with no HF name, notices)."""
    src_of: dict[str, str] = {}  # output name -> stored name
    hf_of: dict[str, str] = {}  # output name -> HF name (for the rotary rows)
    unmapped: list[str] = []
    for name in src.keys():
        hf = llama_hf_name(name)
        if hf is None:
            unmapped.append(name)
            if options.names == "hf":
                continue
        out = name if options.names == "keep" else hf
        assert out is not None
        if out in src_of:
            raise InputError(
                f"tensors {src_of[out]!r} and {name!r} both become {out!r}",
                path=options.source,
                hint="pass --names keep to keep the stored names",
            )
        src_of[out] = name
        hf_of[out] = hf or name
    notices: list[Notice] = []
    if unmapped:
        what = f"{len(unmapped)} tensor(s) are not LLaMA weights: {_few(unmapped)}"
        if options.strict:
            raise InputError(what, path=options.source, hint="drop --strict to leave them out, or use --names keep")
        if options.names == "hf":
            notices += _left_out(unmapped)
    return src_of, hf_of, unmapped, notices


def _left_out(unmapped: list[str]) -> list[Notice]:
    """The notices for tensors from-ckpt leaves out, each kind named by what its names say it is."""
    state = [n for n in unmapped if is_training_state(n)]
    buffers = [n for n in unmapped if is_buffer(n)]
    other = [n for n in unmapped if n not in state and n not in buffers]
    keep = "--names keep writes everything"
    notices = []
    if state:
        notices.append(
            Notice.info(
                f"{len(state)} training-state tensor(s) (optimizer moments, step and loss-scale "
                f"counters) left out: {_few(state)} ({keep})"
            )
        )
    if buffers:
        notices.append(
            Notice.info(f"{len(buffers)} rotary buffer(s) left out (transformers computes them): {_few(buffers)}")
        )
    if other:
        notices.append(
            Notice.warning(
                f"{len(other)} tensor(s) are neither LLaMA weights nor training state: {_few(other)}; left out ({keep})"
            )
        )
    return notices


def _from_ckpt_plan(options: FromCkptOptions, src: TensorSource, dtype: torch.dtype | None) -> tuple[Plan, CkptResult]:
    src_of, hf_of, unmapped, notices = _from_names(options, src)
    hf_shapes = {hf: src.info(n).shape for n in src.keys() if (hf := llama_hf_name(n)) is not None}
    first = src.info(next(iter(src_of.values()))).dtype if src_of else torch.float16
    out_dtype_cfg = dtype or first
    cfg, config_from, cfg_notices, aux = _config(options, hf_shapes, out_dtype_cfg)
    described = "the derived config" if config_from == "derived" else f"the config {config_from}"
    llama_shapes(cfg, None if config_from == "derived" else config_from)  # the output's config needs every size
    check_tensors(
        {n: tuple(src.info(n).shape) for n in src.keys()},
        path=options.source,
        cfg=cfg,
        config_path=None if config_from == "derived" else config_from,
        described=described,
    )
    notices += cfg_notices
    ckpt_file = src.files[0]
    unverified = ckpt_file.integrity_warning() if isinstance(ckpt_file, CkptFile) else None
    if unverified is not None:
        notices.append(Notice.warning(unverified))
    cfg = dict(cfg)
    for key in [k for k in ("torch_dtype", "dtype") if k in cfg] or ["torch_dtype"]:  # the weights' dtype
        cfg[key] = CONFIG_NAMES.get(out_dtype_cfg, cfg.get(key))
    transform = lambda hf_name, t: t
    if options.rotary == "meta":
        heads = _heads(cfg, options.config or options.source, "--rotary meta")
        transform = _rotary(heads, permute_meta_to_hf)

    def out_dtype(name: str) -> torch.dtype:
        d = src.info(name).dtype
        return dtype if dtype is not None and d.is_floating_point else d

    def produce(out: str) -> torch.Tensor:
        name = src_of[out]
        return transform(hf_of[out], src.get(name).to(out_dtype(name)))

    specs = [TensorSpec(out, out_dtype(name), src.info(name).shape) for out, name in src_of.items()]
    files = config_files(cfg)
    files["config.json"] = (json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
    if any(a.folder and (a.folder / "generation_config.json").is_file() for a in aux):
        files.pop("generation_config.json")
    largest = max((s.nbytes for s in specs), default=0)
    if getattr(src.files[0], "encryption", None):
        from llmkit.io.mindspore.crypto import BLOCK_PLAIN

        largest += 2 * BLOCK_PLAIN  # one decrypted block cached, one read
    plan = Plan(
        job="from-ckpt",
        output=Path(options.output),
        fmt=options.fmt,
        specs=specs,
        produce=produce,
        reads=lambda out: [(src, src_of[out])],
        inputs=[src.path]
        + [a.folder for a in aux if a.folder is not None]
        + ([Path(options.config)] if options.config else []),
        input_bytes=sum(src.info(n).nbytes for n in src_of.values()),
        working_set_bytes=3 * largest,
        label="converting",
        aux=aux,
        files=files,
        sink_options={"shard_size": options.shard_size},
        notices=notices,
        taps=[_CkptCRC(src)],
        sources=[src],
    )
    result = CkptResult(
        command="from-ckpt",
        source=str(options.source),
        output=str(options.output),
        format=options.fmt,
        dtype=options.dtype,
        dry_run=options.dry_run,
        plan=None,  # type: ignore
        notices=list(notices),
        names=options.names,
        rotary=options.rotary,
        crc=getattr(src.files[0], "crc", None) is not None,
        unmapped=unmapped,
        split=[n for n in src.keys() if src.files[0].records(n) > 1],  # type: ignore[attr-defined]
        config_from=config_from,
        encryption=getattr(src.files[0], "encryption", None),
    )
    return plan, result
