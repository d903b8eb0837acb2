"""``from-ckpt``: a MindSpore ``.ckpt`` -> a Hugging Face LLaMA folder, as a plan on the one runner (see
:mod:`llmkit.convert.ckpt`): HF names, the config given or derived, the CRC trailer judged before the rename."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from llmkit.convert import ckpt_options
from llmkit.convert.ckpt_options import FROM_NAMES, CkptResult, FromCkptOptions
from llmkit.errors import InputError
from llmkit.io.core.dtypes import CONFIG_NAMES
from llmkit.io.core.files import TOKENIZER_FILES
from llmkit.io.core.jsonfile import read_json
from llmkit.io.core.llama_tensors import check_tensors
from llmkit.io.core.llama_weights import is_buffer, is_training_state, llama_shapes
from llmkit.io.core.source import TensorSource, open_model, require_layout
from llmkit.io.core.spec import TensorSpec
from llmkit.io.meta.as_hf import config_files
from llmkit.io.meta.names import permute_meta_to_hf
from llmkit.io.mindspore.mindformers import check_config, guessed_config, llama_hf_name
from llmkit.outputs import WEIGHT_FORMATS, job_sink_options
from llmkit.pipeline import AuxCopy, Check, Notice, Plan, ProgressFactory


class _CkptCRC:
    """A tap that checks the checkpoint's CRC trailer before the output is renamed (the reads of the
    conversion already covered the bytes when every tensor was converted in order)."""

    reads_output = False  # judged on the inputs: with --ray the driver reads what no task covered for it

    def __init__(self, src: TensorSource):
        self.files = src.files

    def feed(self, name: str, tensor: torch.Tensor) -> None:
        pass

    def finish(self) -> Check | None:
        for f in self.files:
            if f.verify_crc():
                return Check("crc", "ok", f"the CRC trailer of {f.path.name} matches")
        return None


def from_ckpt(options: FromCkptOptions, *, progress: ProgressFactory | None = None) -> CkptResult:
    """Convert a MindSpore checkpoint to a Hugging Face folder; every check runs before the first tensor is read."""
    dtype = ckpt_options.checked_dtype(options, FROM_NAMES, WEIGHT_FORMATS)
    key = ckpt_options.read_ckpt_key(options.dec_key, options.dec_mode, "--dec-key")
    hint = "pass a .ckpt file; to convert a Hugging Face model use llmkit to-ckpt"
    refuse = require_layout("ckpt", "MindSpore checkpoint", options.source, hint)
    # completeness is judged below against the config the output gets (given or derived)
    src = open_model(options.source, key=key, refuse=refuse, complete=False)
    with src.closed_on_error():
        plan, unmapped, config_from = _from_ckpt_plan(options, src, dtype)
    split = [n for n in src.keys() if src.records(n) > 1]
    crc, encryption = src.has_crc, src.encryption
    fields = {"crc": crc, "unmapped": unmapped, "split": split, "config_from": config_from, "encryption": encryption}
    return ckpt_options.run_ckpt("from-ckpt", plan, options, progress, **fields)


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
        what = f"{len(unmapped)} tensor(s) are not LLaMA weights: {ckpt_options.few(unmapped)}"
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
                f"counters) left out: {ckpt_options.few(state)} ({keep})"
            )
        )
    if buffers:
        notices.append(
            Notice.info(
                f"{len(buffers)} rotary buffer(s) left out (transformers computes them): {ckpt_options.few(buffers)}"
            )
        )
    if other:
        notices.append(
            Notice.warning(
                f"{len(other)} tensor(s) are neither LLaMA weights nor training state: {ckpt_options.few(other)}; left out ({keep})"
            )
        )
    return notices


def _given_config(options: FromCkptOptions, shapes: dict) -> tuple[dict, str, list[AuxCopy]]:
    """``--config``: a config.json, or a model folder (its generation config and tokenizer are carried)."""
    assert options.config is not None
    where = Path(options.config)
    folder = where if where.is_dir() else None
    path = where / "config.json" if folder is not None else where
    if folder is not None and not path.is_file():
        raise InputError("no config.json in this folder", path=where, hint="pass a config.json or a model folder")
    cfg = read_json(path, what="the config")
    if not isinstance(cfg, dict):
        raise InputError("not a config.json (expected a JSON object)", path=path)
    check_config(cfg, shapes, path)
    aux = [AuxCopy(folder, ("generation_config.json", *TOKENIZER_FILES))] if folder is not None else []
    return cfg, str(path), aux


def _config(
    options: FromCkptOptions, shapes: dict, dtype: torch.dtype
) -> tuple[dict, str, list[Notice], list[AuxCopy]]:
    """(config, where it came from, notices, files to carry) for the output folder."""
    if options.config is not None:
        cfg, config_from, aux = _given_config(options, shapes)
        return cfg, config_from, [], aux
    cfg, guessed = guessed_config(shapes, dtype, options.source)
    notice = Notice.warning(
        "config.json derived from the tensor shapes; guessed: "
        + ", ".join(guessed)
        + " (pass --config with the original config.json to be sure)"
    )
    return cfg, "derived", [notice], []


def _output_config(
    options: FromCkptOptions, src: TensorSource, src_of: dict[str, str], dtype: torch.dtype | None
) -> tuple[dict, str, list[Notice], list[AuxCopy]]:
    """The output's config (given or derived, its dtype the weights'), checked against every stored tensor:
    (config, where it came from, notices, files to carry)."""
    hf_shapes = {hf: src.info(n).shape for n in src.keys() if (hf := llama_hf_name(n)) is not None}
    first = src.info(next(iter(src_of.values()))).dtype if src_of else torch.float16
    out_dtype = dtype or first
    cfg, config_from, notices, aux = _config(options, hf_shapes, out_dtype)
    described = "the derived config" if config_from == "derived" else f"the config {config_from}"
    llama_shapes(cfg, None if config_from == "derived" else config_from)  # the output's config needs every size
    check_tensors(
        {n: tuple(src.info(n).shape) for n in src.keys()},
        path=options.source,
        cfg=cfg,
        config_path=None if config_from == "derived" else config_from,
        described=described,
    )
    cfg = dict(cfg)
    for key in [k for k in ("torch_dtype", "dtype") if k in cfg] or ["torch_dtype"]:  # the weights' dtype
        cfg[key] = CONFIG_NAMES.get(out_dtype, cfg.get(key))
    return cfg, config_from, notices, aux


def _from_ckpt_plan(
    options: FromCkptOptions, src: TensorSource, dtype: torch.dtype | None
) -> tuple[Plan, list[str], str]:
    """The plan, the stored tensors with no HF name, and where the output's config came from."""
    src_of, hf_of, unmapped, notices = _from_names(options, src)
    cfg, config_from, cfg_notices, aux = _output_config(options, src, src_of, dtype)
    notices += cfg_notices + [Notice.warning(w) for w in src.integrity_warnings()]
    transform: ckpt_options.RowTransform = ckpt_options.unchanged
    if options.rotary == "meta":
        heads = ckpt_options.config_heads(cfg, options.config or options.source, "--rotary meta")
        transform = ckpt_options.rotary_rows(heads, permute_meta_to_hf)

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
    cache = 0
    if src.encryption:
        from llmkit.io.mindspore.crypto import BLOCK_PLAIN

        cache = 2 * BLOCK_PLAIN  # one decrypted block cached, one read
    plan = ckpt_options.renaming_plan(
        "from-ckpt",
        options,
        src,
        specs,
        src_of,
        produce,
        cache_bytes=cache,
        inputs=[src.path, *(a.folder for a in aux if a.folder is not None)]
        + ([Path(options.config)] if options.config else []),
        input_bytes=sum(src.info(n).nbytes for n in src_of.values()),
        aux=aux,
        files=files,
        sink_options=job_sink_options(options),
        notices=notices,
        taps=[_CkptCRC(src)],
    )
    return plan, unmapped, config_from
