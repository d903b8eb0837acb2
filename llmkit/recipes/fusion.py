"""Consecutive tensor steps of a recipe as one pass: a ``chain`` step that writes only the last one's output.

:func:`fuse` rewrites the active steps before anything is resolved. A tensor step (from-meta, recover,
merge-lora, to-ckpt, to-meta) whose output only later tensor steps read is not written: it becomes a
stage of the chain that ends in the step whose output is kept (no tensor step reads it, or another kind
of step does). One chain per kept output; a stage that two kept outputs need (merge-lora before both
to-ckpt and to-meta) is computed in each. Downloads, verification and decryption stay steps of their own.
A leading from-meta is dropped (recover and merge-lora read a Meta folder as the same Hugging Face model
from-meta writes), unless ``keep_intermediate``, which also writes every stage's output from the same pass.

A chain step's args: ``stages`` (``[{"id", "job", "args"}]``, a stage's model input ``{stage:ID}``: the
stage before it), ``inputs`` (what it reads from outside), ``output`` (the last stage's) and ``keep``.
:func:`run_chain_step` runs it (``llmkit.chain``); :func:`chain_command` renders it as the commands joined
by tensor pipes (``-o -`` into ``-``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from llmkit.pipeline import Check, ProgressFactory, Result
from llmkit.recipes.book import Step

TENSOR_JOBS = ("from-meta", "recover", "merge-lora", "to-ckpt", "to-meta", "to-gguf")
MODEL_FIELD = {
    "from-meta": "source",
    "recover": "base",
    "merge-lora": "base",
    "to-ckpt": "source",
    "to-meta": "source",
    "to-gguf": "source",
}
_OUT = re.compile(r"^\{out:([\w-]+)\}$")
_STAGE = re.compile(r"^\{stage:([\w-]+)\}$")


def _model_input(step: Step) -> str | None:
    """The id of the step whose output is this tensor step's model input (``{out:ID}``), if any."""
    value = step.args.get(MODEL_FIELD[step.job]) if step.job in TENSOR_JOBS else None
    m = _OUT.match(value) if isinstance(value, str) else None
    return m.group(1) if m else None


def _readers(steps: list[Step]) -> dict[str, list[Step]]:
    """Step id -> the steps that read its output (through any ``{out:ID}``)."""
    out: dict[str, list[Step]] = {s.id: [] for s in steps}
    for s in steps:
        for d in set(re.findall(r"\{out:([\w-]+)\}", repr(s.args))):
            out.setdefault(d, []).append(s)
    return out


def _fusable(step: Step, readers: list[Step]) -> bool:
    """A tensor step whose output only tensor steps read, each as its model: a stage, never written."""
    return (
        step.job in TENSOR_JOBS
        and bool(readers)
        and all(r.job in TENSOR_JOBS and _model_input(r) == step.id for r in readers)
    )


def fuse(steps: list[Step], *, keep_intermediate: bool = False) -> list[Step]:
    """The steps with each run of tensor steps made one chain step (the first chain to reach a stage keeps it,
    with ``keep_intermediate``)."""
    by_id = {s.id: s for s in steps}
    readers = _readers(steps)
    inner = {s.id for s in steps if _fusable(s, readers[s.id])}
    kept: set[str] = set()
    out: list[Step] = []
    for s in steps:
        if s.id in inner:
            continue
        stages = [s]
        while (prev := _model_input(stages[0])) is not None and prev in inner:
            stages.insert(0, by_id[prev])
        if len(stages) > 1 and not keep_intermediate and _plain_from_meta(stages[0]):
            stages[1] = _reading(stages[1], stages[0].args["source"])
            stages = stages[1:]
        if len(stages) == 1:
            out.append(stages[0])
            continue
        keep = [x.args["output"] for x in stages[:-1] if keep_intermediate and x.id not in kept]
        kept.update(x.id for x in stages[:-1])
        out.append(_chain_step(stages, keep, s.final))
    return out


def _plain_from_meta(step: Step) -> bool:
    """A from-meta with nothing but a source and an output: the Meta folder itself can be read instead."""
    return step.job == "from-meta" and set(step.args) <= {"source", "output"}


def _reading(step: Step, model: Any) -> Step:
    return Step(step.id, step.job, {**step.args, MODEL_FIELD[step.job]: model}, step.when, step.final)


def _chain_step(stages: list[Step], keep: list[str], final: bool) -> Step:
    """One step running ``stages`` as a chain (each stage's model input: the stage before it)."""
    described: list[dict[str, Any]] = []
    inputs: list[Any] = []
    for i, st in enumerate(stages):
        args = dict(st.args)
        if i:
            args[MODEL_FIELD[st.job]] = f"{{stage:{stages[i - 1].id}}}"
        for key, value in args.items():
            if key != "output" and key in _input_fields(st.job):
                for v in value if isinstance(value, (list, tuple)) else [value]:
                    if v is not None and not _STAGE.match(str(v)) and v not in inputs:
                        inputs.append(v)
        described.append({"id": st.id, "job": st.job, "args": args})
    return Step(
        "+".join(st.id for st in stages),
        "chain",
        {"stages": described, "inputs": inputs, "output": stages[-1].args["output"], "keep": keep},
        final=final,
    )


def _input_fields(job: str) -> tuple[str, ...]:
    from llmkit.recipes.jobs import JOBS

    return JOBS[job].inputs


# ------------------------------------------------------------------ running and showing


@dataclass(frozen=True)
class ChainOptions:
    """A chain step, resolved: ``stages`` as in :func:`fuse` (paths filled in), ``output`` the last stage's,
    ``inputs`` what the chain reads, ``keep`` inner outputs written too; ``force``: replace outputs."""

    stages: tuple[dict[str, Any], ...]
    output: Path
    inputs: tuple[Path, ...] = ()
    keep: tuple[Path, ...] = ()
    force: bool = False
    dry_run: bool = False


@dataclass
class ChainResult(Result):
    """What a chain step did: the stages' results (``llmkit.chain.run_chain``), their checks and notices."""

    stages: list[Any] = field(default_factory=list)


def stage_args(options: ChainOptions) -> list[tuple[str, str, dict[str, Any]]]:
    """``(id, job, args)`` of each stage with ``{stage:ID}`` made that stage's output path."""
    outputs: dict[str, str] = {}
    out: list[tuple[str, str, dict[str, Any]]] = []
    for st in options.stages:
        args = {}
        for key, value in st["args"].items():
            m = _STAGE.match(value) if isinstance(value, str) else None
            args[key] = outputs[m.group(1)] if m else value
        outputs[st["id"]] = str(args["output"])
        out.append((st["id"], st["job"], args))
    return out


def run_chain_step(options: ChainOptions, *, progress: ProgressFactory | None = None) -> ChainResult:
    """Run the stages as one pass (``llmkit.chain.run_chain``): inner stages plan only, the last one writes."""
    from llmkit.chain import run_chain
    from llmkit.recipes.jobs import build_options, call

    staged = stage_args(options)
    calls: list[Callable[[], Any]] = []
    for i, (_id, job, args) in enumerate(staged):
        last = i == len(staged) - 1
        inner = {"dry_run": options.dry_run if last else True, "force": last and options.force}
        calls.append(partial(call, job, build_options(job, {**args, **inner}), progress))
    results = run_chain(calls, keep={str(p) for p in options.keep}, force=options.force, entry=("chain", options))
    result = ChainResult(stages=results)
    for (sid, _job, _args), r in zip(staged, results, strict=True):
        result.ok = result.ok and getattr(r, "ok", True)
        result.checks += [Check(f"{sid}: {c.name}", c.status, c.detail) for c in getattr(r, "checks", [])]
        result.notices += [n for n in getattr(r, "notices", []) if n not in result.notices]
    if not options.dry_run:
        result.outputs = [str(p) for p in options.keep] + [str(options.output)]
    return result


def chain_command(args: dict[str, Any]) -> str:
    """The chain as shell commands joined by tensor pipes: each stage but the last writes ``-o -``, each but
    the first reads ``-`` as its model."""
    from llmkit.recipes.jobs import command_line

    words: list[str] = []
    stages = args["stages"]
    for i, st in enumerate(stages):
        stage = dict(st["args"])
        if i:
            stage[MODEL_FIELD[st["job"]]] = "-"
        if i < len(stages) - 1:
            stage["output"] = "-"
        words.append(command_line(st["job"], stage))
    return " | ".join(words)
