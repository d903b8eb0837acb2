"""``llmkit verify`` and ``llmkit checksum``: published checksum tables and per-tensor hashes."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from llmkit.cli.helptext import CHECKS, INPUTS, OUTPUT, examples
from llmkit.cli.keys import DecKeyOpt, DecModeOpt, EncMode, mode_value
from llmkit.cli.options import choice_option, jobs_option, reads_remote, with_output
from llmkit.cli.output import Failure, Output
from llmkit.errors import EXIT_CHECK_FAILED, InputError

if TYPE_CHECKING:  # llmkit.verify is imported when a command runs, not at CLI start-up
    from llmkit.verify import ChecksumResult, TensorChecksums, TensorVerifyReport, VerifyReport

VERIFY_EXAMPLES = examples(
    "# a download against its published table, picked by file names and sizes",
    "llmkit verify techgpt-7b",
    "# against a given table: a built-in one (llmkit models) or an md5sum file",
    "llmkit verify zhixi-13b --table zhixi-13b",
    "# two models tensor by tensor, whatever their shards or format",
    "llmkit verify --tensors zhixi-13b zhixi-13b-resharded",
)
CHECKSUM_EXAMPLES = examples(
    "# an md5sum table of a folder, checked by md5sum itself",
    "llmkit checksum my-model > my.md5 && md5sum -c my.md5",
    "# one hash per tensor, whatever the shards or format (compare with llmkit verify --tensors)",
    "llmkit checksum --tensors zhixi-13b > zhixi-13b.tensors",
    "llmkit checksum --algo sha256 techgpt-2.0-atom.ckpt",
)


class Algo(str, Enum):
    md5 = "md5"
    sha256 = "sha256"


JobsOpt = Annotated[
    int,
    jobs_option(
        "Files (or tensors) hashed in parallel on threads. Default 0 = auto: one per "
        "CPU core, up to 4, because hashing is CPU-bound. Use 1 on a spinning disk.",
        min=0,
    ),
]

# A file's status -> (text, style): against a table, and (--tensors) between the other files of A and B.
_TABLE_STATUS = {
    "ok": ("OK", "green"),
    "mismatch": ("FAILED", "red"),
    "missing": ("MISSING", "red"),
    "extra": ("not in the table", "dim"),
}
_PAIR_STATUS = {
    "ok": ("OK", "green"),
    "mismatch": ("DIFFERS", "red"),
    "missing": ("only in B", "red"),
    "extra": ("only in A", "red"),
}


def _status(console: Console, path: str, status: tuple[str, str], *, end: str = "\n") -> None:
    """``<path>: <STATUS>``, the status in its colour."""
    console.print(f"{path}: ", end="", markup=False)
    console.print(status[0], style=status[1], markup=False, end=end)


def _render_report(report: VerifyReport) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        for f in report.files:
            _status(console, f.path, _TABLE_STATUS[f.status])
            if f.status == "mismatch":
                console.print(f"    expected {f.expected}  ({f.table})", markup=False)
                console.print(f"    actual   {f.actual}", markup=False)
            if f.note:
                console.print(f"    {f.note}", markup=False, style="yellow")
        for note in report.notes:
            console.print(f"note: {note}", markup=False, style="yellow")
        c = report.counts()
        tables = ", ".join(report.tables) or "-"
        verdict = "all expected files match" if report.ok else "verification FAILED"
        console.print(
            f"{verdict}: {c['ok']} ok, {c['mismatch']} mismatch, {c['missing']} missing, "
            f"{c['extra']} extra; table {tables} ({report.algorithm})",
            markup=False,
            style="green" if report.ok else "red",
        )

    return render


def _print_differences(console: Console, report: TensorVerifyReport, how: str) -> None:
    console.print(
        f"tensors DIFFER ({len(report.differing)} of {report.compared} compared {how}; "
        f"{len(report.only_a)} only in A, {len(report.only_b)} only in B)",
        markup=False,
        style="red",
    )
    for name in report.differing[:10]:
        console.print(f"  differs: {name} ({report.reasons.get(name, '')})", markup=False)
    if len(report.differing) > 10:
        console.print(f"  ... and {len(report.differing) - 10} more (--json lists all)", markup=False)
    for name in report.only_a[:5]:
        console.print(f"  only in A: {name}", markup=False)
    for name in report.only_b[:5]:
        console.print(f"  only in B: {name}", markup=False)


def _type_counts(by_name: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for t in by_name.values():
        t = t.split(":")[0]
        counts[t] = counts.get(t, 0) + 1
    return ", ".join(f"{n} {t}" for t, n in counts.items())


def _converted_text(report: TensorVerifyReport) -> str:
    """What the tensors a GGUF side stores in another type were found to be."""
    same = report.compared - len(report.converted) - len(report.unchecked) - len(report.differing)
    text = f"{same} identical bit for bit"
    if report.converted:
        quantized = any(t not in ("F32", "F16", "BF16") for t in report.converted.values())
        text += (
            f", {len(report.converted)} stored converted ({_type_counts(report.converted)}) equal the other "
            "model's converted to those types by gguf.quants, exactly"
            + (" (the quantized ones compared as their dequantized values)" if quantized else "")
        )
    return text


def _print_unchecked(console: Console, report: TensorVerifyReport) -> None:
    for name, why in list(report.unchecked.items())[:10]:
        console.print(f"  not verified: {name} ({why})", markup=False)
    if len(report.unchecked) > 10:
        console.print(f"  ... and {len(report.unchecked) - 10} more (--json lists all)", markup=False)


def _render_converted(console: Console, report: TensorVerifyReport) -> None:
    """The verdict of tensors that are not bit-identical but stored converted: matching, or not verifiable."""
    if report.unchecked:
        console.print(
            f"tensors NOT VERIFIED: {len(report.unchecked)} of {report.compared} are quantized in types gguf.quants "
            f"cannot make ({_type_counts(report.unchecked)}); {_converted_text(report)}",
            markup=False,
            style="red",
        )
        _print_unchecked(console, report)
        return
    style = "green" if report.files_identical else "red"
    files = "" if report.files_identical else f"; other files DIFFER: {_files_text(report)}"
    console.print(
        f"tensors match as converted, not identical: {report.compared} compared; {_converted_text(report)}{files}",
        markup=False,
        style=style,
    )


def _render_tensors(report: TensorVerifyReport) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        how = "bit for bit" if report.method == "bytes" else f"by {report.method} digests"
        if report.identical and report.files_identical:
            console.print(f"tensors identical: {report.compared} tensors compared {how}", markup=False, style="green")
        elif not report.identical and not (report.differing or report.only_a or report.only_b):
            _render_converted(console, report)
        elif report.identical:  # the verdict covers the other files too: exit 1
            console.print(
                f"tensors identical, other files DIFFER: {report.compared} tensors compared {how}; "
                f"{_files_text(report)}",
                markup=False,
                style="red",
            )
        else:
            _print_differences(console, report, how)
        for f in report.files:
            _status(console, f.path, _PAIR_STATUS[f.status], end="")
            console.print(f" ({f.note})" if f.note else "", markup=False)
        console.print(f"A = {report.a}\nB = {report.b}", markup=False, style="dim")

    return render


def _files_failure(report: VerifyReport) -> Failure:
    c = report.counts()
    return Failure(
        f"verification failed: {c['mismatch']} mismatch, {c['missing']} missing, {c['ok']} ok",
        exit_code=EXIT_CHECK_FAILED,
    )


def _files_text(report: TensorVerifyReport) -> str:
    names = report.differing_files
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"{len(names)} of {len(report.files)} other files differ ({shown})"


def _tensors_failure(report: TensorVerifyReport) -> Failure:
    if report.identical:
        return Failure(f"tensors identical, but {_files_text(report)}", exit_code=EXIT_CHECK_FAILED)
    if not (report.differing or report.only_a or report.only_b):
        if report.unchecked:
            return Failure(
                f"{len(report.unchecked)} quantized tensors not verified ({_type_counts(report.unchecked)}: "
                "gguf.quants cannot make these types)",
                exit_code=EXIT_CHECK_FAILED,
            )
        return Failure(f"tensors match as converted, but {_files_text(report)}", exit_code=EXIT_CHECK_FAILED)
    parts = [
        f"{len(report.differing)} of {report.compared} compared differ",
        f"{len(report.only_a)} only in A",
        f"{len(report.only_b)} only in B",
    ]
    if report.differing_files:
        parts.append(_files_text(report))
    return Failure(f"tensors differ: {', '.join(parts)}", exit_code=EXIT_CHECK_FAILED)


def _render_tables(result: TensorChecksums) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        for t in result.tables:
            console.file.write(t.text())
        console.file.flush()

    return render


def _render_lines(result: ChecksumResult) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        # Plain lines (no rich wrapping/markup) so the output is a valid md5sum table.
        console.file.write("".join(line + "\n" for line in result.lines()))
        console.file.flush()

    return render


def _verify_tensors(
    out: Output, paths: list[Path], table: str | None, jobs: int, dec_key: str | None, dec_mode: EncMode | None
) -> bool:
    """``verify --tensors A B``: the report shown; True when A and B hold the same tensors and files."""
    from llmkit.verify import TensorVerifyOptions, verify_tensors

    if len(paths) != 2:
        raise InputError(
            f"--tensors compares exactly two models, got {len(paths)} path(s)",
            hint="llmkit verify --tensors MODEL_A MODEL_B (either may be a --tensors table)",
        )
    if table is not None:
        raise InputError("--tensors and --table do not combine", hint="pass a tensor table as A or B instead")
    options = TensorVerifyOptions(paths[0], paths[1], jobs=jobs, dec_key=dec_key, dec_mode=mode_value(dec_mode))
    report = verify_tensors(options, progress=out.progress)
    out.notices(report)
    out.result(report, _render_tensors(report), failed=None if report.ok else _tensors_failure(report))
    return report.ok


def _verify_files(
    out: Output, paths: list[Path], table: str | None, algo: Algo | None, jobs: int, dec_key: str | None
) -> bool:
    """``verify PATH...`` against a table: the report shown; True when every expected file matches."""
    from llmkit.verify import VerifyOptions, verify_files

    if dec_key is not None:
        raise InputError(
            "--dec-key goes with --tensors (file checksums hash the stored, encrypted bytes)",
            hint="add --tensors, or drop --dec-key",
        )
    options = VerifyOptions(tuple(paths), table=table, algorithm=algo.value if algo else None, jobs=jobs)
    report = verify_files(options, progress=out.progress)
    # The report renders its notes (stdout, as "note:" lines), so out.notices() is not called.
    out.result(report, _render_report(report), failed=None if report.ok else _files_failure(report))
    return report.ok


@with_output
@reads_remote
def verify_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="PATH",
            help="Downloaded folders or files (default with --table FILE: the current folder). "
            "With --tensors: two models or tensor tables, A and B (one may be - for a stream on stdin).",
        ),
    ] = None,
    table: Annotated[
        str | None,
        typer.Option(
            "--table",
            "-t",
            metavar="NAME|FILE",
            rich_help_panel=INPUTS,
            help="A built-in table (llmkit models lists them) or an md5sum-format file. Default: pick the built-in "
            "table(s) matching the file names and sizes.",
        ),
    ] = None,
    algo: Annotated[
        Algo | None,
        choice_option("--algo", Algo, "Digest algorithm (default: the table's; without --table, md5).", panel=CHECKS),
    ] = None,
    jobs: JobsOpt = 0,
    tensors: Annotated[
        bool,
        typer.Option(
            "--tensors",
            rich_help_panel=CHECKS,
            help="Compare two models tensor by tensor (names, dtypes, shapes, raw bytes), whatever their "
            "shards or format; either may be a table from 'llmkit checksum --tensors'.",
        ),
    ] = False,
    dec_key: DecKeyOpt = None,
    dec_mode: DecModeOpt = None,
    *,
    out: Output,
) -> None:
    """Check files against published checksum tables.

    Each file: ok / mismatch / missing / extra. Exit 0 only if all match.
    """
    paths = list(paths or [])
    if tensors:
        ok = _verify_tensors(out, paths, table, jobs, dec_key, dec_mode)
    else:
        ok = _verify_files(out, paths, table, algo, jobs, dec_key)
    if not ok:
        raise typer.Exit(EXIT_CHECK_FAILED)


@with_output
@reads_remote
def checksum_command(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="PATH",
            help="Files or folders (folders recursively, hidden files skipped); with --tensors: models, or - "
            "for a stream on stdin.",
        ),
    ],
    algo: Annotated[
        Algo | None,
        choice_option("--algo", Algo, "Digest algorithm (default: md5 for files, sha256 for --tensors)."),
    ] = None,
    tensors: Annotated[
        bool,
        typer.Option(
            "--tensors",
            rich_help_panel=OUTPUT,
            help="One line per tensor: '<digest of raw bytes>  <name> <dtype> [<shape>]', independent of "
            "shards and file format (compare with 'llmkit verify --tensors').",
        ),
    ] = False,
    jobs: JobsOpt = 0,
    dec_key: DecKeyOpt = None,
    dec_mode: DecModeOpt = None,
    *,
    out: Output,
) -> None:
    """Print checksums in md5sum format.

    So that 'llmkit checksum DIR > t.md5 && md5sum -c t.md5' works.
    """
    from llmkit.verify import ChecksumOptions, TensorChecksums, checksum

    options = ChecksumOptions(
        tuple(paths),
        algorithm=algo.value if algo else None,
        tensors=tensors,
        jobs=jobs,
        dec_key=dec_key,
        dec_mode=mode_value(dec_mode),
    )
    result = checksum(options, progress=out.progress)
    if isinstance(result, TensorChecksums):  # --tensors
        for table in result.tables:
            out.notices(table)
        # Stable JSON: the one model's table as an object, an array of tables for several models.
        out.result(result.tables if len(result.tables) > 1 else result.tables[0], _render_tables(result))
    else:
        out.result(result, _render_lines(result))
