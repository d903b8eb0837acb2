"""merge-lora as a job on the pipeline: options -> checked inputs -> a Plan -> the one runner.

:func:`open_merge` opens the base and every adapter (headers and mappings only), indexes the adapters
against the base and plans the vocabulary: every check runs before anything is written. The
:class:`MergePlan` it returns turns into a :class:`llmkit.pipeline.Plan` whose ``produce(name)`` is
:meth:`MergePlan.merged` (the base tensor with every adapter applied in order); ``--format pth`` is the
same merge written by the ``meta-pth`` sink (Meta names, rotary un-permute, model-parallel split).

Memory: each base tensor is read once (or not at all when an adapter replaces it whole), every adapter's
delta or replacement is applied, and it is handed to the sink; peak ~ a few copies of the largest tensor.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from llmkit.errors import InputError
from llmkit.io.core.dtypes import DTYPE_CHOICES, dtype_name
from llmkit.io.core.files import CONFIG_FILES, TOKENIZER_FILES
from llmkit.io.core.sink import Sink
from llmkit.io.core.source import STDIN, TensorSource, open_model
from llmkit.io.core.spec import TensorSpec
from llmkit.io.hf.adapter_config import ADAPTER_CONFIG
from llmkit.lora.adapters import Adapter, Resolver, load_adapter
from llmkit.lora.arithmetic import ROUNDING, DeltaBuffer, add_in_fp32, apply_lora, grow_rows
from llmkit.lora.finite import MergeStep, all_finite, refuse_new_non_finite
from llmkit.lora.options import SINK_FORMATS, MergeOptions, check_options
from llmkit.lora.results import MergeResult, adapter_report
from llmkit.lora.tokenizer import has_tokenizer, tokenizer_size
from llmkit.lora.vocab import VocabPlan, plan_vocabulary, vocab_tensors
from llmkit.outputs import weight_sink_options
from llmkit.pipeline import AuxCopy, Check, Notice, Plan, PlanReport, ProgressFactory, run_plan
from llmkit.units import DEFAULT_SHARD_SIZE


class MergePlan:
    """Every input opened and checked, every output tensor planned; nothing written yet.

    Build it with :func:`open_merge`, run it with :meth:`run`. Holds the base and adapter sources open
    (headers and file mappings only) until :meth:`close`.
    """

    def __init__(
        self,
        options: MergeOptions,
        base: TensorSource,
        adapters: list[Adapter],
        vocab: VocabPlan,
        config: dict | None,
        warnings: list[str],
        dropped: list[str],
    ):
        self.options = options
        self.base = base
        self.adapters = adapters
        self.vocab = vocab
        self.config = config
        self.warnings = warnings
        self.dropped = dropped  # base tensors Meta's layout has no place for (--format pth)
        self.out_dtype = DTYPE_CHOICES[options.dtype]
        self._delta = DeltaBuffer()  # the fp32 B @ A of each merged tensor, one buffer for the run

    # ---- shapes and dtypes of the output ----
    def output_dtype(self, name: str) -> torch.dtype:
        info = self.base.info(name)
        if self.out_dtype is None or not info.dtype.is_floating_point:
            return info.dtype
        return self.out_dtype

    def output_shape(self, name: str) -> tuple[int, ...]:
        shape = self.base.info(name).shape
        if name in self.vocab.tensors and self.vocab.after is not None:
            return (self.vocab.after, *shape[1:])
        return shape

    def specs(self) -> list[TensorSpec]:
        return [TensorSpec(n, self.output_dtype(n), self.output_shape(n)) for n in self.base.keys()]

    # ---- one tensor ----
    def _last_replacement(self, name: str) -> int | None:
        return max((i for i, ad in enumerate(self.adapters) if name in ad.replacements), default=None)

    def merged(self, name: str) -> torch.Tensor:
        """Base tensor ``name`` with every adapter applied in order.

        The base tensor is read once, or not at all when an adapter replaces it whole (then only the
        adapters from the last replacing one on matter). A result with NaN or Inf where the base had
        finite values is an :class:`InputError` naming the adapter (:mod:`llmkit.lora.finite`).
        """
        changed = False
        for step, t in self.steps(name):  # noqa: B007 - after the loop t is the output
            changed = changed or step is not None
        if changed and not all_finite(t):
            refuse_new_non_finite(self, name)  # the rare path: raises unless the base had them all already
        return t

    def steps(self, name: str) -> Iterator[tuple[MergeStep, torch.Tensor]]:
        """The merge of ``name`` step by step: (what changed it, the tensor after that step).

        The first step is (None, the base tensor) unless an adapter replaces it whole; then (adapter,
        tensor) per adapter that changes it, ("grow", tensor) when rows are added as the mean, ("cast",
        tensor) for the final dtype. The last tensor is the output.
        """
        dtype = self.output_dtype(name)
        # One rounding (SPEC.md section 3): converting to another dtype (--dtype) works in fp32 and casts once
        # at the end; in the tensor's own dtype each adapter rounds, as peft merging into a model loaded in it.
        work = dtype if dtype == self.base.info(name).dtype else torch.float32
        vocab = name in self.vocab.tensors
        last = self._last_replacement(name)
        t = self.base.get(name) if last is None else None
        if t is not None:
            yield None, t
        for ad in self.adapters[last or 0 :]:
            key, mod, bias = ad.replacements.get(name), ad.modules.get(name), ad.bias_modules.get(name)
            if key is not None:  # replaced whole (its rows were checked against the vocabulary plan)
                t = ad.source.get(key).to(work)
            assert t is not None  # the base tensor, or the replacement of adapters[last]
            if key is None and vocab and ad.vocab_size is not None and ad.vocab_size > t.shape[0]:
                t = grow_rows(t.to(work), ad.vocab_size)
                yield "grow", t
            if mod is not None:
                t = apply_lora(t, ad.source, mod, work, self._delta)
            if bias is not None:
                assert bias.bias_key is not None
                t = add_in_fp32(t, ad.source.get(bias.bias_key).to(torch.float32).mul(bias.scaling), work)
            if key is not None or mod is not None or bias is not None:
                yield ad, t
        assert t is not None  # there is at least one adapter
        final = self.vocab.final_growth
        if vocab and final is not None and final > t.shape[0]:
            t = grow_rows(t.to(work), final)
            yield "grow", t
        if t.dtype != dtype:
            yield "cast", t.to(dtype)  # the one cast (none when nothing changed the tensor's dtype)

    def reads(self, name: str) -> list[tuple[TensorSource, str]]:
        """The (source, tensor) pairs :meth:`merged` reads for ``name``."""
        last = self._last_replacement(name)
        pairs = [(self.base, name)] if last is None else []
        for ad in self.adapters[last or 0 :]:
            mod, bias = ad.modules.get(name), ad.bias_modules.get(name)
            keys = [
                ad.replacements.get(name),
                *((mod.a_key, mod.b_key) if mod else ()),
                bias.bias_key if bias else None,
            ]
            pairs += [(ad.source, k) for k in keys if k is not None]
        return pairs

    # ---- the pipeline plan ----
    def pipeline_plan(self, output: Path) -> Plan:
        """The plan the runner executes: the base's tensors in order, merged, into the format's sink."""
        o = self.options
        specs = self.specs()
        tok = self.vocab.tokenizer_folder if has_tokenizer(self.vocab.tokenizer_folder) else None
        aux = [AuxCopy(tok, TOKENIZER_FILES)] if tok is not None else []
        if o.fmt == "pth":  # config.json becomes params.json: only the tokenizer is carried
            sink_options: dict = {"config": self.config, "shards": o.pth_shards}
        else:
            sink_options = weight_sink_options(
                o.fmt,
                shard_size=o.shard_size or DEFAULT_SHARD_SIZE,
                outtype=o.outtype,
                split_max_size=o.split_max_size,
                name=Path(output).stem,
            )
            changed = self.vocab.after if self.vocab.after != self.vocab.before else None
            aux.insert(0, AuxCopy(self.base.folder, CONFIG_FILES, dtype=self.out_dtype, vocab_size=changed))
        inputs = [self.base.path, self.base.folder, *(a.folder for a in self.adapters), self.vocab.tokenizer_folder]
        read_bytes = {s.name: sum(src.info(k).nbytes for src, k in self.reads(s.name)) for s in specs}
        # alive per tensor: its inputs, the fp32 work tensor and delta, the result; plus one finished tensor
        working = max((read_bytes[s.name] + 8 * math.prod(s.shape) + s.nbytes for s in specs), default=0)
        notices = (
            [Notice.warning("--shard-size does not apply to --format pth (use --pth-shards)")]
            if o.fmt == "pth" and o.shard_size
            else []
        )
        return Plan(
            job="merge-lora",
            output=Path(output),
            fmt=SINK_FORMATS[o.fmt],
            specs=specs,
            produce=self.merged,
            reads=self.reads,
            inputs=[p for p in inputs if p is not None],
            input_bytes=sum(read_bytes.values()),
            working_set_bytes=working + max((s.nbytes for s in specs), default=0),
            label="merging",
            aux=aux,
            sink_options=sink_options,
            checks=self._checks(),
            notices=notices + [Notice.warning(w) for w in self.warnings],
        )

    def _checks(self) -> list[Check]:
        checks = [
            Check(
                f"adapter {a.folder}",
                "ok",
                f"{len(a.modules)} LoRA layer(s) and {len(a.replacements)} saved tensor(s) fit the base",
            )
            for a in self.adapters
        ]
        if self.vocab.before is not None:
            checks.append(
                Check(
                    "vocabulary",
                    "ok",
                    f"{self.vocab.before} -> {self.vocab.after} rows, in adapter order; the output tokenizer matches",
                )
            )
        return checks

    # ---- running ----
    def run(
        self,
        output: str | os.PathLike | None = None,
        *,
        progress: ProgressFactory | None = None,
        on_plan: Callable[[Plan], None] | None = None,
    ) -> MergeResult:
        """Check the destination, then write the merge to ``output`` (default ``options.output``), or with
        ``options.dry_run`` only report what a run would do. ``on_plan`` sees the plan (its notices) first."""
        out = output if output is not None else self.options.output
        if out is None:
            raise InputError("no output folder given", hint="pass -o OUT")
        plan = self.pipeline_plan(Path(out))
        if on_plan is not None:
            on_plan(plan)
        # the destination is refused before any progress
        return run_plan(plan, self.options, lambda report, sink: self._result(plan, report, sink), progress)

    def _result(self, plan: Plan, report: PlanReport, sink: Sink) -> MergeResult:
        """The result as planned (a run adds its files and time): the report shown for a dry run only."""
        return MergeResult(
            base=str(self.base.path),
            format=self.options.fmt,
            dtype=dtype_name(self.out_dtype),
            adapters=[adapter_report(a) for a in self.adapters],
            vocab_before=self.vocab.before,
            vocab_after=self.vocab.after,
            mean_initialised_rows=dict(self.vocab.mean_rows),
            tokenizer_from=self._shown(self.vocab.tokenizer_folder)
            if has_tokenizer(self.vocab.tokenizer_folder)
            else None,
            tensors=report.tensors - len(self.dropped),
            total_bytes=report.output_bytes,
            files=list(sink.files),
            rounding=ROUNDING,
            warnings=[n.text for n in plan.notices if n.level == "warning"],
            free_disk_bytes=report.free_disk_bytes,
            needed_disk_bytes=report.needed_disk_bytes,
            disk_margin_bytes=report.disk_margin_bytes,
            plan=report if self.options.dry_run else None,
        )

    def _shown(self, folder: Path | None) -> str:
        """A folder as the result names it: a stream's side files (its private folder) are the stream's, ``-``."""
        return str(self.base.path) if str(self.base.path) == STDIN and folder == self.base.folder else str(folder)

    def close(self) -> None:
        for a in self.adapters:
            a.close()
        self.base.close()

    def __enter__(self) -> MergePlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ planning


def _open_base(path: Path) -> TensorSource:
    if path.is_dir() and (path / ADAPTER_CONFIG).is_file():
        raise InputError(
            "--base is a LoRA adapter folder, not a model",
            path=path,
            hint="pass the base model as --base and the adapter as --lora",
        )
    from llmkit.io.meta.as_hf import open_as_hf

    # Meta originals as the HF model from-meta writes (no intermediate copy); every weight of the LLaMA its
    # config describes, once, before anything is planned
    return open_model(path, view=open_as_hf)


def _meta_dropped(base: TensorSource, config: dict | None, options: MergeOptions) -> list[str]:
    """``--format pth``: the base tensors Meta's layout leaves out (refuses non-LLaMA names)."""
    if options.fmt != "pth":
        return []
    from llmkit.io.meta.names import hf_to_meta_name

    if config is None:
        raise InputError("--format pth needs the base's config.json (heads, layers)", path=base.path)
    return [name for name in base.keys() if hf_to_meta_name(name) is None]


def open_merge(options: MergeOptions) -> MergePlan:
    """Open and check every input, plan every output tensor. Raises before anything is written.

    Checks: each adapter is a LoRA adapter whose layers exist in the base with the right shapes (else
    "belongs to another model"); saved embedding rows = the adapter's tokenizer size (the 49953/49954
    mix-up); vocabularies only grow along the adapter order; the output tokenizer matches the final rows.
    """
    check_options(options)
    warnings: list[str] = []
    base = _open_base(Path(options.base))
    warnings += [f"{base.path}: {w}" for w in base.warnings]  # e.g. a Meta base's unverified shard order
    loaded: list[Adapter] = []
    try:
        cfg = base.config()  # a config.json that is not a JSON object is an InputError
        resolver = Resolver(base)
        vocab = vocab_tensors(base)
        for f in options.adapters:
            ad = load_adapter(Path(f), base, resolver, (cfg or {}).get("model_type"), vocab, warnings)
            loaded.append(ad)
            if has_tokenizer(ad.folder):
                ad.tokenizer_size = tokenizer_size(ad.folder)
        for src in (base, *(a.source for a in loaded)):  # e.g. a remote file read without a published digest
            warnings += [w for w in src.integrity_warnings() if w not in warnings]
        plan = plan_vocabulary(base, loaded, Path(options.tokenizer) if options.tokenizer else None, warnings)
        dropped = _meta_dropped(base, cfg, options)
        if dropped:
            warnings.append(
                f"{len(dropped)} rotary_emb.inv_freq buffer(s) are not part of Meta's layout and are "
                "left out (as the Chinese-LLaMA-Alpaca script does)"
            )
        return MergePlan(options, base, loaded, plan, cfg, warnings, dropped)
    except BaseException:
        for a in loaded:
            a.close()
        base.close()
        raise


def run(
    options: MergeOptions, *, progress: ProgressFactory | None = None, on_plan: Callable[[Plan], None] | None = None
) -> MergeResult:
    """Merge (or with ``options.dry_run`` only check and plan) on the pipeline runner.

    Peak memory ~ a few copies of the largest tensor; every base tensor is read once.
    """
    with open_merge(options) as merge:
        return merge.run(progress=progress, on_plan=on_plan)


def plan_merge(
    base: str | os.PathLike,
    adapters: list[str | os.PathLike],
    *,
    dtype: str = "keep",
    fmt: str = "safetensors",
    tokenizer: str | os.PathLike | None = None,
    pth_shards: int | None = None,
) -> MergePlan:
    """:func:`open_merge` with keyword arguments (run it later with ``plan.run(out_dir)``)."""
    return open_merge(
        MergeOptions(
            Path(base),
            tuple(Path(a) for a in adapters),
            dtype=dtype,
            fmt=fmt,
            tokenizer=Path(tokenizer) if tokenizer else None,
            pth_shards=pth_shards,
        )
    )


def merge_lora(
    base: str | os.PathLike,
    adapters: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    dtype: str = "keep",
    fmt: str = "safetensors",
    shard_size: int | None = None,
    tokenizer: str | os.PathLike | None = None,
    pth_shards: int | None = None,
    dry_run: bool = False,
    force: bool = False,
    progress: ProgressFactory | None = None,
) -> MergeResult:
    """:func:`run` with keyword arguments: merge ``adapters`` (in order) into ``base``, write ``out_dir``."""
    return run(
        MergeOptions(
            Path(base),
            tuple(Path(a) for a in adapters),
            Path(out_dir),
            dtype=dtype,
            fmt=fmt,
            shard_size=shard_size,
            tokenizer=Path(tokenizer) if tokenizer else None,
            pth_shards=pth_shards,
            dry_run=dry_run,
            force=force,
        ),
        progress=progress,
    )
