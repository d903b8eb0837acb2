"""``llmkit demo``: the whole lifecycle on a generated tiny LLaMA, each step checked independently.

Every step produces something with llmkit and checks it against a reference that llmkit did not
compute: transformers' own model and loader, torch's own ``torch.load``, the published formulas.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from llmkit.errors import CheckFailed
from llmkit.io import ShardedWriter, TensorSpec, open_source
from llmkit.io.sources import TensorSource


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


def _assert_same(src: TensorSource, expected: dict[str, torch.Tensor], what: str) -> None:
    if set(src.keys()) != set(expected):
        diff = sorted(set(src.keys()) ^ set(expected))
        raise CheckFailed(f"{what}: tensor names differ, e.g. {diff[:3]}")
    for name, tensor in src:
        ref = expected[name]
        if tensor.dtype != ref.dtype or tensor.shape != ref.shape or not torch.equal(tensor, ref):
            raise CheckFailed(f"{what}: tensor {name} differs from the reference")


def _logits(model_dir: Path) -> torch.Tensor:
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = tok("知识 抽取 llama model", return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


class _Steps:
    def __init__(self, on_step: Callable[[DemoStep], None] | None):
        self.steps: list[DemoStep] = []
        self.on_step = on_step

    def run(self, name: str, fn: Callable[[], str]) -> bool:
        start = time.perf_counter()
        try:
            detail, ok = fn(), True
        except CheckFailed as e:
            detail, ok = str(e), False
        step = DemoStep(name, ok, detail, round(time.perf_counter() - start, 3))
        self.steps.append(step)
        if self.on_step:
            self.on_step(step)
        return ok


def run_demo(workdir: Path, *, on_step: Callable[[DemoStep], None] | None = None) -> DemoResult:
    """Run every lifecycle step that exists, in ``workdir`` (created; must be empty or absent)."""
    from llmkit.summary import summarize
    from llmkit.tiny import LAYOUTS, TINY_HEADS, hf_to_meta_state, save_tiny_model

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr belongs to llmkit's own progress lines
    hf_logging.set_verbosity_error()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    steps = _Steps(on_step)
    base = workdir / "tiny-llama"
    reference: dict[str, torch.Tensor] = {}

    def generate() -> str:
        from transformers import AutoTokenizer

        reference.update(save_tiny_model(base, "safetensors", seed=0))
        tok = AutoTokenizer.from_pretrained(base)
        if len(tok) != reference["model.embed_tokens.weight"].shape[0]:
            raise CheckFailed(f"tokenizer has {len(tok)} tokens, embedding {reference['model.embed_tokens.weight'].shape[0]}")
        n = sum(t.numel() for t in reference.values())
        return f"{len(reference)} tensors, {n:,} parameters, tokenizer of {len(tok)} tokens (offline)"

    def read_layouts() -> str:
        for layout in LAYOUTS:
            folder = workdir / "layouts" / layout
            state = save_tiny_model(folder, layout, seed=0)
            expected = hf_to_meta_state(state, TINY_HEADS) if layout.startswith("meta") else state
            with open_source(folder) as src:
                _assert_same(src, expected, layout)
        return f"{len(LAYOUTS)} layouts read bit-exactly: {', '.join(LAYOUTS)}"

    def inspect() -> str:
        s = summarize(base)
        expected = sum(t.numel() for t in reference.values())
        if s.parameters != expected or s.vocab_size != reference["model.embed_tokens.weight"].shape[0]:
            raise CheckFailed(f"inspect says {s.parameters} parameters / vocab {s.vocab_size}")
        return f"{s.layout}, {s.parameters:,} parameters, vocab {s.vocab_size}, {s.architecture}"

    def reshard() -> str:
        out = workdir / "resharded"
        with open_source(workdir / "layouts" / "bin-sharded") as src:
            specs = [TensorSpec(i.name, i.dtype, i.shape) for i in src.infos()]
            with ShardedWriter(out, specs, shard_size=100_000) as writer:
                for name, tensor in src:
                    writer.write(name, tensor)
                writer.copy_aux_files(src.folder)
            shards = len([n for n in writer.files if n.endswith(".safetensors")])
        before, after = _logits(base), _logits(out)
        if not torch.equal(before, after):
            raise CheckFailed("transformers gives different logits for the re-sharded model")
        return f"bin shards -> {shards} safetensors shards; transformers logits identical"

    plan = [
        ("generate tiny LLaMA", generate),
        ("read every layout", read_layouts),
        ("inspect", inspect),
        ("re-shard bin -> safetensors", reshard),
    ]
    for name, fn in plan:
        if not steps.run(name, fn):
            break  # later steps build on this one
    return DemoResult(workdir=str(workdir), ok=all(s.ok for s in steps.steps), steps=steps.steps)
