"""The order a plan's tensors are produced in, and the check that a front-to-back source can give them so.

A source read front to back once (a safetensors stream on stdin, ``llmkit.io.hf.stream``) says where each
tensor is (``stream_position``); a source computed from others (a plan read as a source, ``llmkit.chain``)
says what reading a tensor reads in the end (``expand_reads``). :func:`run_order` is the order the runner
produces a plan's outputs in; :func:`check_read_order` refuses, before anything is read, a plan that would
read such a source backwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmkit.io.core.sink import Sink
    from llmkit.io.core.source import TensorSource
    from llmkit.pipeline import Plan


def leaf_reads(plan: Plan, name: str, *, stop: TensorSource | None = None) -> list[tuple[TensorSource, str]]:
    """What producing ``name`` reads in the end: ``plan.reads(name)``, through every plan read as a source
    (but ``stop``, a plan read as a source, counts as a leaf: what is read of it)."""
    leaves: list[tuple[TensorSource, str]] = []
    todo = list(plan.reads(name))
    while todo:
        src, key = todo.pop(0)
        inner = [(src, key)] if src is stop else src.expand_reads(key)
        if inner != [(src, key)]:
            todo[:0] = inner
        else:
            leaves.append((src, key))
    return leaves


def leaf_sources(plan: Plan) -> list[TensorSource]:
    """Every source the plan reads in the end (:func:`leaf_reads` of every tensor), each once, in first-read order."""
    found: dict[int, TensorSource] = {}
    for spec in plan.specs:
        for src, _ in leaf_reads(plan, spec.name):
            found.setdefault(id(src), src)
    return list(found.values())


def run_order(plan: Plan, sink: Sink) -> list[str]:
    """The order the runner produces the plan's tensors in: the one the sink must be given them in
    (``sink.write_order``: a stream on stdout, a ``.ckpt``), else, when the plan reads a stream on stdin, that
    stream's order (a folder sink writes in any order and lays its files out in ``plan.specs`` order), else
    ``plan.specs`` order."""
    fixed = getattr(sink, "write_order", None)
    names = [s.name for s in plan.specs]
    if fixed is not None:
        return list(fixed)

    def first_read(name: str) -> int:
        return min(
            (p for src, key in leaf_reads(plan, name) if (p := src.stream_position(key)) is not None), default=-1
        )

    keys = {n: first_read(n) for n in names}
    return names if all(k < 0 for k in keys.values()) else sorted(names, key=keys.__getitem__)


def check_read_order(plan: Plan, order: list[str] | None = None) -> None:
    """Refuse, before anything is read, a plan that reads a front-to-back source (a stream on stdin) out of
    its order: the tensors of the plan's outputs, in ``order`` (default: output order), through every plan
    read as a source."""
    from llmkit.errors import InputError

    last: dict[int, tuple[int, str]] = {}
    for name in order if order is not None else [s.name for s in plan.specs]:
        for src, key in leaf_reads(plan, name):
            pos = src.stream_position(key)
            if pos is None or getattr(src, "holds_skipped", False):
                continue
            before = last.get(id(src))
            if before is not None and pos < before[0]:
                raise InputError(
                    f"{plan.job} needs tensor {key!r} after {before[1]!r}, but the stream on stdin holds it before",
                    path=src.path,
                    hint="write the input to a file first (-o FOLDER) and pass that folder instead of -",
                )
            last[id(src)] = (pos, key)


def held_bytes(plan: Plan, order: list[str]) -> int:
    """The most bytes remote files hold at once while the plan runs in ``order``: a source that reads any
    order (``holds_skipped``, ``llmkit.io.remote``) keeps each tensor of a file it passes on the way to a later
    one until asked for (a tensor the plan never asks for stays held). Plus the read-ahead of the remote files
    (``reader.AHEAD`` chunks for each of the two files at most that are read at once: the one finishing and
    the next)."""
    files: dict[int, dict[str, tuple[int, int]]] = {}  # id(file) -> each of its tensors -> (position, bytes)
    sequence: list[tuple[int, str]] = []
    for name in order:
        for src, key in leaf_reads(plan, name):
            if not getattr(src, "holds_skipped", False) or src.stream_position(key) is None:
                continue
            file = src.weight_map[key]
            f = id(file)
            if f not in files:
                files[f] = {
                    k: (p, src.info(k).nbytes)
                    for k, owner in src.weight_map.items()
                    if owner is file and (p := src.stream_position(k)) is not None
                }
            sequence.append((f, key))
    if not files:
        return 0
    from llmkit.io.remote.reader import AHEAD, CHUNK

    peak = held = 0
    passed: dict[int, int] = {}  # id(file) -> the position read up to
    taken: set[tuple[int, str]] = set()
    for f, key in sequence:
        if (f, key) in taken:
            continue
        taken.add((f, key))
        pos, nbytes = files[f][key]
        if pos < passed.get(f, -1):
            held -= nbytes  # it was held: handed out now
            continue
        for other, (p, n) in files[f].items():
            if passed.get(f, -1) < p < pos and (f, other) not in taken:
                held += n
        passed[f] = pos
        peak = max(peak, held)
    return peak + min(len(files), 2) * AHEAD * CHUNK
