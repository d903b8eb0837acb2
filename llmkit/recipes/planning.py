"""Which steps of a recipe run: placeholders filled in, then each step's record checked against the files.

A step is current when the manifest records it with the same options, every input it read is unchanged
(or was deleted as an intermediate; a remote input lists the same files with the same published digests:
``llmkit.recipes.remote``) and its output is intact (``llmkit.recipes.fingerprint``: size and
seal, and the sha256 of every file whose seal changed). A stale step runs again, so does every step that
reads its output, and so does a deleted intermediate a running step needs. Each stale step gets one
notice naming the first file that changed and how.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from llmkit.errors import InputError
from llmkit.io.remote.url import as_remote_path
from llmkit.pipeline import Notice
from llmkit.recipes.book import Step
from llmkit.recipes.fingerprint import Change, Fingerprints
from llmkit.recipes.jobs import JOBS
from llmkit.recipes.manifest import Manifest, StepRecord
from llmkit.recipes.remote import RemotePrints, urls_in

_PLACEHOLDER = re.compile(r"\{(workdir|key|llama_dir|out:[\w-]+)\}")


def resolve(steps: list[Step], env: dict[str, str], endpoint: str | None = None) -> dict[str, dict[str, Any]]:
    """Each step's args with the placeholders filled in (``{out:ID}``: the output of an earlier step)."""
    outputs: dict[str, str] = {}
    resolved: dict[str, dict[str, Any]] = {}

    def fill(value: Any, step: Step) -> Any:
        if isinstance(value, dict):
            return {k: fill(v, step) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [fill(v, step) for v in value]
        if not isinstance(value, str):
            return value

        def one(m: re.Match) -> str:
            name = m.group(1)
            if name.startswith("out:"):
                if name[4:] not in outputs:
                    raise InputError(f"recipe step {step.id} reads {name[4:]!r}, which no earlier step writes")
                return outputs[name[4:]]
            return env[name]

        return _PLACEHOLDER.sub(one, value)

    for s in steps:
        args = {k: fill(v, s) for k, v in s.args.items()}
        if s.job == "download" and endpoint:
            args["endpoint"] = endpoint
        resolved[s.id] = args
        out_field = JOBS[s.job].output
        if out_field:
            outputs[s.id] = args[out_field]
    return resolved


def deps(step: Step) -> set[str]:
    return set(re.findall(r"\{out:([\w-]+)\}", json.dumps(step.args)))


def input_paths(job: str, args: dict[str, Any]) -> list[str]:
    """The paths a step with ``args`` reads."""
    out: list[str] = []
    for f in JOBS[job].inputs:
        v = args.get(f)
        out += [str(x) for x in v] if isinstance(v, (list, tuple)) else ([str(v)] if v is not None else [])
    return out


def output_path(step: Step, args: dict[str, Any]) -> str | None:
    field_ = JOBS[step.job].output
    return str(args[field_]) if field_ else None


def _content_args(args: dict[str, Any]) -> dict[str, Any]:
    """The args that decide a step's output: where a download comes from (a mirror) does not."""
    return {k: v for k, v in args.items() if k != "endpoint"}


def _change(rec: StepRecord, removed: set[str], prints: Fingerprints, remote: RemotePrints) -> Change | None:
    """The first recorded input or output that changed (inputs deleted as intermediates do not count; a
    remote input is listed again, metadata only)."""
    for p, fp in rec.inputs.items():
        if p in removed and not Path(p).exists():
            continue
        change = prints.check(Path(p), fp)
        if change is not None:
            return change
    for url in urls_in(input_paths(rec.job, rec.options)):
        if url not in rec.remote:
            return Change(as_remote_path(url), "older record")
        change = remote.check(url, rec.remote[url])
        if change is not None:
            return change
    if rec.removed:
        return None
    for p, fp in rec.output.items():
        change = prints.check(Path(p), fp)
        if change is not None:
            return change
    return None


def _notice(step_id: str, change: Change) -> Notice:
    """One line naming the file that makes ``step_id`` stale."""
    if change.how == "remote":
        return Notice.info(
            f"{change.file}: changed since recipe step {step_id} recorded it ({change.detail}); "
            f"step {step_id} must run again"
        )
    if change.how == "content in place":
        return Notice.warning(
            f"{change.file}: changed in place since recipe step {step_id} recorded it (same size "
            f"and modification time, different sha256); step {step_id} must run again"
        )
    how = {
        "older record": "recorded by an earlier llmkit without content hashes",
        "content": "different sha256",
        "kind": "no longer a regular file",
        "size": "different size",
        "time": "different modification time",
        "missing": "no longer there",
        "added": "not there when it was recorded",
    }[change.how]
    return Notice.info(
        f"{change.file}: changed since recipe step {step_id} recorded it ({how}); step {step_id} must run again"
    )


def _stale(
    steps: list[Step],
    resolved: dict[str, dict[str, Any]],
    manifest: Manifest,
    removed: set[str],
    prints: Fingerprints,
    remote: RemotePrints,
) -> tuple[set[str], list[Notice]]:
    """The recorded steps that are not current, with one notice per step whose files changed."""
    run: set[str] = set()
    notices: list[Notice] = []
    told: set[Path] = set()
    for s in steps:
        rec = manifest.steps.get(s.id)
        if rec is None or _content_args(rec.options) != _content_args(json.loads(json.dumps(resolved[s.id]))):
            run.add(s.id)
            continue
        change = _change(rec, removed, prints, remote)
        if change is not None:
            run.add(s.id)
            if change.file not in told and change.how != "missing":
                told.add(change.file)
                notices.append(_notice(s.id, change))
    return run, notices


def plan_run(
    steps: list[Step],
    resolved: dict[str, dict[str, Any]],
    manifest: Manifest,
    prints: Fingerprints,
    remote: RemotePrints | None = None,
) -> tuple[set[str], list[Notice]]:
    """The ids of the steps to run: the stale ones, what reads their output, and the deleted inputs of those."""
    out_of = {s.id: output_path(s, resolved[s.id]) for s in steps}
    removed = {str(out_of[k]) for k, r in manifest.steps.items() if r.removed and out_of.get(k)}
    run, notices = _stale(steps, resolved, manifest, removed, prints, remote or RemotePrints())
    changed = True
    while changed:
        changed = False
        for s in steps:
            if s.id not in run and deps(s) & run:
                run.add(s.id)
                changed = True
            if s.id in run:
                for d in deps(s):
                    rec = manifest.steps.get(d)
                    if d not in run and (rec is None or rec.removed or not Path(str(out_of[d])).exists()):
                        run.add(d)
                        changed = True
    return run, notices
