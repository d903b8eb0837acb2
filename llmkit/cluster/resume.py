"""``--ray``: a re-run after a killed driver keeps the pieces the dead run finished and verified.

A folder output's stage holds ``.llmkit-pieces/plan.json`` (the run's :func:`fingerprint`: the job and its
options, every piece's planned name, layout and tensors, and every input file's identity) and each finished
piece's ledger record (size, sha256). A re-run on the same ``-o`` claims the output, and before the dead
runs' stages are removed (:func:`salvage`, the staging hook) moves the one with the most records aside
under a name of its own (``.NAME.llmkit-salvage-PID``). Once its own stage exists (:func:`adopt_salvaged`),
a piece is kept when the salvaged plan is this plan (same fingerprint) and its file has the recorded size
and hashes to the recorded sha256 (read again: a piece half written, or changed since, is written anew);
it is renamed into the new stage and counts as written. What is left of the salvaged stage is removed.

Plans whose taps combine per-tensor parts (``--check-sum``) or that end a fused chain start clean: the dead
run's parts were never recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmkit.io.core.pieces import PIECE_DIR, sha256_file
from llmkit.io.core.staging import STAGE_MARK
from llmkit.pipeline import Check
from llmkit.read_order import leaf_sources

if TYPE_CHECKING:
    from llmkit.cluster.driver import Job
    from llmkit.io.core.writer import ShardSetWriter

PLAN_FILE = "plan.json"
SALVAGE_MARK = ".llmkit-salvage-"
_RUN_FIELDS = ("force", "dry_run")  # options that do not change the bytes


def resumable(job: Job) -> bool:
    """Whether finished pieces of a dead run can stand for this run's (no split taps, no chain)."""
    return job.chain is None and not any(hasattr(t, "part") for t in job.plan.taps)


def fingerprint(job: Job, writer: ShardSetWriter) -> str:
    """sha256 of what decides every piece's bytes: the job and options, the planned pieces, the inputs."""
    entry, options = job.entry
    fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name not in _RUN_FIELDS}
    pieces = [[sh.name, [[s.name, str(s.dtype), list(s.shape)] for s in sh.specs]] for sh in writer.shards]
    seen: dict[str, list[int]] = {}
    for src in leaf_sources(job.plan):
        for f in getattr(src, "files", []):
            path = getattr(f, "path", None)
            if path is not None and str(path) not in seen and os.path.exists(path):
                st = os.stat(path)
                seen[str(path)] = [st.st_size, st.st_mtime_ns, st.st_ino]
    doc = {"entry": entry, "options": fields, "pieces": pieces, "files": seen, "remote": job.context.listing}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def salvage(target: Path) -> None:
    """The staging hook (under the output's claim, so every other stage is a dead run's): the dead stage
    with the most recorded pieces moved aside as this run's salvage; other salvages removed."""
    prefixes = (f".{target.name}{STAGE_MARK}", f".{target.name}{SALVAGE_MARK}")
    found = [
        p
        for p in target.parent.iterdir()
        if p.name.startswith(prefixes) and p.is_dir() and (p / PIECE_DIR / PLAN_FILE).is_file()
    ]
    found.sort(key=lambda p: len(list((p / PIECE_DIR).glob("[0-9]*.json"))), reverse=True)
    mine = salvage_path(target)
    for i, p in enumerate(found):
        if i == 0:
            os.rename(p, mine)
        elif p.name.startswith(prefixes[1]):
            shutil.rmtree(p, ignore_errors=True)


def salvage_path(target: Path) -> Path:
    return target.parent / f".{target.name}{SALVAGE_MARK}{os.getpid()}"


def adopt_salvaged(target: Path, writer: ShardSetWriter, stage: Path, print_: str) -> list[int]:
    """Move the salvaged run's verified pieces into ``stage`` (this run's, for ``target``) and adopt them;
    their indices. ``print_``: this plan's fingerprint. The salvage is removed whatever is kept."""
    salvaged = salvage_path(target)
    kept: list[int] = []
    try:
        plan = salvaged / PIECE_DIR / PLAN_FILE
        if not plan.is_file() or json.loads(plan.read_text()).get("fingerprint") != print_:
            return kept
        for i, sh in enumerate(writer.shards):
            if _verified(salvaged, i, sh.name, writer, stage):
                os.rename(salvaged / sh.name, stage / sh.name)
                shutil.copyfile(salvaged / PIECE_DIR / f"{i}.json", stage / PIECE_DIR / f"{i}.json")
                writer.adopt(i, writer.planned_start(i, stage / PIECE_DIR / f"plan-{i}"))
                kept.append(i)
    finally:
        shutil.rmtree(salvaged, ignore_errors=True)
    return kept


def _verified(salvaged: Path, index: int, name: str, writer: ShardSetWriter, stage: Path) -> bool:
    """Piece ``index`` of the salvage: recorded, of its planned size, hashing to its recorded sha256."""
    record, file = salvaged / PIECE_DIR / f"{index}.json", salvaged / name
    if not record.is_file() or not file.is_file():
        return False
    entry: dict[str, Any] = json.loads(record.read_text())
    planned = writer.planned_start(index, stage / PIECE_DIR / f"plan-{index}")
    if entry.get("file") != name or entry.get("size") != planned.size or file.stat().st_size != planned.size:
        return False
    return bool(sha256_file(file) == entry.get("sha256"))


def kept_pieces(job: Job, writer: ShardSetWriter, stage: Path) -> list[int]:
    """The driver, its stage made: record this run's fingerprint and keep the salvaged run's verified
    pieces (their indices); nothing for a plan that is not :func:`resumable`."""
    if not resumable(job):
        return []
    print_ = fingerprint(job, writer)
    (stage / PIECE_DIR / PLAN_FILE).write_text(json.dumps({"fingerprint": print_}))
    return adopt_salvaged(writer._staging.target, writer, stage, print_)


def kept_check(kept: list[int], pieces: int) -> list[Check]:
    """The line a resumed run shows: how many pieces a killed run had finished and this one kept."""
    if not kept:
        return []
    detail = f"{len(kept)} of {pieces} piece(s) kept from a killed run, each read again and matching its sha256"
    return [Check("ray resume", "info", detail)]
