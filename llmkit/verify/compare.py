"""Two models compared tensor by tensor (``llmkit verify --tensors A B``), whatever their shards or format.

A MindSpore ``.ckpt`` compared with a model that is not one is seen under Hugging Face names
(``llmkit.io.mindspore.mindformers.hf_named``), so a checkpoint compares with the model it was converted from.
A GGUF file compared with a model that is not one: a tensor it stores in another type (F16 of an F32 weight,
F32 of an F16 norm, Q8_0) is judged against the other model's converted the same way (``converted``).

Either side may be a model or a ``--tensors`` table. Two models are compared byte for byte, one tensor
pair in memory at a time; a model and a table by the table's digest algorithm. When A and B are
folders their other files (config, tokenizer) are compared too: JSON by content, the rest by sha256.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from operator import eq
from pathlib import Path

from llmkit.errors import InputError
from llmkit.hashing import hash_file
from llmkit.io.core.source import STDIN, TensorSource, open_source
from llmkit.io.mindspore.reader import finish_reads
from llmkit.pipeline import Check, Notice, ProgressFactory, Result, no_progress
from llmkit.verify.converted import converting_side, judge_converted, same_bytes
from llmkit.verify.files import WEIGHT_SUFFIXES, FileCheck, list_files, resolve_jobs
from llmkit.verify.mismatch import json_difference
from llmkit.verify.tensors import (
    TensorDigest,
    as_source,
    is_tensor_table,
    load_tensor_table,
    shape_text,
    stored_code,
    tensor_table,
)


@dataclass(frozen=True)
class TensorVerifyOptions:
    """``llmkit verify --tensors A B``: two models (or ``--tensors`` table files); ``jobs`` hashing
    threads when a side is a table (0 = up to 4); ``dec_key``/``dec_mode`` open an encrypted ``.ckpt``."""

    a: Path
    b: Path
    jobs: int = 0
    dec_key: str | None = None  # the key (file path or env:VAR) of an encrypted .ckpt side
    dec_mode: str | None = None  # None: read from the file


@dataclass
class TensorComparison:
    """Result of :func:`compare_sources`; name lists follow the order of ``a`` (``only_b``: of ``b``)."""

    identical: bool
    differing: list[str] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    compared: int = 0
    reasons: dict[str, str] = field(default_factory=dict)  # name -> "dtype F16 vs F32" / "shape ..." / "bytes"
    warnings: list[str] = field(default_factory=list)  # e.g. an AES-CBC side: nothing vouches for its values
    converted: dict[str, str] = field(default_factory=dict)  # name -> GGUF type: equal to the other converted
    unchecked: dict[str, str] = field(default_factory=dict)  # name -> why it could not be converted the same way

    def judge(self, name: str, dtypes: tuple[str, str], shapes: tuple[tuple, tuple], same_bytes: Callable[[], bool]):
        """Count one tensor present on both sides; record why it differs (dtype, shape, then bytes)."""
        self.compared += 1
        if dtypes[0] != dtypes[1]:
            self.reasons[name] = f"dtype {dtypes[0]} vs {dtypes[1]}"
        elif tuple(shapes[0]) != tuple(shapes[1]):
            self.reasons[name] = f"shape {shape_text(shapes[0])} vs {shape_text(shapes[1])}"
        elif not same_bytes():
            self.reasons[name] = "bytes differ"
        else:
            return
        self.differing.append(name)

    def finish(self) -> TensorComparison:
        self.identical = not (self.differing or self.only_a or self.only_b or self.converted or self.unchecked)
        return self

    @property
    def matches(self) -> bool:
        """Identical, or every tensor stored converted equals the other side's converted the same way."""
        return not (self.differing or self.only_a or self.only_b or self.unchecked)


def _same_tensor(sa: TensorSource, sb: TensorSource, name: str) -> bool:
    return same_bytes(sa.get(name), sb.get(name))


def compare_sources(
    a: TensorSource | Path, b: TensorSource | Path, *, progress: Callable[[int], None] | None = None, ckpt_key=None
) -> TensorComparison:
    """Compare two models tensor by tensor: names, dtypes, shapes and raw bytes (bit-exact, so NaNs
    with equal bits are equal and -0.0 differs from 0.0); a GGUF against another format: a tensor stored in
    another type by its converted values (``llmkit.verify.converted``). Streaming: one tensor pair in memory.
    ``progress(nbytes)`` is called with the bytes of each tensor of ``a`` compared. A ``.ckpt``'s CRC
    trailer is checked; ``ckpt_key`` opens an encrypted one."""
    sa, close_a = as_source(a, ckpt_key)
    try:
        sb, close_b = as_source(b, ckpt_key)
        try:
            if (sa.layout == "ckpt") != (sb.layout == "ckpt"):  # a .ckpt against the model it came from
                from llmkit.io.mindspore.mindformers import hf_named

                sa, sb = (hf_named(sa), sb) if sa.layout == "ckpt" else (sa, hf_named(sb))
            names_a, names_b = list(sa.keys()), list(sb.keys())
            keys_a, keys_b = set(names_a), set(names_b)
            result = TensorComparison(
                identical=True,
                only_a=[k for k in names_a if k not in keys_b],
                only_b=[k for k in names_b if k not in keys_a],
            )
            conv = converting_side(sa, sb)
            # read in a stream's order when one side is a stream on stdin; the lists follow a's order below
            for name in sb.read_order(sa.read_order([n for n in names_a if n in keys_b])):
                ia, ib = sa.info(name), sb.info(name)
                codes = (stored_code(sa, name), stored_code(sb, name))
                if conv is not None and codes[0] != codes[1] and tuple(ia.shape) == tuple(ib.shape):
                    judge_converted(result, name, (sa, sb), conv, codes)
                else:
                    result.judge(name, codes, (ia.shape, ib.shape), partial(_same_tensor, sa, sb, name))
                sa.release(name)  # mapped .bin pages of compared tensors leave RSS
                sb.release(name)
                if progress is not None:
                    progress(ia.nbytes)
            rank = {n: i for i, n in enumerate(names_a)}
            result.differing.sort(key=rank.__getitem__)
            result.reasons = {n: result.reasons[n] for n in result.differing}
            result.converted = {n: result.converted[n] for n in names_a if n in result.converted}
            result.unchecked = {n: result.unchecked[n] for n in names_a if n in result.unchecked}
            sa.read_to_end()
            sb.read_to_end()
            result.warnings = finish_reads(sa.files) + finish_reads(sb.files)
            return result.finish()
        finally:
            if close_b:
                sb.close()
    finally:
        if close_a:
            sa.close()


def _compare_tables(ta: list[TensorDigest], tb: list[TensorDigest]) -> TensorComparison:
    db = {t.name: t for t in tb}
    da = {t.name: t for t in ta}
    res = TensorComparison(
        identical=True, only_a=[t.name for t in ta if t.name not in db], only_b=[t.name for t in tb if t.name not in da]
    )
    for t in ta:
        o = db.get(t.name)
        if o is not None:
            res.judge(t.name, (t.dtype, o.dtype), (t.shape, o.shape), partial(eq, t.digest, o.digest))
    return res.finish()


@dataclass
class TensorVerifyReport(Result):
    """``llmkit verify --tensors A B``: tensor by tensor, plus the non-weight files of two folders.
    ``identical``: the tensors, bit for bit; ``converted``: tensors a GGUF side stores in another type that
    equal the other side's converted the same way (name -> type); ``unchecked``: ones that cannot be
    converted the same way (name -> why); ``files_identical``: the other files (True when there are none);
    ``ok``: the tensors identical or converted, and the files (exit 0); ``checks``: one for the tensors
    (``ok``, ``converted``, ``unverified``, ``mismatch``), one per file."""

    a: str
    b: str
    method: str  # "bytes" (two models) or the digest algorithm (a model against a table)
    identical: bool
    compared: int
    differing: list[str] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    converted: dict[str, str] = field(default_factory=dict)
    unchecked: dict[str, str] = field(default_factory=dict)
    files: list[FileCheck] = field(default_factory=list)  # config/tokenizer files compared (folders only)
    files_identical: bool = True

    @property
    def differing_files(self) -> list[str]:
        return [f.path for f in self.files if f.status != "ok"]


# The fields of a TensorComparison that a TensorVerifyReport carries, under the same names.
_REPORTED = ("identical", "compared", "differing", "only_a", "only_b", "reasons", "converted", "unchecked")


def _aux_files(folder: Path) -> dict[str, Path]:
    """Non-weight files of a model folder (config, tokenizer, ...), without shard indexes."""
    return {
        rel: p
        for rel, p in list_files(folder).items()
        if not rel.endswith(WEIGHT_SUFFIXES) and not rel.endswith(".index.json")
    }


def compare_aux_files(a: Path, b: Path, *, shown: tuple[str, str] | None = None) -> list[FileCheck]:
    """Compare the non-weight files of two model folders: JSON semantically (formatting or metadata
    only is reported as ok with a note), everything else by sha256. ``shown``: how notes name A and B."""
    fa, fb = _aux_files(a), _aux_files(b)
    name_a, name_b = shown or (str(a), str(b))
    out: list[FileCheck] = []
    for rel in sorted(set(fa) | set(fb)):
        pa, pb = fa.get(rel), fb.get(rel)
        if pa is None or pb is None:
            out.append(
                FileCheck(
                    rel,
                    None,
                    None,
                    "sha256",
                    "missing" if pa is None else "extra",
                    note=f"only in {name_b if pa is None else name_a}",
                )
            )
            continue
        ha, hb = hash_file(pa, "sha256"), hash_file(pb, "sha256")
        if ha == hb:
            out.append(FileCheck(rel, hb, ha, "sha256", "ok"))
            continue
        status, note = (
            json_difference(pa.read_bytes(), pb.read_bytes()) if rel.endswith(".json") else ("mismatch", "bytes differ")
        )
        out.append(FileCheck(rel, hb, ha, "sha256", status, note=note))
    return out


def _compare(
    a: Path | TensorSource, b: Path | TensorSource, jobs: int, progress: Callable[[int], None]
) -> tuple[TensorComparison, str]:
    """(comparison, method): two tables (paths) by digests, a model (a source) and a table by the table's
    algorithm, two models by bytes."""
    if isinstance(a, Path) and isinstance(b, Path):
        ta, tb = load_tensor_table(a), load_tensor_table(b)
        if ta.algorithm != tb.algorithm:
            raise InputError(
                f"the tables use different algorithms ({ta.algorithm}, {tb.algorithm})",
                path=b,
                hint="write both with the same llmkit checksum --tensors --algo",
            )
        return _compare_tables(ta.tensors, tb.tensors), ta.algorithm
    if isinstance(a, Path):
        return _table_and_model(a, b, True, jobs, progress)
    if isinstance(b, Path):
        return _table_and_model(b, a, False, jobs, progress)
    return compare_sources(a, b, progress=progress), "bytes"


def _table_and_model(
    table_file: Path, model_side: TensorSource | Path, table_is_a: bool, jobs: int, progress: Callable[[int], None]
) -> tuple[TensorComparison, str]:
    """A ``--tensors`` table against a model, by the table's digest algorithm."""
    table = load_tensor_table(table_file)
    model = tensor_table(model_side, table.algorithm, jobs=jobs, progress=progress)
    ta, tb = (table.tensors, model.tensors) if table_is_a else (model.tensors, table.tensors)
    cmp = _compare_tables(ta, tb)
    cmp.warnings = model.texts("warning")
    return cmp, table.algorithm


def _status(cmp: TensorComparison) -> str:
    if cmp.identical:
        return "ok"
    if cmp.differing or cmp.only_a or cmp.only_b:
        return "mismatch"
    return "unverified" if cmp.unchecked else "converted"


def _checked_model(path: Path, key, stack: ExitStack) -> TensorSource:
    """The model at ``path``, opened once; an incomplete LLaMA is refused, not compared (two equally
    incomplete copies would match): ``llmkit.io.core.llama_tensors``."""
    from llmkit.io.core.llama_tensors import check_source

    src = stack.enter_context(open_source(path, ckpt_key=key))
    check_source(src)
    return src


def verify_tensors(options: TensorVerifyOptions, *, progress: ProgressFactory | None = None) -> TensorVerifyReport:
    """Compare two models tensor by tensor (either may be a ``--tensors`` table file), under one
    ``comparing tensors`` progress bar (bytes of tensor data)."""
    a, b = Path(options.a), Path(options.b)
    if str(a) == str(b) == STDIN:
        raise InputError("A and B are both - (stdin): only one side can be the stream", hint="pass B as a path")
    for p in (a, b):
        if str(p) != STDIN and not p.exists():
            raise InputError("no such file or folder", path=p, hint="check the path")
    key = None
    if options.dec_key is not None:
        from llmkit.io.mindspore.keys import read_key

        key = read_key(options.dec_key, options.dec_mode, flag="--dec-key")
    with ExitStack() as stack:
        sides = [p if is_tensor_table(p) else _checked_model(p, key, stack) for p in (a, b)]
        total = next((s.total_bytes for s in sides if isinstance(s, TensorSource) and s.total_bytes), 0)
        with (progress or no_progress)("comparing tensors", total) as advance:
            cmp, method = _compare(sides[0], sides[1], resolve_jobs(options.jobs), advance)
        # a stream's side files are in its folder (removed when it is closed): compared as a folder's are
        fa, fb = (
            s.folder if isinstance(s, TensorSource) and str(p) == STDIN else p
            for s, p in zip(sides, (a, b), strict=True)
        )
        # a GGUF has no side files (its config and vocabulary are in the header): there are none to compare
        headers_only = any(isinstance(s, TensorSource) and s.stores_converted for s in sides)
        files = (
            compare_aux_files(fa, fb, shown=(str(a), str(b)))
            if fa is not None and fb is not None and fa.is_dir() and fb.is_dir() and not headers_only
            else []
        )
    summary = (
        f"{cmp.compared} compared by {method}, {len(cmp.differing)} differ, {len(cmp.only_a)} only in A, "
        f"{len(cmp.only_b)} only in B"
    )
    if cmp.converted or cmp.unchecked:
        summary += f", {len(cmp.converted)} equal as converted, {len(cmp.unchecked)} not verifiable"
    checks = [Check("tensors", _status(cmp), summary)] + [f.check() for f in files]
    files_identical = all(f.status == "ok" for f in files)
    return TensorVerifyReport(
        ok=cmp.matches and files_identical,
        checks=checks,
        a=str(a),
        b=str(b),
        method=method,
        **{name: getattr(cmp, name) for name in _REPORTED},
        files=files,
        files_identical=files_identical,
        notices=[Notice.warning(w) for w in cmp.warnings],
    )
