"""``from-meta`` / ``to-meta``: LLaMA-1 originals ⇄ Hugging Face, exact, dtype kept, streaming.

Both are plans over ``llmkit.io`` formats run by the one runner (``llmkit.pipeline``):

- from-meta: the source is :class:`~llmkit.io.meta.as_hf.MetaHFView` (shards joined, wq/wk permuted to
  rotate-half, HF names and order); the sink is ``safetensors``/``bin``; ``config.json`` and
  ``generation_config.json`` are derived (``llmkit.io.meta.as_hf.hf_config``); the tokenizer is
  ``tokenizer.model`` from ``--tokenizer``, the Meta folder, or its parent (Meta's download layout).
- to-meta: the source is any HF LLaMA; the sink is ``meta-pth`` (un-permute, split, ``params.json``), the
  same code path as ``merge-lora --format pth``.

One rounding at most: ``--dtype keep`` (the default) copies bytes; another dtype is one cast per tensor.
Known originals (the LLaMA-1 7B ``consolidated.00.pth`` of ``llmkit/checksums/llama-7b-meta.md5``) are hashed
in a thread beside the conversion and judged before the rename; a mismatch is a warning (LLaMA-2 7B
ships a file of the same name).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmkit.errors import InputError
from llmkit.io.core.dtypes import DTYPE_CHOICES
from llmkit.io.core.files import CONFIG_FILES, TOKENIZER_FILES
from llmkit.io.core.llama_tensors import check_source
from llmkit.io.core.source import TensorSource, open_source
from llmkit.io.core.spec import TensorSpec
from llmkit.io.meta.as_hf import MetaHFView, open_as_hf, tokenizer_model
from llmkit.pipeline import (
    AuxCopy,
    Check,
    Notice,
    Plan,
    PlanReport,
    ProgressFactory,
    Result,
    execute,
    open_plan_sink,
    plan_report,
)
from llmkit.units import DEFAULT_SHARD_SIZE

LLAMA_7B_TABLE = "llama-7b-meta"  # llmkit/checksums/llama-7b-meta.md5: Meta's LLaMA-1 7B consolidated.00.pth


@dataclass(frozen=True)
class FromMetaOptions:
    """``llmkit from-meta``: Meta ``consolidated.NN.pth`` + ``params.json`` -> a Hugging Face LLaMA folder."""

    source: Path
    output: Path
    dtype: str = "keep"
    fmt: str = "safetensors"
    shard_size: int = DEFAULT_SHARD_SIZE
    tokenizer: Path | None = None
    force: bool = False
    dry_run: bool = False


@dataclass(frozen=True)
class ToMetaOptions:
    """``llmkit to-meta``: a Hugging Face LLaMA -> ``consolidated.NN.pth`` (``shards``; default Meta's count
    for the hidden size) + ``params.json``."""

    source: Path
    output: Path
    shards: int | None = None
    dtype: str = "keep"
    force: bool = False
    dry_run: bool = False


@dataclass
class ConvertResult(Result):
    """Result of ``from-meta`` / ``to-meta``. Sizes in bytes."""

    command: str
    source: str
    output: str
    format: str
    dtype: str
    dry_run: bool
    plan: PlanReport  # the dry-run report every tensor job shares (docs/json.md)
    files: list[str] = field(default_factory=list)
    tokenizer_from: str | None = None
    seconds: float = 0.0


def _dtype(options: FromMetaOptions | ToMetaOptions) -> torch.dtype | None:
    if options.dtype not in DTYPE_CHOICES:
        raise InputError(f"unknown dtype {options.dtype!r}", hint=f"use one of {', '.join(DTYPE_CHOICES)}")
    return DTYPE_CHOICES[options.dtype]


def _cast_plan(job: str, src: TensorSource, options, dtype: torch.dtype | None, fmt: str, **fields) -> Plan:
    """Every tensor of ``src`` in its order, cast once to ``dtype`` (or kept), into the plan's sink."""

    def out_dtype(name: str) -> torch.dtype:
        d = src.info(name).dtype
        return dtype if dtype is not None and d.is_floating_point else d

    def produce(name: str) -> torch.Tensor:
        return src.get(name).to(out_dtype(name))

    infos = src.infos()
    return Plan(
        job=job,
        output=Path(options.output),
        fmt=fmt,
        specs=[TensorSpec(i.name, out_dtype(i.name), i.shape) for i in infos],
        produce=produce,
        reads=lambda name: [(src, name)],
        inputs=[p for p in (src.path, src.folder) if p is not None],
        input_bytes=src.total_bytes,
        working_set_bytes=3 * max((i.nbytes for i in infos), default=0),
        label="converting",
        sources=[src],
        **fields,
    )


def _tokenizer(options: FromMetaOptions, folder: Path) -> tuple[AuxCopy | None, list[Notice]]:
    """tokenizer.model from --tokenizer (a file or a folder), the Meta folder, or its parent."""
    if options.tokenizer is not None:
        t = Path(options.tokenizer)
        if t.is_dir():
            if not any((t / n).is_file() for n in TOKENIZER_FILES):
                raise InputError("no tokenizer files in this folder", path=t, hint="pass tokenizer.model or its folder")
            return AuxCopy(t, TOKENIZER_FILES), []
        if not t.is_file() or t.name != "tokenizer.model":
            raise InputError("not a tokenizer.model file", path=t, hint="pass tokenizer.model or its folder")
        return AuxCopy(t.parent, ("tokenizer.model",)), []
    tok = tokenizer_model(folder)
    if tok is not None:
        return AuxCopy(tok.parent, ("tokenizer.model",)), []
    return None, [
        Notice.warning(f"no tokenizer.model in {folder} or its parent; the output has no tokenizer (pass --tokenizer)")
    ]


def _may_be_llama1_7b(view: MetaHFView) -> bool:
    """One 4096-wide shard: the only original a table publishes (``llmkit/checksums/llama-7b-meta.md5``)."""
    return view.info("model.embed_tokens.weight").shape[1] == 4096 and len(view.files) == 1


class _PublishedOriginal:
    """A tap that hashes Meta's published original(s) in a thread while the conversion streams, and judges
    the digest before the rename (``llama-7b-meta``; a mismatch is a warning, not a failure)."""

    def __init__(self, folder: Path, files: list[str]):
        from llmkit.verify import published_matches

        self.matches: list = []
        self._thread = threading.Thread(
            target=lambda: self.matches.extend(published_matches(folder, files, {LLAMA_7B_TABLE})),
            name="llmkit-hash-original",
            daemon=True,
        )
        self._thread.start()

    def feed(self, name: str, tensor: torch.Tensor) -> None:
        pass

    def finish(self) -> Check | None:
        self._thread.join()
        return self.matches[0].check() if self.matches else None


def _run(
    command: str, options, plan: Plan, fmt: str, progress: ProgressFactory | None, tokenizer_from: str | None
) -> ConvertResult:
    with plan:
        sink = open_plan_sink(plan, force=options.force)
        report = plan_report(plan, sink)
        result = ConvertResult(
            command=command,
            source=str(options.source),
            output=str(options.output),
            format=fmt,
            dtype=options.dtype,
            dry_run=options.dry_run,
            plan=report,
            tokenizer_from=tokenizer_from,
            notices=list(plan.notices),
            checks=list(plan.checks),
        )
        if options.dry_run:
            return result
        done = execute(plan, sink, progress=progress)
    result.files, result.seconds, result.outputs = done.files, done.seconds, [str(options.output)]
    result.checks += done.checks
    for c in done.checks:
        if c.status != "ok":
            result.notices.append(
                Notice.warning(
                    f"{c.name}: {c.detail} (not Meta's published LLaMA-1 7B file: LLaMA-2 7B, or a damaged download)"
                )
            )
    return result


def from_meta(options: FromMetaOptions, *, progress: ProgressFactory | None = None) -> ConvertResult:
    """Convert Meta originals to a Hugging Face folder; every check runs before the first tensor is read."""
    dtype = _dtype(options)
    if options.fmt not in ("safetensors", "bin"):
        raise InputError(f"unknown format {options.fmt!r}", hint="use safetensors or bin")
    src = open_source(options.source)
    if src.layout != "meta-pth":
        src.close()
        raise InputError(
            f"not a Meta checkpoint (this is {src.layout})",
            path=options.source,
            hint="pass the folder holding consolidated.NN.pth and params.json",
        )
    view = open_as_hf(src)  # closes src on failure
    try:
        folder = view.meta_folder
        tok, notices = _tokenizer(options, folder)
        notices = [Notice.warning(w) for w in view.warnings] + notices  # e.g. an unverified shard order
        # config.json / generation_config.json as the view derived them (the files recover and merge-lora
        # read from a Meta base), with the output dtype written in when one is asked for.
        config = AuxCopy(view.folder, CONFIG_FILES, dtype=dtype)
        plan = _cast_plan(
            "from-meta",
            view,
            options,
            dtype,
            options.fmt,
            aux=[config, *([tok] if tok else [])],
            notices=notices,
            sink_options={"shard_size": options.shard_size},
        )
        if tok is not None:
            plan.inputs.append(tok.folder)
        if _may_be_llama1_7b(view):
            plan.taps.append(_PublishedOriginal(folder, [p.name for p in view.weight_files]))
    except BaseException:
        view.close()  # also removes the view's derived-config folder
        raise
    return _run("from-meta", options, plan, options.fmt, progress, str(tok.folder) if tok else None)


def to_meta(options: ToMetaOptions, *, progress: ProgressFactory | None = None) -> ConvertResult:
    """Convert a Hugging Face LLaMA to Meta shards + params.json (the meta-pth sink)."""
    dtype = _dtype(options)
    if options.shards is not None and options.shards < 1:
        raise InputError(f"--shards must be at least 1, got {options.shards}")
    src = open_source(options.source)
    try:
        if src.adapter is not None or src.layout == "meta-pth":
            raise InputError(
                f"not a Hugging Face model (this is {'an adapter' if src.adapter else 'Meta layout'})",
                path=options.source,
                hint="pass a Hugging Face LLaMA folder",
            )
        cfg = src.config()
        if cfg is None:
            raise InputError(
                "no config.json beside the weights",
                path=options.source,
                hint="to-meta needs the model's config.json for params.json",
            )
        check_source(src, cfg=cfg, config_path=Path(src.folder) / "config.json")  # a complete LLaMA, once
        plan = _cast_plan(
            "to-meta",
            src,
            options,
            dtype,
            "meta-pth",
            sink_options={"config": cfg, "shards": options.shards, "config_path": src.folder / "config.json"},
            aux=[AuxCopy(src.folder, TOKENIZER_FILES)] if src.folder else [],
        )
    except BaseException:
        src.close()
        raise
    return _run("to-meta", options, plan, "meta-pth", progress, str(src.folder) if src.folder else None)
