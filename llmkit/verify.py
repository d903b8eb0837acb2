"""File checksums against published tables, and layout-independent per-tensor hashes.

- :func:`hash_file` hashes a file with 8 MiB ``readinto`` buffers (hashlib releases the GIL on large
  buffers, so several files hash in parallel on threads: :func:`hash_files`).
- :func:`plan_verify` + :func:`run_verify` check folders/files against a table (``--table``) or the
  built-in tables picked by file names and sizes; each file is ok / mismatch / missing / extra, and a
  mismatch is explained (:func:`classify_mismatch`: formatting-only JSON, re-saved checkpoint, truncation).
- :func:`tensor_digest` hashes a tensor's raw little-endian C-order bytes; with its name, dtype and shape
  (:class:`TensorDigest`, one ``--tensors`` line) it identifies the tensor whatever file, shard or
  format holds it.
- :func:`compare_sources` / :func:`verify_tensors` compare two models tensor by tensor, one pair in
  memory at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from llmkit.errors import InputError
from llmkit.hashing import ALGORITHMS, BUFFER_BYTES, hash_file, new_hash  # noqa: F401
from llmkit.io.destination import broken_link
from llmkit.io.sinks import tensor_bytes
from llmkit.io.sources import TensorSource, open_source
from llmkit.registry import (KNOWN_SIZES, MODELS, TABLE_APPROX_BYTES, ChecksumTable, TableEntry, builtin_tables,
                             get_table)

# hash_file / new_hash live in llmkit.hashing (no torch import); re-exported here.


def tensor_digest(tensor: torch.Tensor, algorithm: str = "sha256") -> str:
    """Hex digest of the tensor's raw bytes (C order). dtype and shape are not part of the digest;
    the ``--tensors`` table carries them beside it."""
    h = new_hash(algorithm)
    h.update(tensor_bytes(tensor))
    return h.hexdigest()


@dataclass
class TensorComparison:
    """Result of :func:`compare_sources`; name lists follow the order of ``a`` (``only_b``: of ``b``)."""

    identical: bool
    differing: list[str] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    compared: int = 0
    reasons: dict[str, str] = field(default_factory=dict)  # name -> "dtype F16 vs F32" / "shape ..." / "bytes"


def _as_source(x: TensorSource | Path | str) -> tuple[TensorSource, bool]:
    if isinstance(x, TensorSource):
        return x, False
    return open_source(x), True


def _same_bytes(ta: torch.Tensor, tb: torch.Tensor) -> bool:
    a = ta.detach().contiguous().reshape(-1).view(torch.uint8)
    b = tb.detach().contiguous().reshape(-1).view(torch.uint8)
    return bool(torch.equal(a, b))


def compare_sources(a: TensorSource | Path, b: TensorSource | Path, *,
                    progress: Callable[[int], None] | None = None) -> TensorComparison:
    """Compare two models tensor by tensor: names, dtypes, shapes and raw bytes (bit-exact, so NaNs
    with equal bits are equal and -0.0 differs from 0.0). Streaming: one tensor pair in memory.
    ``progress(nbytes)`` is called with the bytes of each tensor of ``a`` compared."""
    sa, close_a = _as_source(a)
    try:
        sb, close_b = _as_source(b)
        try:
            keys_b = set(sb.keys())
            keys_a = set(sa.keys())
            result = TensorComparison(identical=True)
            result.only_a = [k for k in sa.keys() if k not in keys_b]
            result.only_b = [k for k in sb.keys() if k not in keys_a]
            for name in sa.keys():
                if name not in keys_b:
                    continue
                ia, ib = sa.info(name), sb.info(name)
                result.compared += 1
                if ia.dtype != ib.dtype:
                    result.differing.append(name)
                    result.reasons[name] = f"dtype {_dt(ia.dtype)} vs {_dt(ib.dtype)}"
                elif tuple(ia.shape) != tuple(ib.shape):
                    result.differing.append(name)
                    result.reasons[name] = f"shape {_shape(ia.shape)} vs {_shape(ib.shape)}"
                elif not _same_bytes(sa.get(name), sb.get(name)):
                    result.differing.append(name)
                    result.reasons[name] = "bytes differ"
                sa.release(name)  # mapped .bin pages of compared tensors leave RSS
                sb.release(name)
                if progress is not None:
                    progress(ia.nbytes)
            result.identical = not (result.differing or result.only_a or result.only_b)
            return result
        finally:
            if close_b:
                sb.close()
    finally:
        if close_a:
            sa.close()


def _dt(dtype: torch.dtype) -> str:
    from llmkit.io.dtypes import TORCH_TO_ST

    return TORCH_TO_ST.get(dtype, str(dtype).replace("torch.", ""))


def _shape(shape) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


# ====================================================================== file tables

WEIGHT_SUFFIXES = (".bin", ".pth", ".pt", ".safetensors", ".ckpt")
STATUSES = ("ok", "mismatch", "missing", "extra")


def default_jobs() -> int:
    """Threads for hashing when ``--jobs`` is not given: up to 4, never more than the CPUs."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class FileCheck:
    """One row of a verification: a file and what the table expects of it."""

    path: str  # as the user would type it: the PATH argument joined with the file's relative path
    expected: str | None
    actual: str | None
    algorithm: str
    status: str  # ok | mismatch | missing | extra
    table: str | None = None
    note: str | None = None  # why a mismatch is (or is not) corruption


@dataclass
class VerifyReport:
    ok: bool
    algorithm: str
    files: list[FileCheck] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # the tables the files were checked against
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {s: sum(1 for f in self.files if f.status == s) for s in STATUSES}


def list_files(folder: Path) -> dict[str, Path]:
    """Regular files under ``folder`` by relative POSIX path, sorted; hidden files and folders (a name
    starting with ``.``, e.g. ``.cache/huggingface`` left by downloads) are skipped."""
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if fn.startswith("."):
                continue
            p = Path(dirpath) / fn
            if p.is_file():
                out[p.relative_to(folder).as_posix()] = p
    return dict(sorted(out.items()))


def display_path(arg: str, rel: str) -> str:
    """``arg`` as typed joined with ``rel`` (``.`` + ``a.bin`` -> ``./a.bin``, like ``md5sum ./*``)."""
    return rel if arg == "" else (arg + rel if arg.endswith("/") else f"{arg}/{rel}")


@dataclass
class _Root:
    """One PATH argument: a folder (files by relative path) or a group of explicit files."""

    arg: str
    folder: Path | None
    files: dict[str, Path]  # key: relative path (folder) or the path as typed (explicit files)
    extras: bool = True  # report files the table does not list

    def show(self, key: str) -> str:
        return display_path(self.arg, key) if self.folder is not None else key


def _not_found(p: Path) -> InputError:
    problem = broken_link(p)
    if problem is not None:
        return InputError(f"the path {problem}", path=p, hint="fix the link or pass the file itself")
    if p.exists():
        return InputError("not a regular file or folder", path=p, hint="pass files or folders")
    return InputError("no such file or folder", path=p, hint="check the path")


def _roots(paths: list[Path]) -> list[_Root]:
    roots: list[_Root] = []
    loose: dict[str, Path] = {}
    for p in paths:
        if p.is_dir():
            roots.append(_Root(str(p) if str(p) != "." else ".", p, list_files(p)))
        elif p.is_file():
            loose[str(p)] = p
        else:
            raise _not_found(p)
    if loose:
        roots.append(_Root("", None, loose))
    return roots


def _match(root: _Root, table: ChecksumTable) -> dict[TableEntry, str]:
    """Table entries found in ``root`` -> the key of the file in ``root.files``."""
    found: dict[TableEntry, str] = {}
    taken: set[str] = set()
    if root.folder is None:
        # Explicit files: match by the path as typed, else by basename.
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
        from llmkit.io.sinks import human_bytes

        return False, (f"file names match table {table.name}, but the sizes do not (largest file "
                       f"{human_bytes(largest)}; that table's files total about {human_bytes(approx)}); "
                       f"pass --table {table.name} to check against it anyway")
    return True, None


def _table_order() -> dict[str, int]:
    order: dict[str, int] = {}
    for m in MODELS:
        for t in m.tables.values():
            order.setdefault(t, len(order))
    return order


@dataclass
class VerifyPlan:
    """What :func:`run_verify` will hash: built by :func:`plan_verify` from names and sizes only."""

    algorithm: str
    roots: list[_Root]
    candidates: list[list[tuple[ChecksumTable, dict[TableEntry, str]]]]  # per root
    explicit: bool
    notes: list[str] = field(default_factory=list)

    def files_to_hash(self) -> list[Path]:
        seen: dict[Path, None] = {}
        for root, cands in zip(self.roots, self.candidates):
            for _, matched in cands:
                for key in matched.values():
                    seen.setdefault(root.files[key], None)
        return list(seen)

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files_to_hash())


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
        t = get_table(table)
        if algorithm is not None and algorithm != t.algorithm:
            raise InputError(f"table {t.name} holds {t.algorithm} digests, not {algorithm}",
                             path=t.path, hint=f"use --algo {t.algorithm} or leave --algo out")
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
    if not paths:
        raise InputError("nothing to verify", hint="pass the downloaded folder or files, or --table FILE")
    algorithm = algorithm or "md5"
    roots = _roots(paths)
    order = _table_order()
    tables = sorted((t for t in builtin_tables().values() if t.algorithm == algorithm),
                    key=lambda t: (order.get(t.name, len(order)), t.name))
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
                detail = (f" (the file names match {', '.join(n for n, _ in rejected)}, but the sizes are far from "
                          f"the published files'; pass --table {rejected[0][0]} to check against it anyway)")
            raise InputError(
                "no built-in checksum table matches these files" + detail,
                path=where, hint="pass --table NAME or --table FILE (llmkit models lists the tables), or compare "
                                 "two models with llmkit verify --tensors A B")
        all_cands.append(cands)
    return VerifyPlan(algorithm, roots, all_cands, explicit=False, notes=notes)


def hash_files(files: list[Path], algorithm: str = "md5", *, jobs: int = 1,
               progress: Callable[[int], None] | None = None) -> dict[Path, str]:
    """Hash files on ``jobs`` threads (largest first); returns digests by path."""
    lock = threading.Lock()

    def advance(n: int) -> None:
        if progress is not None:
            with lock:
                progress(n)

    ordered = sorted(dict.fromkeys(files), key=lambda p: -p.stat().st_size)
    if jobs <= 1 or len(ordered) <= 1:
        return {p: hash_file(p, algorithm, progress=advance) for p in ordered}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="llmkit-hash") as pool:
        futures = {p: pool.submit(hash_file, p, algorithm, progress=advance) for p in ordered}
        return {p: f.result() for p, f in futures.items()}


def run_verify(plan: VerifyPlan, *, jobs: int = 1, progress: Callable[[int], None] | None = None,
               classify: bool = True) -> VerifyReport:
    """Hash the planned files and report each as ok / mismatch / missing / extra."""
    digests = hash_files(plan.files_to_hash(), plan.algorithm, jobs=jobs, progress=progress)
    report = VerifyReport(ok=True, algorithm=plan.algorithm, notes=list(plan.notes))
    for root, cands in zip(plan.roots, plan.candidates):
        chosen = cands if plan.explicit else _choose(root, cands, digests, report.notes)
        used: set[str] = set()
        for t, matched in chosen:
            if t.name not in report.tables:
                report.tables.append(t.name)
            for e in t.entries:
                key = matched.get(e)
                if key is None:
                    if root.folder is not None:
                        report.files.append(FileCheck(display_path(root.arg, e.rel), e.digest, None,
                                                      t.algorithm, "missing", t.name))
                    continue
                used.add(key)
                path = root.files[key]
                actual = digests[path]
                status = "ok" if actual == e.digest else "mismatch"
                check = FileCheck(root.show(key), e.digest, actual, t.algorithm, status, t.name)
                if status == "mismatch" and classify:
                    check.note = classify_mismatch(path, e.digest, t.algorithm, table=t, entry=e)
                report.files.append(check)
        for key in root.files:
            if key not in used and root.extras:
                report.files.append(FileCheck(root.show(key), None, None, plan.algorithm, "extra"))
    report.ok = all(f.status in ("ok", "extra") for f in report.files) and any(
        f.status == "ok" for f in report.files)
    return report


def _choose(root: _Root, cands, digests: dict[Path, str], notes: list[str]):
    """Among candidate tables, keep the best-matching one of each group listing the same files."""
    def score(item):
        t, matched = item
        ok = sum(1 for e, k in matched.items() if digests.get(root.files[k]) == e.digest)
        return ok, len(matched)

    ranked = sorted(enumerate(cands), key=lambda ic: (-score(ic[1])[0], -score(ic[1])[1], ic[0]))
    chosen, taken = [], set()
    for _, (t, matched) in ranked:
        keys = set(matched.values())
        if keys & taken:
            winner = next(c for c, m in chosen if keys & set(m.values()))
            notes.append(f"the file names also match table {t.name}; {winner.name} was used "
                         f"({score((winner, dict(chosen)[winner]))[0]} of its files match, "
                         f"{score((t, matched))[0]} of {t.name}'s); pass --table to choose")
            continue
        chosen.append((t, matched))
        taken |= keys
    order = {id(c[0]): i for i, c in enumerate(cands)}
    return sorted(chosen, key=lambda c: order[id(c[0])])


def verify_paths(paths: list[Path], *, table: str | Path | None = None, algorithm: str | None = None,
                 jobs: int = 1, progress: Callable[[int], None] | None = None) -> VerifyReport:
    """:func:`plan_verify` then :func:`run_verify` (for callers that need no progress total)."""
    return run_verify(plan_verify(paths, table=table, algorithm=algorithm), jobs=jobs, progress=progress)


def verify_file(path: Path, algorithm: str = "md5") -> list[tuple[str, str, bool]]:
    """Check one file against every built-in table listing its basename:
    ``[(table, expected, matches)]`` (empty when no table knows the name). One hash."""
    from llmkit.registry import find_expected

    expected = find_expected(path.name, algorithm)
    if not expected:
        return []
    actual = hash_file(path, algorithm)
    return [(t, d, d == actual) for t, d in expected]


# ====================================================================== mismatch classification

METADATA_KEYS = ("transformers_version", "_name_or_path", "_commit_hash")
# transformers writes its version into config.json / generation_config.json; these are the versions a
# published file may carry (the cards date from 2023, transformers 4.26 - 4.35).
_TF_VERSIONS = tuple(v for m in range(26, 58) for v in (f"4.{m}.0.dev0", f"4.{m}.0", f"4.{m}.1", f"4.{m}.2",
                                                          f"4.{m}.3"))


def _serializations(obj) -> list[bytes]:
    out = []
    for indent in (2, None, 4):
        for sort_keys in (True, False):
            for ensure_ascii in (False, True):
                text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
                for tail in ("\n", ""):
                    out.append((text + tail).encode("utf-8"))
    return out


def _json_variants(obj) -> list[tuple[object, str]]:
    """(object, what changed) candidates for the published file's content."""
    variants: list[tuple[object, str]] = [(obj, "")]
    if not isinstance(obj, dict):
        return variants
    base = [(obj, "")]
    if "dtype" in obj and "torch_dtype" not in obj:  # transformers 5 renamed torch_dtype -> dtype
        renamed = {("torch_dtype" if k == "dtype" else k): v for k, v in obj.items()}
        base.append((renamed, "the key dtype was torch_dtype"))
    for o, what in base:
        if o is not obj:
            variants.append((o, what))
        if "transformers_version" in o:
            stripped = {k: v for k, v in o.items() if k != "transformers_version"}
            variants.append((stripped, _join(what, "no transformers_version")))
            for v in _TF_VERSIONS:
                if v != o["transformers_version"]:
                    variants.append(({**o, "transformers_version": v},
                                     _join(what, f"transformers_version was {v} (yours: {o['transformers_version']})")))
        else:
            for v in _TF_VERSIONS:
                variants.append(({**o, "transformers_version": v}, _join(what, f"transformers_version {v} was present")))
    return variants


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def classify_json_mismatch(data: bytes, expected: str, algorithm: str) -> str:
    """Why a JSON file's digest differs from ``expected``: re-serialises the content in the ways
    transformers and ``json`` write it (indent, key order, ASCII escapes, final newline, version
    metadata) and reports the variant whose digest equals the published one, if any."""
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"not valid JSON ({e.__class__.__name__}: {e}); the file is damaged or truncated: download it again"
    for variant, what in _json_variants(obj):
        for blob in _serializations(variant):
            h = hashlib.new(algorithm)
            h.update(blob)
            if h.hexdigest() == expected:
                if not what:
                    return "same JSON content as the published file; only the formatting differs (not corruption)"
                return f"same JSON content as the published file except metadata: {what} (not corruption)"
    return "the JSON content differs from the published file (not only formatting); compare it with the original"


def classify_mismatch(path: Path, expected: str, algorithm: str, *, table: ChecksumTable | None = None,
                      entry: TableEntry | None = None) -> str:
    """A one-sentence explanation of a digest mismatch: formatting-only JSON, a readable checkpoint
    whose bytes changed (re-saved), a truncated file, or plain different content."""
    size = path.stat().st_size
    if table is not None and entry is not None:
        known = KNOWN_SIZES.get((table.name, entry.basename))
        if known is not None and known != size:
            return f"size is {size:,} bytes, the published file has {known:,}: truncated or a different file"
    if size == 0:
        return "the file is empty: download it again"
    name = path.name
    if name.endswith(".json") and size <= 16 * 1024 * 1024:
        return classify_json_mismatch(path.read_bytes(), expected, algorithm)
    if path.suffix in (".bin", ".pth", ".pt", ".safetensors") and not name.endswith(".enc"):
        try:
            with open_source(path) as src:
                n = len(src)
        except InputError as e:
            return f"not a readable checkpoint ({e.message}): damaged or truncated, download it again"
        except Exception as e:  # noqa: BLE001 - any reader failure means the file is unusable
            return f"not a readable checkpoint ({type(e).__name__}): damaged or truncated, download it again"
        if path.suffix == ".safetensors":
            return (f"bytes differ, but the file is a readable safetensors checkpoint with {n} tensors; safetensors "
                    f"bytes are deterministic (a header, then the raw tensor data), so different bytes mean "
                    f"different tensor values, or equal tensors stored in another order, under other names or "
                    f"with other header metadata (e.g. written by another tool or with another shard size); "
                    f"compare tensors with 'llmkit verify --tensors {path} REFERENCE' to tell which")
        return (f"bytes differ, but the file is a readable checkpoint with {n} tensors; .bin bytes depend on the "
                f"torch/transformers version and shard size that wrote them, so compare tensors with "
                f"'llmkit verify --tensors {path} REFERENCE' to tell a re-save from corruption")
    return "content differs from the published file"


# ====================================================================== writing tables


def escape_name(name: str) -> tuple[str, bool]:
    """md5sum's escaping of ``\\`` and newlines in file names (the line then starts with ``\\``)."""
    if "\\" not in name and "\n" not in name and "\r" not in name:
        return name, False
    return name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r"), True


def format_line(digest: str, name: str) -> str:
    """One ``md5sum``-format line (text mode, two spaces)."""
    shown, escaped = escape_name(name)
    return ("\\" if escaped else "") + f"{digest}  {shown}"


@dataclass
class FileDigest:
    path: str
    digest: str
    size: int


@dataclass
class ChecksumResult:
    algorithm: str
    files: list[FileDigest] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [format_line(f.digest, f.path) for f in self.files]


def plan_checksum(paths: list[Path]) -> list[tuple[str, Path]]:
    """(display path, file) for every file under the PATHs, in the order given (folders sorted)."""
    out: list[tuple[str, Path]] = []
    for p in paths:
        if p.is_dir():
            arg = str(p)
            out += [(display_path(arg, rel), f) for rel, f in list_files(p).items()]
        elif p.is_file():
            out.append((str(p), p))
        else:
            raise _not_found(p)
    return out


def checksum_files(planned: list[tuple[str, Path]], algorithm: str = "md5", *, jobs: int = 1,
                   progress: Callable[[int], None] | None = None) -> ChecksumResult:
    new_hash(algorithm)
    digests = hash_files([f for _, f in planned], algorithm, jobs=jobs, progress=progress)
    return ChecksumResult(algorithm, [FileDigest(shown, digests[f], f.stat().st_size) for shown, f in planned])


# ====================================================================== per-tensor tables

TENSOR_TABLE_HEADER = "# llmkit tensor checksums v1: <{algo} of the raw C-order bytes>  <name> <dtype> <shape>"
_TENSOR_LINE = re.compile(r"^(?P<hex>[0-9a-f]{32}|[0-9a-f]{64})  (?P<name>\S.*) (?P<dtype>[A-Z0-9_]+) "
                          r"\[(?P<shape>[0-9,]*)\]$")


@dataclass(frozen=True)
class TensorDigest:
    """A tensor's identity independent of file, shard and format."""

    name: str
    dtype: str  # safetensors code: F16, BF16, F32, ...
    shape: tuple[int, ...]
    digest: str

    def line(self) -> str:
        return f"{self.digest}  {self.name} {self.dtype} {_shape(self.shape)}"


@dataclass
class TensorTable:
    algorithm: str
    source: str
    tensors: list[TensorDigest] = field(default_factory=list)

    def text(self) -> str:
        head = [TENSOR_TABLE_HEADER.format(algo=self.algorithm), f"# source: {self.source}"]
        return "\n".join(head + [t.line() for t in self.tensors]) + "\n"


def tensor_table(source: TensorSource | Path, algorithm: str = "sha256", *, jobs: int = 1,
                 progress: Callable[[int], None] | None = None) -> TensorTable:
    """Per-tensor digests of a model in its stored order.

    Tensors are read one at a time on the calling thread (sources are not thread-safe) and hashed on
    ``jobs`` threads, with at most ``2 * jobs`` tensors in flight: memory ~ that many tensors.
    """
    new_hash(algorithm)
    src, close = _as_source(source)
    try:
        names = src.keys()
        infos = {n: src.info(n) for n in names}
        lock = threading.Lock()

        def work(name: str, tensor: torch.Tensor) -> str:
            d = tensor_digest(tensor, algorithm)
            if progress is not None:
                with lock:
                    progress(infos[name].nbytes)
            return d

        digests: dict[str, str] = {}
        if jobs <= 1:
            for n in names:
                digests[n] = work(n, src.get(n))
        else:
            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="llmkit-thash") as pool:
                pending: list = []
                for n in names:
                    pending.append((n, pool.submit(work, n, src.get(n))))
                    while len(pending) >= 2 * jobs:
                        m, f = pending.pop(0)
                        digests[m] = f.result()
                for m, f in pending:
                    digests[m] = f.result()
        return TensorTable(algorithm, str(src.path),
                           [TensorDigest(n, _dt(infos[n].dtype), tuple(infos[n].shape), digests[n]) for n in names])
    finally:
        if close:
            src.close()


def is_tensor_table(path: Path) -> bool:
    """True if ``path`` is a text file whose first checksum line is a ``--tensors`` line."""
    if not path.is_file() or path.stat().st_size > 64 * 1024 * 1024:
        return False
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(TENSOR_TABLE_HEADER[:26]):
                    return True
                if line.strip() and not line.startswith("#"):
                    return bool(_TENSOR_LINE.match(line.rstrip("\n")))
    except (UnicodeDecodeError, OSError):
        return False
    return False


def parse_tensor_table(text: str, *, path: Path | None = None) -> TensorTable:
    tensors: list[TensorDigest] = []
    source = str(path) if path else ""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            if line.startswith("# source: "):
                source = line[len("# source: "):]
            continue
        m = _TENSOR_LINE.match(line)
        if not m:
            raise InputError(f"line {lineno} is not '<hex>  <name> <dtype> [<shape>]': {line[:80]!r}", path=path,
                             hint="tensor tables are written by llmkit checksum --tensors")
        shape = tuple(int(d) for d in m.group("shape").split(",") if d)
        tensors.append(TensorDigest(m.group("name"), m.group("dtype"), shape, m.group("hex")))
    if not tensors:
        raise InputError("no tensor lines found", path=path)
    algos = {len(t.digest) for t in tensors}
    if len(algos) != 1:
        raise InputError("the tensor table mixes md5 and sha256 digests", path=path)
    algorithm = "md5" if algos.pop() == 32 else "sha256"
    return TensorTable(algorithm, source, tensors)


def load_tensor_table(path: Path) -> TensorTable:
    return parse_tensor_table(path.read_text(encoding="utf-8"), path=path)


# ====================================================================== comparing two models


@dataclass
class TensorVerifyReport:
    """``llmkit verify --tensors A B``: tensor by tensor, plus the non-weight files of two folders."""

    ok: bool
    a: str
    b: str
    method: str  # "bytes" (two models) or the digest algorithm (a model against a table)
    identical: bool
    compared: int
    differing: list[str] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    files: list[FileCheck] = field(default_factory=list)  # config/tokenizer files compared (folders only)


def _compare_tables(ta: list[TensorDigest], tb: list[TensorDigest]) -> TensorComparison:
    db = {t.name: t for t in tb}
    da = {t.name: t for t in ta}
    res = TensorComparison(identical=True)
    res.only_a = [t.name for t in ta if t.name not in db]
    res.only_b = [t.name for t in tb if t.name not in da]
    for t in ta:
        o = db.get(t.name)
        if o is None:
            continue
        res.compared += 1
        if t.dtype != o.dtype:
            res.differing.append(t.name)
            res.reasons[t.name] = f"dtype {t.dtype} vs {o.dtype}"
        elif t.shape != o.shape:
            res.differing.append(t.name)
            res.reasons[t.name] = f"shape {_shape(t.shape)} vs {_shape(o.shape)}"
        elif t.digest != o.digest:
            res.differing.append(t.name)
            res.reasons[t.name] = "bytes differ"
    res.identical = not (res.differing or res.only_a or res.only_b)
    return res


def _aux_files(folder: Path) -> dict[str, Path]:
    """Non-weight files of a model folder (config, tokenizer, ...), without shard indexes."""
    return {rel: p for rel, p in list_files(folder).items()
            if not rel.endswith(WEIGHT_SUFFIXES) and not rel.endswith(".index.json")}


def compare_json(a: bytes, b: bytes) -> str | None:
    """None if equal as JSON, else a short description of the difference (keys that differ)."""
    try:
        oa, ob = json.loads(a.decode("utf-8-sig")), json.loads(b.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"not valid JSON ({e})"
    if oa == ob:
        return None
    if isinstance(oa, dict) and isinstance(ob, dict):
        keys = sorted(k for k in set(oa) | set(ob) if oa.get(k, _MISSING) != ob.get(k, _MISSING))
        return "keys differ: " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
    return "content differs"


_MISSING = object()


def compare_aux_files(a: Path, b: Path) -> list[FileCheck]:
    """Compare the non-weight files of two model folders: JSON semantically (formatting or metadata
    only is reported as ok with a note), everything else by sha256."""
    fa, fb = _aux_files(a), _aux_files(b)
    out: list[FileCheck] = []
    for rel in sorted(set(fa) | set(fb)):
        pa, pb = fa.get(rel), fb.get(rel)
        if pa is None or pb is None:
            out.append(FileCheck(rel, None, None, "sha256", "missing" if pa is None else "extra",
                                 note=f"only in {b if pa is None else a}"))
            continue
        ha, hb = hash_file(pa, "sha256"), hash_file(pb, "sha256")
        if ha == hb:
            out.append(FileCheck(rel, hb, ha, "sha256", "ok"))
            continue
        note, status = "bytes differ", "mismatch"
        if rel.endswith(".json"):
            da, db = pa.read_bytes(), pb.read_bytes()
            diff = compare_json(da, db)
            if diff is None:
                note, status = "same JSON content; only the formatting differs", "ok"
            else:
                oa, ob = (None, None) if diff.startswith("not valid") else (json.loads(da), json.loads(db))
                if isinstance(oa, dict) and isinstance(ob, dict):
                    strip = lambda o: {k: v for k, v in o.items() if k not in METADATA_KEYS}  # noqa: E731
                    if strip(oa) == strip(ob):
                        note, status = f"only metadata differs ({diff[len('keys differ: '):]})", "ok"
                    else:
                        note = diff
                else:
                    note = diff
        out.append(FileCheck(rel, hb, ha, "sha256", status, note=note))
    return out


def verify_tensors(a: Path, b: Path, *, jobs: int = 1,
                   progress: Callable[[int], None] | None = None) -> TensorVerifyReport:
    """Compare two models tensor by tensor (either may be a ``--tensors`` table file). Two models are
    compared byte for byte (no hashing); a model and a table by the table's digest algorithm."""
    a_tab, b_tab = is_tensor_table(a), is_tensor_table(b)
    if a_tab and b_tab:
        ta, tb = load_tensor_table(a), load_tensor_table(b)
        if ta.algorithm != tb.algorithm:
            raise InputError(f"the tables use different algorithms ({ta.algorithm}, {tb.algorithm})", path=b,
                             hint="write both with the same llmkit checksum --tensors --algo")
        cmp, method = _compare_tables(ta.tensors, tb.tensors), ta.algorithm
    elif a_tab or b_tab:
        table = load_tensor_table(a if a_tab else b)
        model = tensor_table(b if a_tab else a, table.algorithm, jobs=jobs, progress=progress)
        ta, tb = (table.tensors, model.tensors) if a_tab else (model.tensors, table.tensors)
        cmp, method = _compare_tables(ta, tb), table.algorithm
    else:
        cmp, method = compare_sources(a, b, progress=progress), "bytes"
    files = compare_aux_files(a, b) if a.is_dir() and b.is_dir() else []
    ok = cmp.identical and all(f.status == "ok" for f in files)
    return TensorVerifyReport(ok=ok, a=str(a), b=str(b), method=method, identical=cmp.identical,
                              compared=cmp.compared, differing=cmp.differing, only_a=cmp.only_a,
                              only_b=cmp.only_b, reasons=cmp.reasons, files=files)


def tensor_total_bytes(path: Path) -> int:
    """Bytes of tensor data a model at ``path`` holds (0 for a tensor table)."""
    if is_tensor_table(path):
        return 0
    with open_source(path) as src:
        return src.total_bytes
