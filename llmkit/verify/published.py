"""Named files checked against the built-in published tables by file name (one place for every job).

``recover`` / ``make-diff`` hash their outputs and ``decrypt`` its inputs and outputs against what the
model cards publish; :func:`published_matches` is that check, :func:`verify_file` its one-file form.
A table lists a file by path (``./pytorch_model.bin``); here only the basename is compared
(``llmkit.registry.find_expected``).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from llmkit import registry  # looked up at call time: tests patch registry.find_expected
from llmkit.hashing import hash_file
from llmkit.pipeline import Check, ProgressFactory
from llmkit.verify.files import hash_files


@dataclass
class PublishedMatch:
    """A file whose name a built-in table lists: its digest, the tables listing that name (sorted) and
    the one whose digest it has (None: it matches none of them)."""

    file: str  # the name as given
    digest: str
    tables: list[str]
    matched_table: str | None
    algorithm: str = "md5"

    @property
    def ok(self) -> bool:
        return self.matched_table is not None

    def check(self) -> Check:
        if self.ok:
            return Check(self.file, "ok", f"{self.algorithm} matches the published table {self.matched_table}")
        return Check(
            self.file,
            "mismatch",
            f"{self.algorithm} {self.digest} matches none of the published "
            f"tables listing this name ({', '.join(self.tables)})",
        )


def _expected(name: str, algorithm: str, tables: set[str] | None) -> list[tuple[str, str]]:
    """(table, lower-case digest) of the built-in tables (only ``tables`` when given) listing ``name``."""
    return [
        (str(t), str(h).lower()) for t, h in registry.find_expected(name, algorithm) if tables is None or t in tables
    ]


def published_matches(
    folder: Path,
    files: list[str],
    tables: set[str] | None = None,
    progress: ProgressFactory | None = None,
    *,
    algorithm: str = "md5",
    jobs: int = 1,
) -> list[PublishedMatch]:
    """Hash the files of ``folder`` named in ``files`` that a built-in table lists (by basename; only the
    tables named in ``tables`` when given, all when None) and compare each with the published digests.

    Files no table lists are not read. One ``hashing`` progress bar (bytes) when there is anything to
    hash. Returns one :class:`PublishedMatch` per listed file, in the order of ``files``.
    """
    todo = [(name, entries) for name in files if (entries := _expected(name, algorithm, tables))]
    if not todo:
        return []
    paths = [Path(folder) / name for name, _ in todo]
    with progress("hashing", sum(p.stat().st_size for p in paths)) if progress else nullcontext(None) as advance:
        digests = hash_files(paths, algorithm, jobs=jobs, progress=advance)
    return [
        PublishedMatch(
            name,
            digests[p],
            sorted({t for t, _ in entries}),
            next((t for t, h in entries if h == digests[p]), None),
            algorithm,
        )
        for (name, entries), p in zip(todo, paths, strict=True)
    ]


def verify_file(path: Path, algorithm: str = "md5") -> list[tuple[str, str, bool]]:
    """Check one file against every built-in table listing its basename:
    ``[(table, expected, matches)]`` (empty when no table knows the name). One hash."""
    expected = registry.find_expected(path.name, algorithm)
    if not expected:
        return []
    actual = hash_file(path, algorithm)
    return [(t, d, d == actual) for t, d in expected]
