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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from llmkit.errors import InputError
from llmkit.io.core.dtypes import DTYPE_CHOICES
from llmkit.io.core.files import CONFIG_FILES, TOKENIZER_FILES
from llmkit.io.core.source import STDIN, TensorSource, open_model, require_layout
from llmkit.io.core.spec import TensorSpec
from llmkit.io.meta.as_hf import MetaHFView, open_as_hf, tokenizer_model
from llmkit.outputs import WEIGHT_FORMATS, job_sink_options
from llmkit.pipeline import AuxCopy, Check, Notice, Plan, PlanReport, PlanResult, ProgressFactory, run_plan
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
    outtype: str | None = None  # fmt gguf: the GGUF tensor type (None: f16)
    split_max_size: int = 0  # fmt gguf: bytes per split file (0: one file)


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


@dataclass(kw_only=True)
class ConvertResult(PlanResult):
    """Result of ``from-meta`` / ``to-meta`` (and, extended, ``to-ckpt`` / ``from-ckpt``). Sizes in bytes.
    ``plan``: the dry-run report every tensor job shares (docs/json.md), for a run too."""

    plan: PlanReport
    command: str
    source: str
    format: str
    dtype: str
    tokenizer_from: str | None = None


def cast_dtype(name: str) -> torch.dtype | None:
    """The ``--dtype`` of a conversion: None for ``keep`` (each tensor's own)."""
    if name not in DTYPE_CHOICES:
        raise InputError(f"unknown dtype {name!r}", hint=f"use one of {', '.join(DTYPE_CHOICES)}")
    return DTYPE_CHOICES[name]


def _cast_plan(job: str, src: TensorSource, output: Path, dtype: torch.dtype | None, fmt: str, **fields: Any) -> Plan:
    """Every tensor of ``src`` in its order, cast once to ``dtype`` (or kept), into the plan's sink."""

    def out_dtype(name: str) -> torch.dtype:
        d = src.info(name).dtype
        return dtype if dtype is not None and d.is_floating_point else d

    def produce(name: str) -> torch.Tensor:
        return src.get(name).to(out_dtype(name))

    infos = src.infos()
    return Plan(
        job=job,
        output=Path(output),
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


def given_tokenizer(path: Path) -> AuxCopy:
    """``--tokenizer``: a ``tokenizer.model`` file (carried alone) or a tokenizer folder (its tokenizer files)."""
    t = Path(path)
    if t.is_dir():
        if not any((t / n).is_file() for n in TOKENIZER_FILES):
            raise InputError("no tokenizer files in this folder", path=t, hint="pass tokenizer.model or its folder")
        return AuxCopy(t, TOKENIZER_FILES)
    if not t.is_file() or t.name != "tokenizer.model":
        raise InputError("not a tokenizer.model file", path=t, hint="pass tokenizer.model or its folder")
    return AuxCopy(t.parent, ("tokenizer.model",))


def _tokenizer(options: FromMetaOptions, folder: Path) -> tuple[AuxCopy | None, list[Notice]]:
    """tokenizer.model from --tokenizer (a file or a folder), the Meta folder, or its parent."""
    if options.tokenizer is not None:
        return given_tokenizer(options.tokenizer), []
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

    reads_output = False  # judged on the inputs: with --ray on the driver, never in a task

    def __init__(self, folder: Path, files: list[str]):
        from llmkit import cluster
        from llmkit.verify import published_matches

        self.matches: list = []
        if cluster.current_piece() is not None:  # a Ray task writing one file: the driver hashes the original
            return
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
    command: str,
    options: FromMetaOptions | ToMetaOptions,
    plan: Plan,
    progress: ProgressFactory | None,
    tokenizer_from: str | None,
) -> ConvertResult:
    result = run_plan(
        plan,
        options,
        lambda report, sink: ConvertResult(
            plan=report,
            command=command,
            source=str(options.source),
            format=plan.fmt,
            dtype=options.dtype,
            tokenizer_from=tokenizer_from,
        ),
        progress,
    )
    for c in result.checks:  # the published-original tap's (planning adds none)
        if c.status != "ok":
            result.notices.append(
                Notice.warning(
                    f"{c.name}: {c.detail} (not Meta's published LLaMA-1 7B file: LLaMA-2 7B, or a damaged download)"
                )
            )
    return result


def from_meta(options: FromMetaOptions, *, progress: ProgressFactory | None = None) -> ConvertResult:
    """Convert Meta originals to a Hugging Face folder; every check runs before the first tensor is read."""
    dtype = cast_dtype(options.dtype)
    if options.fmt not in WEIGHT_FORMATS:
        raise InputError(f"unknown format {options.fmt!r}", hint=f"use one of {', '.join(WEIGHT_FORMATS)}")
    sink_options = job_sink_options(options)
    hint = "pass the folder holding consolidated.NN.pth and params.json"
    refuse = require_layout("meta-pth", "Meta checkpoint", options.source, hint)
    # only a Meta folder passes refuse, and open_as_hf makes it the view (which checked it complete)
    view = cast(MetaHFView, open_model(options.source, refuse=refuse, view=open_as_hf))
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
            options.output,
            dtype,
            options.fmt,
            aux=[config, *([tok] if tok else [])],
            notices=notices,
            sink_options=sink_options,
        )
        if tok is not None and tok.folder is not None:
            plan.inputs.append(tok.folder)
        if _may_be_llama1_7b(view):
            plan.taps.append(_PublishedOriginal(folder, [p.name for p in view.weight_files]))
    except BaseException:
        view.close()  # also removes the view's derived-config folder
        raise
    return _run("from-meta", options, plan, progress, str(tok.folder) if tok else None)


def to_meta(options: ToMetaOptions, *, progress: ProgressFactory | None = None) -> ConvertResult:
    """Convert a Hugging Face LLaMA to Meta shards + params.json (the meta-pth sink)."""
    dtype = cast_dtype(options.dtype)
    if options.shards is not None and options.shards < 1:
        raise InputError(f"--shards must be at least 1, got {options.shards}")

    def refuse(src: TensorSource) -> InputError | None:
        if src.adapter is not None or src.layout == "meta-pth":
            return InputError(
                f"not a Hugging Face model (this is {'an adapter' if src.adapter else 'Meta layout'})",
                path=options.source,
                hint="pass a Hugging Face LLaMA folder",
            )
        if src.config() is None:
            return InputError(
                "no config.json beside the weights",
                path=options.source,
                hint="to-meta needs the model's config.json for params.json",
            )
        return None

    src = open_model(options.source, refuse=refuse)  # a complete LLaMA by its config.json, once
    folder = cast(Path, src.folder)  # a config.json was found beside the weights (refuse)
    try:
        plan = _cast_plan(
            "to-meta",
            src,
            options.output,
            dtype,
            "meta-pth",
            sink_options={"config": src.config(), "shards": options.shards, "config_path": folder / "config.json"},
            aux=[AuxCopy(folder, TOKENIZER_FILES)],
        )
    except BaseException:
        src.close()
        raise
    shown = str(options.source) if str(options.source) == STDIN else str(folder)  # a stream's files: the stream's
    return _run("to-meta", options, plan, progress, shown)
