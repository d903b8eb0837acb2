"""Where outputs may go: checks every writing command makes before it writes (torch-free).

llmkit never writes into, beside or around its inputs, so an input is never modified and a later
run never reads its own output as input. An ``-o`` that cannot become a folder (a dangling symlink, a
symlink loop, a file, a path under a file, ``-``) is refused with what it is, before anything is
created. How an output is then written all or nothing: :mod:`llmkit.io.core.staging`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from llmkit.errors import InputError, OutputExistsError, writing

TMP_SUFFIX = ".llmkit-tmp"  # temporary names: ".NAME.llmkit-tmp" in the output folder


def broken_link(path: str | os.PathLike) -> str | None:
    """What is wrong with ``path`` if it is a symlink that leads nowhere ("is a dangling symlink to X",
    "is a symlink loop"); None for anything else (including a path that does not exist at all)."""
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "is a symlink loop"
        try:
            target = os.readlink(Path(path))
        except OSError:
            target = "?"
        return f"is a dangling symlink to {target}"
    return None


def check_output_path(out_dir: str | os.PathLike) -> None:
    """Refuse an output folder path that cannot be made a folder, naming what is in the way.

    The path itself or its nearest existing ancestor may be a dangling symlink or a symlink loop
    (``mkdir`` would fail with "File exists" or loop), or a file (no folder can go inside it).
    """
    if str(out_dir) == "-":
        raise InputError(
            "-o - (standard output) is not possible here: this command writes a folder or a file",
            path="-",
            hint="name an output path, e.g. -o ./out",
        )
    out = Path(out_dir)
    for p in (out, *out.parents):
        if not os.path.lexists(p):
            continue
        problem = broken_link(p)
        if problem is not None:
            what = "the output path" if p == out else f"{p} (on the output path)"
            hint = (
                "remove the link, or create the folder it points to first"
                if "dangling" in problem
                else "remove the link or choose another -o"
            )
            raise InputError(f"{what} {problem}", path=out_dir, hint=hint)
        if not p.is_dir():
            if p == out:
                raise OutputExistsError(
                    "output path exists and is not a folder", path=out_dir, hint="choose another -o"
                )
            raise InputError(
                f"{p} is a file, so no output folder can be made inside it", path=out_dir, hint="choose another -o"
            )
        return


def _resolved(inputs: Iterable[str | os.PathLike | None]) -> Iterator[tuple[str | os.PathLike, Path]]:
    """Each input given (``None`` and ``-``, a stream on stdin, skipped) with its real path (symlinks resolved,
    loops kept as they are)."""
    for p in inputs:
        if p is not None and str(p) != "-":
            yield p, Path(os.path.realpath(p))


def ensure_output_is_new(out_dir: Path, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output folder that is, is inside, or contains an input folder, or is an input file's folder.

    Symlinks are resolved (without failing on loops): llmkit never writes into, beside or around its
    inputs, so a later run never reads its own output as input. ``None`` entries are skipped. The
    output path itself must be able to become a folder (:func:`check_output_path`).
    """
    check_output_path(out_dir)
    out = Path(os.path.realpath(out_dir))
    for p, src in _resolved(inputs):
        if src.is_dir():
            if out == src or src in out.parents:
                where = f"is an input folder ({p})" if out == src else f"is inside the input folder {p}"
                raise InputError(
                    f"the output folder {where}",
                    path=out_dir,
                    hint="choose an -o outside the inputs; llmkit never writes into its inputs",
                )
            if out in src.parents:
                raise InputError(
                    f"the output folder contains the input folder {p}",
                    path=out_dir,
                    hint="choose an -o that is not a parent of an input",
                )
        elif out == src.parent or out == src:
            raise InputError(
                f"the output folder is the folder of the input {p}",
                path=out_dir,
                hint="choose another -o; llmkit never writes beside or over its inputs",
            )


def ensure_output_file_is_new(out_file: Path, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output *file* (``-o model.ckpt``) that is a folder, a broken link, an input, inside an
    input folder or beside an input file; its folder must be able to exist (:func:`check_output_path`).
    Symlinks are resolved. Existing files are the caller's business (``--force``)."""
    if str(out_file) == "-":
        check_output_path(out_file)  # refuses "-": this output is a file, not a stream
    out_file = Path(out_file)
    problem = broken_link(out_file)
    if problem is not None:
        raise InputError(f"the output path {problem}", path=out_file, hint="remove the link or choose another -o")
    if out_file.is_dir():
        raise OutputExistsError(
            "the output path is a folder; this command writes one file",
            path=out_file,
            hint=f"name the file, e.g. -o {out_file / 'model.ckpt'}",
        )
    parent = out_file.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(
            f"{parent} is a file, so no output file can be made inside it", path=out_file, hint="choose another -o"
        )
    check_output_path(parent)
    out = Path(os.path.realpath(out_file))
    for p, src in _resolved(inputs):
        if out == src:
            raise InputError(
                f"the output file is the input {p}",
                path=out_file,
                hint="choose another -o; llmkit never writes over its inputs",
            )
        if src.is_dir() and src in out.parents:
            raise InputError(
                f"the output file is inside the input folder {p}",
                path=out_file,
                hint="choose an -o outside the inputs; llmkit never writes into its inputs",
            )


def make_folder(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; return the folders created, innermost first."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty(folders: Sequence[Path]) -> None:
    """Remove ``folders`` (innermost first, as :func:`make_folder` returns them) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break  # not empty: leave it and its parents
