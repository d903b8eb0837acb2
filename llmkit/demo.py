"""``llmkit demo``: the whole lifecycle on a generated tiny LLaMA, each step checked independently.

Every step produces something with llmkit and checks it against a reference that llmkit did not
compute: transformers' own model and loader, torch's own ``torch.load``, the published formulas.

Steps register themselves with :func:`demo_step`; the core steps live here, each job adds its own
in ``llmkit/demo_steps/<job>.py`` (discovered automatically), ordered by their ``order`` number.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llmkit.errors import CheckFailed
from llmkit.io import ShardedWriter, TensorSpec, open_source
from llmkit.io.core.source import TensorSource


@dataclass
class DemoStep:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass
class DemoResult:
    workdir: str
    ok: bool
    steps: list[DemoStep] = field(default_factory=list)


@dataclass
class DemoContext:
    """What steps share: the work folder, the tiny base model and its reference state dict. ``force``:
    every job a step runs may replace its own output of an earlier demo run (``llmkit demo --force``)."""

    workdir: Path
    base: Path
    force: bool = False
    reference: dict[str, torch.Tensor] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)  # results later steps build on


StepFn = Callable[[DemoContext], str]
_STEPS: list[tuple[int, str, StepFn]] = []


def demo_step(order: int, name: str) -> Callable[[StepFn], StepFn]:
    """Register a demo step. It returns a one-line detail or raises CheckFailed."""

    def register(fn: StepFn) -> StepFn:
        _STEPS.append((order, name, fn))
        return fn

    return register


def assert_same_tensors(src: TensorSource, expected: dict[str, torch.Tensor], what: str) -> None:
    """Bit-exact equality of every tensor (names, dtypes, shapes, values) or CheckFailed."""
    if set(src.keys()) != set(expected):
        diff = sorted(set(src.keys()) ^ set(expected))
        raise CheckFailed(f"{what}: tensor names differ, e.g. {diff[:3]}")
    for name, tensor in src:
        ref = expected[name]
        if tensor.dtype != ref.dtype or tensor.shape != ref.shape or not torch.equal(tensor, ref):
            raise CheckFailed(f"{what}: tensor {name} differs from the reference")


def transformers_logits(model_dir: Path) -> torch.Tensor:
    """Logits of a fixed prompt, computed by transformers itself (the independent reference)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok("知识 抽取 llama model", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


# ------------------------------------------------------------------ core steps


@demo_step(10, "generate tiny LLaMA")
def _generate(ctx: DemoContext) -> str:
    from transformers import AutoTokenizer

    from llmkit.tiny import save_tiny_model

    ctx.reference.update(save_tiny_model(ctx.base, "safetensors", seed=0))
    tok = AutoTokenizer.from_pretrained(ctx.base)
    rows = ctx.reference["model.embed_tokens.weight"].shape[0]
    if len(tok) != rows:
        raise CheckFailed(f"tokenizer has {len(tok)} tokens, the embedding {rows} rows")
    n = sum(t.numel() for t in ctx.reference.values())
    return f"{len(ctx.reference)} tensors, {n:,} parameters, tokenizer of {len(tok)} tokens (offline)"


@demo_step(20, "read every layout")
def _read_layouts(ctx: DemoContext) -> str:
    from llmkit.tiny import LAYOUTS, TINY_HEADS, hf_to_meta_state, save_tiny_model

    for layout in LAYOUTS:
        folder = ctx.workdir / "layouts" / layout
        state = save_tiny_model(folder, layout, seed=0)
        expected = hf_to_meta_state(state, TINY_HEADS) if layout.startswith("meta") else state
        with open_source(folder) as src:
            assert_same_tensors(src, expected, layout)
    return f"{len(LAYOUTS)} layouts read bit-exactly: {', '.join(LAYOUTS)}"


@demo_step(30, "inspect")
def _inspect(ctx: DemoContext) -> str:
    from llmkit.summary import summarize

    s = summarize(ctx.base)
    expected = sum(t.numel() for t in ctx.reference.values())
    if s.parameters != expected or s.vocab_size != ctx.reference["model.embed_tokens.weight"].shape[0]:
        raise CheckFailed(f"inspect says {s.parameters} parameters / vocab {s.vocab_size}")
    return f"{s.layout}, {s.parameters:,} parameters, vocab {s.vocab_size}, {s.architecture}"


@demo_step(40, "re-shard bin -> safetensors")
def _reshard(ctx: DemoContext) -> str:
    out = ctx.workdir / "resharded"
    with open_source(ctx.workdir / "layouts" / "bin-sharded") as src:
        specs = [TensorSpec(i.name, i.dtype, i.shape) for i in src.infos()]
        with ShardedWriter(out, specs, shard_size=100_000, force=ctx.force) as writer:
            for name, tensor in src:
                writer.write(name, tensor)
            writer.copy_aux_files(src.folder)
        shards = len([n for n in writer.files if n.endswith(".safetensors")])
    if not torch.equal(transformers_logits(ctx.base), transformers_logits(out)):
        raise CheckFailed("transformers gives different logits for the re-sharded model")
    return f"bin shards -> {shards} safetensors shards; transformers logits identical"


# ------------------------------------------------------------------ runner


def _load_job_steps() -> None:
    import llmkit.demo_steps as pkg

    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)):
        importlib.import_module(f"{pkg.__name__}.{mod}")


def run_demo(workdir: Path, *, force: bool = False, on_step: Callable[[DemoStep], None] | None = None) -> DemoResult:
    """Run every registered step in order in ``workdir``; stop at the first failure. ``force``: the jobs may
    replace the outputs an earlier run left there."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr belongs to llmkit's own progress lines
    hf_logging.set_verbosity_error()
    _load_job_steps()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(workdir=workdir, base=workdir / "tiny-llama", force=force)
    steps: list[DemoStep] = []
    for _, name, fn in sorted(_STEPS, key=lambda s: s[0]):
        start = time.perf_counter()
        try:
            detail, ok = fn(ctx), True
        except CheckFailed as e:
            detail, ok = str(e), False
        step = DemoStep(name, ok, detail, round(time.perf_counter() - start, 3))
        steps.append(step)
        if on_step:
            on_step(step)
        if not ok:
            break  # later steps build on this one
    return DemoResult(workdir=str(workdir), ok=all(s.ok for s in steps), steps=steps)
