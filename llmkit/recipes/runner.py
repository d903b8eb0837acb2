"""``llmkit recipe run``: a recipe's steps in order, each the library call of its command, resumable.

Before the first step every input is checked: the recipe's needs (``--key``, ``--llama-dir``), the work
folder (not inside an input), the free space for all outputs at once (from the registry's published
sizes and the sizes of the inputs), and a memory estimate. Each finished step is recorded in the
manifest (``llmkit.recipes.manifest``); a re-run skips what is recorded and unchanged
(``llmkit.recipes.planning``; what the recipe wrote is checked by content, ``llmkit.recipes.fingerprint``).
Outputs no later step needs are deleted at the end unless ``keep_intermediate``, but only those the
manifest records as created by this recipe: something the user already had at an output path is never
deleted, and is refused before the first step unless ``force`` (a download step resumes into its folder
instead). A download whose readers stream URLs is not run at all (``llmkit.recipes.remote``): they read
``hf://`` of the registry repo, or the ``inputs`` URL given for it, recorded by its commit and digests.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmkit.errors import CheckFailed, DiskSpaceError, InputError, OutputExistsError
from llmkit.io.remote.store import hub_endpoint
from llmkit.io.remote.url import remote_url
from llmkit.pipeline import Check, Notice, ProgressFactory, Result
from llmkit.recipes.book import RECIPES, Recipe, Step
from llmkit.recipes.estimate import estimate, memory_estimate
from llmkit.recipes.fingerprint import Fingerprints
from llmkit.recipes.fusion import fuse
from llmkit.recipes.jobs import JOBS, build_options, call, command_line
from llmkit.recipes.manifest import Manifest, StepRecord
from llmkit.recipes.on_ray import checked_for_ray, ray_notices
from llmkit.recipes.planning import input_paths, output_path, plan_run, resolve
from llmkit.recipes.remote import RemotePrints, Streamed, pin, stream_inputs, urls_in
from llmkit.recipes.selection import active_steps, switches

NEEDS = {
    "key": "--key (Meta's LLaMA-1 7B consolidated.00.pth, the XOR key)",
    "llama_dir": "--llama-dir (the folder of Meta's original LLaMA consolidated.NN.pth and params.json)",
}


@dataclass(frozen=True)
class RecipeOptions:
    """``llmkit recipe run NAME``: ``to_ckpt``/``to_meta``/``to_gguf``/``with_lora`` switch on the optional steps."""

    name: str
    workdir: Path
    key: Path | None = None
    llama_dir: Path | None = None
    endpoint: str | None = None
    to_ckpt: bool = False
    to_meta: bool = False
    to_gguf: bool = False
    with_lora: bool = False
    keep_intermediate: bool = False
    dry_run: bool = False
    force: bool = False  # replace outputs this recipe did not create (never deletes them afterwards)
    rehash: bool = False  # read every recorded file again before reusing a step, not only those whose stat changed
    inputs: dict[str, str] = field(default_factory=dict)  # registry name -> the URL a download's readers stream


@dataclass
class StepReport:
    """``status``: ran | skipped (recorded and unchanged) | would run | would skip."""

    id: str
    job: str
    command: str
    status: str
    output: str | None = None
    seconds: float = 0.0


@dataclass
class RecipeResult(Result):
    """Result of ``llmkit recipe run`` (docs/json.md). Sizes in bytes; None when not known."""

    recipe: str
    workdir: str
    dry_run: bool
    output: str | None = None  # the last final output (what a pipeline's next command takes)
    steps: list[StepReport] = field(default_factory=list)
    final: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    needed_disk_bytes: int | None = None
    free_disk_bytes: int = 0
    memory_estimate_bytes: int | None = None
    streamed: dict[str, str] = field(default_factory=dict)  # input -> the URL read instead of downloading it
    seconds: float = 0.0


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}", hint=f"known: {', '.join(RECIPES)} (llmkit recipe list)")
    return RECIPES[name]


def _check_inputs(recipe: Recipe, options: RecipeOptions, progress: ProgressFactory | None = None) -> None:
    for need in recipe.needs:
        value = getattr(options, need)
        if value is None:
            raise InputError(f"recipe {recipe.name} needs {NEEDS[need]}", hint=f"llmkit recipe show {recipe.name}")
    if options.key is not None:
        from llmkit.crypto.keycheck import check_key, require_key_file

        require_key_file(Path(options.key))
        if "key" in recipe.needs and not options.dry_run:
            check_key(Path(options.key), progress=progress)  # the md5 (cached): before a 13 GB download
    if options.llama_dir is not None:
        d = Path(options.llama_dir)
        if not d.is_dir() or not list(d.glob("consolidated.*.pth")) or not (d / "params.json").is_file():
            raise InputError(
                "not a folder of Meta's consolidated.NN.pth and params.json",
                path=d,
                hint="pass the size's own folder, e.g. LLaMA/13B",
            )
        from llmkit.io.core.jsonfile import read_json

        params = read_json(d / "params.json")
        dim = params.get("dim") if isinstance(params, dict) else None
        if recipe.llama_dim is not None and dim != recipe.llama_dim:
            want = {4096: "7B", 5120: "13B"}.get(recipe.llama_dim, str(recipe.llama_dim))
            raise InputError(
                f"params.json says dim {dim}; recipe {recipe.name} needs LLaMA-{want} (dim {recipe.llama_dim})",
                path=d / "params.json",
                hint=f"pass the LLaMA-{want} folder as --llama-dir",
            )
    from llmkit.io.core.destination import ensure_output_is_new

    ensure_output_is_new(Path(options.workdir), [options.key, options.llama_dir])


def run_recipe(options: RecipeOptions, *, progress: ProgressFactory | None = None) -> RecipeResult:
    """Check everything, then run (or with ``dry_run`` only plan) the recipe's steps."""
    with hub_endpoint(options.endpoint):
        return _run_recipe(options, progress)


def _run_recipe(options: RecipeOptions, progress: ProgressFactory | None) -> RecipeResult:
    recipe = get_recipe(options.name)
    started = time.perf_counter()
    _check_inputs(recipe, options, progress)
    workdir = Path(options.workdir)
    on_ray = checked_for_ray(options.inputs, dry_run=options.dry_run)
    active, streamed = stream_inputs(
        active_steps(recipe, switches(options)),
        options.inputs,
        keep_intermediate=options.keep_intermediate or on_ray,  # Ray tasks read local copies
        recipe=recipe.name,
    )
    # --ray --keep-intermediate: every step written by its own tasks (a chain's tasks write its last output)
    steps = (
        active if on_ray and options.keep_intermediate else fuse(active, keep_intermediate=options.keep_intermediate)
    )
    env = {"workdir": str(workdir), "key": str(options.key), "llama_dir": str(options.llama_dir)}
    resolved = resolve(steps, env, options.endpoint)
    manifest = Manifest.load(workdir, recipe.name)
    prints, remote = Fingerprints(rehash=options.rehash, progress=progress), RemotePrints()
    to_run, stale = plan_run(steps, resolved, manifest, prints, remote)
    if not options.force:
        _refuse_foreign_outputs(steps, resolved, to_run, manifest)
    result = _planned_result(recipe, options, steps, resolved, to_run, stale + _streaming(streamed), remote)
    result.streamed = {s.name: s.url for s in streamed}
    if on_ray:
        result.notices += ray_notices()
    if options.dry_run:
        return result
    if prints.renewed:
        manifest.save(workdir)  # seals renewed by a re-read: the next run need not read those files again
    produced = {out for s in steps if (out := output_path(s, resolved[s.id])) is not None}
    for report, s in zip(result.steps, steps, strict=True):
        if s.id in to_run:
            _run_step(
                s,
                resolved[s.id],
                report,
                manifest,
                workdir,
                result,
                progress,
                options.force,
                _Recording(prints, produced, remote),
            )
    _cleanup(steps, resolved, manifest, workdir, options, result)
    result.final = [out for s in steps if s.final and (out := output_path(s, resolved[s.id])) is not None]
    result.outputs = list(result.final)
    result.output = result.final[-1] if result.final else None
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _planned_result(
    recipe: Recipe,
    options: RecipeOptions,
    steps: list[Step],
    resolved: dict[str, dict[str, Any]],
    to_run: set[str],
    stale: list[Notice],
    remote: RemotePrints,
) -> RecipeResult:
    """The result before any step runs: disk and memory estimates, notices, a report per step.

    Raises DiskSpaceError when every output at once (the sizes that are known) does not fit."""
    from llmkit.units import free_bytes, human_bytes, space_margin

    workdir = Path(options.workdir)
    est = estimate(steps, resolved, to_run, remote)
    sizes = [est[s.id] for s in steps if s.id in to_run]
    needed = None if None in sizes else sum(s or 0 for s in sizes)
    free = free_bytes(workdir)
    result = RecipeResult(
        recipe=recipe.name,
        workdir=str(workdir),
        dry_run=options.dry_run,
        needed_disk_bytes=needed,
        free_disk_bytes=free,
        memory_estimate_bytes=memory_estimate(recipe, steps),
    )
    result.notices += stale
    known = sum(s or 0 for s in sizes)
    if known + space_margin(known) > free:
        raise DiskSpaceError(
            f"the recipe writes {'about' if needed else 'at least'} {human_bytes(known)} (every "
            f"output at once) and {human_bytes(free)} is free",
            path=workdir,
            hint="free some space or choose another --workdir",
        )
    if needed is None:
        result.notices.append(Notice.info("some outputs have no published size; the disk check covers the rest"))
    for s in steps:
        out = resolved[s.id].get(JOBS[s.job].output or "")
        status = ("would run" if s.id in to_run else "would skip") if options.dry_run else "skipped"
        result.steps.append(StepReport(s.id, s.job, command_line(s.job, resolved[s.id]), status, out))
    return result


def _holds_something(path: Path) -> bool:
    return path.is_file() or path.is_symlink() or (path.is_dir() and any(path.iterdir()))


def _refuse_foreign_outputs(
    steps: list[Step], resolved: dict[str, dict[str, Any]], to_run: set[str], manifest: Manifest
) -> None:
    """Before the first step: an output a step would replace that this recipe did not create is refused."""
    for s in steps:
        field_ = JOBS[s.job].output
        if s.id not in to_run or not field_ or s.job == "download":  # a download resumes into its folder
            continue
        for path in [Path(resolved[s.id][field_]), *(Path(k) for k in resolved[s.id].get("keep", []))]:
            if str(path) not in manifest.created and _holds_something(path):
                raise OutputExistsError(
                    f"recipe step {s.id} writes here, and this recipe did not create what is there",
                    path=path,
                    hint="move it away or choose another --workdir; --force replaces it",
                )


def _streaming(streamed: list[Streamed]) -> list[Notice]:
    """One line per input read from its URL instead of downloaded."""
    return [
        Notice.info(
            f"{s.name}: streamed from {s.url} by step {', '.join(s.readers)}, no download step and no local copy"
            + (" (--input)" if s.given else " (--keep-intermediate downloads it)")
        )
        for s in streamed
    ]


@dataclass(frozen=True)
class _Recording:
    """How a finished step is fingerprinted: by content for every path a step of the recipe writes; a
    remote input by its listing (``llmkit.recipes.remote``)."""

    prints: Fingerprints
    produced: set[str]
    remote: RemotePrints

    def take(self, path: str) -> Any:
        return self.prints.take(Path(path), content=path in self.produced)


def _run_step(
    s: Step,
    args: dict[str, Any],
    report: StepReport,
    manifest: Manifest,
    workdir: Path,
    result: RecipeResult,
    progress: ProgressFactory | None,
    force: bool,
    recording: _Recording,
) -> None:
    kind = JOBS[s.job]
    run_args = dict(args)
    out_path = Path(args[kind.output]) if kind.output else None
    existed = out_path is not None and os.path.lexists(out_path)
    if out_path is not None and s.job != "download" and existed and (force or str(out_path) in manifest.created):
        run_args["force"] = True  # a stale output of this recipe's own run, or --force
    kept = [Path(k) for k in args.get("keep", [])] if s.job == "chain" else []
    kept_existed = {k: os.path.lexists(k) for k in kept}
    if any(kept_existed.values()):
        run_args["force"] = True  # checked before the first step: this recipe's own, or --force
    urls = urls_in(input_paths(s.job, args))
    start = time.perf_counter()
    try:
        run_args = pin(run_args, {u: recording.remote.pinned(u) for u in urls})  # read the commit recorded
        outcome = call(s.job, build_options(s.job, run_args), progress)
        if getattr(outcome, "ok", True) is False:
            bad = [c for c in getattr(outcome, "checks", []) if c.status not in ("ok", "info", "extra")]
            detail = "; ".join(f"{c.name}: {c.detail}" for c in bad[:3]) or "a check failed"
            raise CheckFailed(f"recipe step {s.id} ({s.job}): {detail}")
    except BaseException as e:
        manifest.failed[s.id] = str(e)
        manifest.steps.pop(s.id, None)
        _note_created(manifest, out_path, existed)
        manifest.save(workdir)
        raise
    _note_created(manifest, out_path, existed)
    for k, was in kept_existed.items():
        _note_created(manifest, k, was)
    checks = [Check(c.name, c.status, c.detail) for c in getattr(outcome, "checks", [])]
    manifest.failed.pop(s.id, None)
    out = args.get(kind.output) if kind.output else None
    manifest.steps[s.id] = StepRecord(
        job=s.job,
        options=json.loads(json.dumps(args)),
        inputs={p: recording.take(p) for p in input_paths(s.job, args) if remote_url(p) is None},
        output={str(out): recording.take(str(out))} if out else {},
        remote={u: recording.remote.record(u) for u in urls},
        checks=[c.__dict__ for c in checks],
        seconds=round(time.perf_counter() - start, 3),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    manifest.save(workdir)
    report.status, report.seconds = "ran", manifest.steps[s.id].seconds
    result.checks += [Check(f"{s.id}: {c.name}", c.status, c.detail) for c in checks]
    result.notices += getattr(outcome, "notices", [])


def _note_created(manifest: Manifest, out: Path | None, existed: bool) -> None:
    """Record ``out`` as created by this recipe when the step made it (it was not there before)."""
    if out is not None and not existed and os.path.lexists(out) and str(out) not in manifest.created:
        manifest.created.append(str(out))


def _ours(path: Path, workdir: Path, manifest: Manifest) -> bool:
    """The manifest records ``path`` as created by this recipe, and it lies inside the work folder."""
    inside = Path(os.path.realpath(path)).is_relative_to(os.path.realpath(workdir))
    return inside and str(path) in manifest.created


def _cleanup(
    steps: list[Step],
    resolved: dict[str, dict[str, Any]],
    manifest: Manifest,
    workdir: Path,
    options: RecipeOptions,
    result: RecipeResult,
) -> None:
    """Delete the outputs of non-final steps that this recipe created (every step is done, so none is
    needed any more); what was there before the recipe is kept, with a notice."""
    if options.keep_intermediate:
        return
    for s in steps:
        field_ = JOBS[s.job].output
        rec = manifest.steps.get(s.id)
        if s.final or not field_ or rec is None or rec.removed:
            continue
        path = Path(resolved[s.id][field_])
        if not _ours(path, workdir, manifest):
            result.notices.append(
                Notice.info(f"kept {path}: it was there before this recipe, so it is not deleted as an intermediate")
            )
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
        rec.removed = True
        manifest.created.remove(str(path))
        result.removed.append(str(path))
    manifest.save(workdir)
