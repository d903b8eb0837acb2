"""Files checked against checksum tables (``llmkit verify PATH...``): a given table or the built-in ones.

:func:`plan_verify` decides from names and sizes alone which table applies to which file;
:func:`run_verify` hashes the planned files once and reports each as ok / mismatch / missing / extra,
explaining a mismatch (:func:`~llmkit.verify.mismatch.classify_mismatch`). :func:`verify_files` does
both for a :class:`VerifyOptions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import InputError
from llmkit.hashing import ALGORITHMS
from llmkit.pipeline import Notice, ProgressFactory, Result, no_progress
from llmkit.registry import MODELS, TABLE_APPROX_BYTES, ChecksumTable, TableEntry, builtin_tables, get_table
from llmkit.units import human_bytes
from llmkit.verify.files import (
    STATUSES,
    WEIGHT_SUFFIXES,
    FileCheck,
    display_path,
    hash_files,
    list_files,
    not_found,
    resolve_jobs,
)
from llmkit.verify.mismatch import classify_mismatch


@dataclass(frozen=True)
class VerifyOptions:
    """``llmkit verify PATH...``: folders or files; ``table`` a built-in name or a table file (None: the
    built-in tables matching the names and sizes); ``algorithm`` None = the table's (without a table:
    the md5 and the sha256 tables); ``jobs`` hashing threads (0 = up to 4)."""

    paths: tuple[Path, ...] = ()
    table: str | Path | None = None
    algorithm: str | None = None
    jobs: int = 0


@dataclass
class VerifyReport(Result):
    """``ok``: every expected file matches (extra files do not count) and at least one does; ``checks``:
    one per file with the same status as ``files``; ``notes`` (also ``info`` notices): table choices."""

    algorithm: str
    files: list[FileCheck] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # the tables the files were checked against
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for f in self.files if f.status == s) for s in STATUSES}


@dataclass
class _Root:
    """One PATH argument: a folder (files by relative path) or a group of explicit files."""

    arg: str
    folder: Path | None
    files: dict[str, Path]  # key: relative path (folder) or the path as typed (explicit files)
    extras: bool = True  # report files the table does not list

    def show(self, key: str) -> str:
        return display_path(self.arg, key) if self.folder is not None else key


def _roots(paths: list[Path]) -> list[_Root]:
    roots: list[_Root] = []
    loose: dict[str, Path] = {}
    for p in paths:
        if p.is_dir():
            roots.append(_Root(str(p) if str(p) != "." else ".", p, list_files(p)))
        elif p.is_file():
            loose[str(p)] = p
        else:
            raise not_found(p)
    if loose:
        roots.append(_Root("", None, loose))
    return roots


def _match_loose(root: _Root, table: ChecksumTable) -> dict[TableEntry, str]:
    """Explicit files: match by the path as typed, else by basename."""
    found: dict[TableEntry, str] = {}
    by_base: dict[str, list[TableEntry]] = {}
    for e in table.entries:
        by_base.setdefault(e.basename, []).append(e)
    for key, p in root.files.items():
        norm = key[2:] if key.startswith("./") else key
        exact = [e for e in table.entries if e.rel == norm and e not in found]
        cands = exact or [e for e in by_base.get(p.name, []) if e not in found]
        if cands:
            found[cands[0]] = key
    return found


def _match(root: _Root, table: ChecksumTable) -> dict[TableEntry, str]:
    """Table entries found in ``root`` -> the key of the file in ``root.files``."""
    if root.folder is None:
        return _match_loose(root, table)
    found: dict[TableEntry, str] = {}
    taken: set[str] = set()
    folder_resolved = root.folder.resolve()
    for e in table.entries:
        key = None
        if e.rel in root.files:
            key = e.rel
        else:
            tails = [k for k in root.files if k.endswith("/" + e.rel) and k not in taken]
            if len(tails) == 1:
                key = tails[0]
            else:
                # A table written from the current folder (``llmkit checksum dir > t.md5``) names ``dir/file``.
                cwd_path = Path(e.rel)
                if cwd_path.is_file():
                    try:
                        rel = cwd_path.resolve().relative_to(folder_resolved).as_posix()
                    except ValueError:
                        rel = None
                    if rel is not None and rel in root.files:
                        key = rel
        if key is not None and key not in taken:
            found[e] = key
            taken.add(key)
    return found


def _is_weight_entry(e: TableEntry) -> bool:
    # ``pytorch_model.bin.<hex>.enc`` counts: the suffix may sit inside the name.
    return any(s + "." in e.basename + "." for s in WEIGHT_SUFFIXES)


def _size_plausible(table: ChecksumTable, matched: dict[TableEntry, Path]) -> tuple[bool, str | None]:
    """Names alone are weak evidence (every 6-shard model has ``pytorch_model-00001-of-00006.bin``):
    a built-in table is a candidate only if a weight file it lists is present with a plausible size."""
    weights = {e: p for e, p in matched.items() if _is_weight_entry(e)}
    if not weights:
        return False, None
    approx = TABLE_APPROX_BYTES.get(table.name)
    if approx is None:
        return True, None
    n_weights = max(1, sum(1 for e in table.entries if _is_weight_entry(e)))
    largest = max(p.stat().st_size for p in weights.values())
    total = sum(p.stat().st_size for p in matched.values())
    if largest * 10 * n_weights < approx or total > 2 * approx:
        return False, (
            f"file names match table {table.name}, but the sizes do not (largest file "
            f"{human_bytes(largest)}; that table's files total about {human_bytes(approx)}); "
            f"pass --table {table.name} to check against it anyway"
        )
    return True, None


def _table_order() -> dict[str, int]:
    order: dict[str, int] = {}
    for m in MODELS:
        for t in m.tables.values():
            order.setdefault(t, len(order))
    return order


_Candidate = tuple[ChecksumTable, dict[TableEntry, str]]  # a table and its entries matched to the root's files


@dataclass
class VerifyPlan:
    """What :func:`run_verify` will hash: built by :func:`plan_verify` from names and sizes only.
    ``algorithm``: the one asked for or the table's; without either, ``md5`` (candidate tables of both
    algorithms are kept and each file is hashed with the algorithm of every table listing it)."""

    algorithm: str
    roots: list[_Root]
    candidates: list[list[_Candidate]]  # per root
    explicit: bool
    notes: list[str] = field(default_factory=list)

    def hashes(self) -> list[tuple[Path, str]]:
        """(file, algorithm) pairs to hash, each once."""
        seen: dict[tuple[Path, str], None] = {}
        for root, cands in zip(self.roots, self.candidates, strict=True):
            for t, matched in cands:
                for key in matched.values():
                    seen.setdefault((root.files[key], t.algorithm), None)
        return list(seen)

    def files_to_hash(self) -> list[Path]:
        return list(dict.fromkeys(p for p, _ in self.hashes()))

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p, _ in self.hashes())


def _plan_with_table(paths: list[Path], table: str | Path, algorithm: str | None) -> VerifyPlan:
    t = get_table(table)
    if algorithm is not None and algorithm != t.algorithm:
        raise InputError(
            f"table {t.name} holds {t.algorithm} digests, not {algorithm}",
            path=t.path,
            hint=f"use --algo {t.algorithm} or leave --algo out",
        )
    if not paths:
        # Like ``md5sum -c``: the table's paths are relative to the current folder; only they are looked at.
        here = {e.rel: Path(e.rel) for e in t.entries if Path(e.rel).is_file()}
        roots = [_Root("", Path("."), here, extras=False)]
    else:
        roots = _roots(paths)
    skip = {t.path.resolve()} if t.path is not None else set()
    for r in roots:  # the table file itself is never an extra
        r.files = {k: f for k, f in r.files.items() if f.resolve() not in skip}
    return VerifyPlan(t.algorithm, roots, [[(t, _match(r, t))] for r in roots], explicit=True)


def plan_verify(paths: list[Path], *, table: str | Path | None = None, algorithm: str | None = None) -> VerifyPlan:
    """Decide which table(s) apply to which files, before any hashing.

    With ``table`` (a built-in name or a table file) every PATH is checked against it. Without, every
    built-in table whose file names match and whose sizes are plausible is a candidate; the choice
    between tables listing the same names (a diff and its recovered model) is made after hashing.
    Raises :class:`InputError` when nothing applies.
    """
    if algorithm is not None and algorithm not in ALGORITHMS:
        raise InputError(f"unknown checksum algorithm {algorithm!r}", hint=f"use one of {', '.join(ALGORITHMS)}")
    if table is not None:
        return _plan_with_table(list(paths), table, algorithm)
    if not paths:
        raise InputError("nothing to verify", hint="pass the downloaded folder or files, or --table FILE")
    roots = _roots(list(paths))
    order = _table_order()
    tables = sorted(
        (t for t in builtin_tables().values() if algorithm is None or t.algorithm == algorithm),
        key=lambda t: (order.get(t.name, len(order)), t.name),
    )
    algorithm = algorithm or "md5"
    notes: list[str] = []
    all_cands = []
    for root in roots:
        cands, rejected = [], []
        for t in tables:
            matched = _match(root, t)
            if not matched:
                continue
            plausible, why = _size_plausible(t, {e: root.files[k] for e, k in matched.items()})
            if plausible:
                cands.append((t, matched))
            elif why:
                rejected.append((t.name, why))
        notes += [why for _, why in rejected]
        if not cands:
            where = root.arg or ", ".join(root.files)
            detail = ""
            if rejected:
                detail = (
                    f" (the file names match {', '.join(n for n, _ in rejected)}, but the sizes are far from "
                    f"the published files'; pass --table {rejected[0][0]} to check against it anyway)"
                )
            raise InputError(
                "no built-in checksum table matches these files" + detail,
                path=where,
                hint="pass --table NAME or --table FILE (llmkit models lists the tables), or compare "
                "two models with llmkit verify --tensors A B",
            )
        all_cands.append(cands)
    return VerifyPlan(algorithm, roots, all_cands, explicit=False, notes=notes)


def _check_root(
    report: VerifyReport, root: _Root, chosen, digests: dict[tuple[Path, str], str], classify: bool
) -> set[str]:
    """Append the rows of one PATH argument's table entries to ``report``; returns the keys used."""
    used: set[str] = set()
    for t, matched in chosen:
        if t.name not in report.tables:
            report.tables.append(t.name)
        for e in t.entries:
            key = matched.get(e)
            if key is None:
                if root.folder is not None:
                    report.files.append(
                        FileCheck(display_path(root.arg, e.rel), e.digest, None, t.algorithm, "missing", t.name)
                    )
                continue
            used.add(key)
            path = root.files[key]
            actual = digests[(path, t.algorithm)]
            status = "ok" if actual == e.digest else "mismatch"
            check = FileCheck(root.show(key), e.digest, actual, t.algorithm, status, t.name)
            if status == "mismatch" and classify:
                check.note = classify_mismatch(path, e.digest, t.algorithm, table=t, entry=e, actual=actual)
            report.files.append(check)
    return used


def run_verify(
    plan: VerifyPlan, *, jobs: int = 1, progress: Callable[[int], None] | None = None, classify: bool = True
) -> VerifyReport:
    """Hash the planned files and report each as ok / mismatch / missing / extra."""
    digests: dict[tuple[Path, str], str] = {}
    for algo in dict.fromkeys(a for _, a in plan.hashes()):
        files = [p for p, a in plan.hashes() if a == algo]
        digests.update({(p, algo): h for p, h in hash_files(files, algo, jobs=jobs, progress=progress).items()})
    report = VerifyReport(algorithm=plan.algorithm, notes=list(plan.notes))
    for root, cands in zip(plan.roots, plan.candidates, strict=True):
        chosen = cands if plan.explicit else _choose(root, cands, digests, report.notes)
        used = _check_root(report, root, chosen, digests, classify)
        for key in root.files:
            if key not in used and root.extras:
                report.files.append(FileCheck(root.show(key), None, None, plan.algorithm, "extra"))
    used_algorithms = sorted({f.algorithm for f in report.files if f.status != "extra"})
    if used_algorithms:
        report.algorithm = "+".join(used_algorithms)
    report.ok = all(f.status in ("ok", "extra") for f in report.files) and any(f.status == "ok" for f in report.files)
    report.checks = [f.check() for f in report.files]
    report.notices = [Notice.info(n) for n in report.notes]
    return report


def _choose(
    root: _Root, cands: list[_Candidate], digests: dict[tuple[Path, str], str], notes: list[str]
) -> list[_Candidate]:
    """Among candidate tables, keep the best-matching one of each group listing the same files: most
    files matching their own line, then most files whose digest the table lists under another name
    (renamed or swapped shards), then most files listed."""

    def score(item: _Candidate) -> tuple[int, int, int]:
        t, matched = item
        actual = {e: digests.get((root.files[k], t.algorithm)) for e, k in matched.items()}
        listed = {e.digest for e in t.entries}
        return (
            sum(1 for e, h in actual.items() if h == e.digest),
            sum(1 for h in actual.values() if h in listed),
            len(matched),
        )

    ranked = sorted(enumerate(cands), key=lambda ic: (tuple(-x for x in score(ic[1])), ic[0]))
    chosen: list[_Candidate] = []
    taken: set[str] = set()
    losers: dict[str, tuple[ChecksumTable, list[_Candidate]]] = {}
    for _, (t, matched) in ranked:
        keys = set(matched.values())
        if keys & taken:
            winner = next(c for c, m in chosen if keys & set(m.values()))
            losers.setdefault(winner.name, (winner, []))[1].append((t, matched))
            continue
        chosen.append((t, matched))
        taken |= keys
    for name, (winner, lost) in losers.items():
        won = score((winner, dict(chosen)[winner]))[0]
        if len(lost) == 1:
            t, matched = lost[0]
            notes.append(
                f"the file names also match table {t.name}; {name} was used ({won} of its files match, "
                f"{score((t, matched))[0]} of {t.name}'s); pass --table to choose"
            )
        else:
            notes.append(
                f"the file names also match {len(lost)} other tables ({', '.join(t.name for t, _ in lost)}); "
                f"{name} was used ({won} of its files match, no other table matches more); "
                f"pass --table to choose"
            )
    order = {id(c[0]): i for i, c in enumerate(cands)}
    return sorted(chosen, key=lambda c: order[id(c[0])])


def verify_files(options: VerifyOptions, *, progress: ProgressFactory | None = None) -> VerifyReport:
    """``llmkit verify``: :func:`plan_verify`, then :func:`run_verify` under one ``<algo> hashing``
    progress bar (bytes of the files to hash)."""
    plan = plan_verify(list(options.paths), table=options.table, algorithm=options.algorithm)
    with (progress or no_progress)(f"{plan.algorithm} hashing", plan.total_bytes) as advance:
        return run_verify(plan, jobs=resolve_jobs(options.jobs), progress=advance)


def verify_paths(
    paths: list[Path], *, table: str | Path | None = None, algorithm: str | None = None, jobs: int = 1
) -> VerifyReport:
    """:func:`verify_files` with keyword arguments (no progress)."""
    return verify_files(VerifyOptions(tuple(paths), table, algorithm, jobs))
