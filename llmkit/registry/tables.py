"""Published checksum tables: parsing ``md5sum``-format text, and the built-in tables shipped with llmkit.

Checksum tables are the files in the package's ``llmkit/checksums/`` folder (``md5sum`` format, one per
table published in a model card, SPEC.md section 6), shipped as package data so that every install form
(a clone, ``pip install -e``, a wheel, ``pip install --target``) has them beside the code. A table's name is
its file name without the algorithm suffix: ``techgpt-7b.enc.md5`` is table ``techgpt-7b.enc`` (md5).
``$LLMKIT_CHECKSUMS`` (a folder, for tests and local tables) replaces the folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from llmkit.errors import InputError

HEX_DIGITS: dict[str, int] = {"md5": 32, "sha256": 64}  # algorithm -> hex digits of its digest
TABLE_SUFFIXES: dict[str, str] = {".md5": "md5", ".sha256": "sha256"}
_PACKAGE_TABLES = Path(__file__).resolve().parent.parent / "checksums"  # llmkit/checksums


@dataclass(frozen=True)
class TableEntry:
    """One line of a table: the expected digest of the file at ``path`` (as written in the table)."""

    path: str
    digest: str

    @property
    def rel(self) -> str:
        """The path without a leading ``./`` (TechGPT's card writes ``./config.json``)."""
        p = self.path
        while p.startswith("./"):
            p = p[2:]
        return p

    @property
    def basename(self) -> str:
        return self.rel.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ChecksumTable:
    """A parsed ``md5sum``-format table."""

    name: str
    algorithm: str
    entries: tuple[TableEntry, ...]
    path: Path | None = None
    source: str = ""  # the header comment: where the values come from
    builtin: bool = False
    header: tuple[str, ...] = ()  # the header comment's lines

    def describes(self) -> tuple[str, dict[str, int]] | None:
        """What the table's files are, from a ``# describes: KIND key=N ...`` header line (the shipped
        sha256 tables: ``meta-pth dim= vocab= layers= shards=`` for a Meta folder, ``tokenizer vocab=``)."""
        for line in self.header:
            if line.startswith("describes:"):
                kind, *pairs = line[len("describes:") :].split()
                facts = dict(p.split("=", 1) for p in pairs if "=" in p)
                return kind, {k: int(v) for k, v in facts.items() if v.isdigit()}
        return None


_BSD_LINE = re.compile(r"^(MD5|SHA256) ?\((?P<path>.+)\) ?= ?(?P<hex>[0-9a-fA-F]+)$")


def _unescape(path: str) -> str:
    # GNU md5sum escapes "\\" and "\n" in names and marks such lines with a leading backslash.
    out, i = [], 0
    while i < len(path):
        c = path[i]
        if c == "\\" and i + 1 < len(path):
            nxt = path[i + 1]
            out.append({"\\": "\\", "n": "\n", "r": "\r"}.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _parse_line(line: str, lineno: int, where: str | Path) -> TableEntry:
    """One ``<hex>  <file>``, ``<hex> *<file>`` or BSD-tag line (``\\`` first: an escaped name)."""
    escaped = line.startswith("\\")
    body = line[1:] if escaped else line
    m = _BSD_LINE.match(body)
    if m:
        digest, fname = m.group("hex"), m.group("path")
    else:
        parts = body.split(" ", 1)
        if len(parts) != 2 or not parts[1] or parts[1][0] not in " *":
            raise InputError(
                f"line {lineno} is not '<hex>  <file>': {line[:80]!r}",
                path=where,
                hint="checksum tables use md5sum format: the hex digest, two spaces, the path",
            )
        digest, fname = parts[0], parts[1][1:]
    if escaped:
        fname = _unescape(fname)
    digest = digest.lower()
    if not re.fullmatch(r"[0-9a-f]+", digest) or len(digest) not in HEX_DIGITS.values():
        raise InputError(
            f"line {lineno}: {digest[:70]!r} is not an md5 or sha256 hex digest",
            path=where,
            hint="expected 32 (md5) or 64 (sha256) hex digits",
        )
    return TableEntry(fname, digest)


def parse_table(
    text: str, *, name: str, algorithm: str | None = None, path: Path | None = None, builtin: bool = False
) -> ChecksumTable:
    """Parse ``md5sum``/``sha256sum`` output: ``<hex>  <path>`` or ``<hex> *<path>`` lines.

    Also accepts BSD tags (``MD5 (path) = hex``). ``#`` lines and blank lines are comments; the leading
    comment block becomes :attr:`ChecksumTable.source`. The algorithm comes from ``algorithm``, else
    from the digest length (32 hex = md5, 64 = sha256). Raises :class:`InputError` naming the bad line.
    """
    entries: list[TableEntry] = []
    header: list[str] = []
    in_header = True
    where = path if path is not None else name
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            if in_header:
                header.append(line.lstrip()[1:].strip())
            continue
        in_header = False
        entries.append(_parse_line(line, lineno, where))
    if not entries:
        raise InputError("no checksum lines found", path=where, hint="expected '<hex>  <file>' lines")
    lengths = {len(e.digest) for e in entries}
    if len(lengths) > 1:
        raise InputError(
            "the table mixes digest lengths (md5 and sha256)", path=where, hint="keep one algorithm per table"
        )
    length = lengths.pop()
    found = next(a for a, n in HEX_DIGITS.items() if n == length)
    if algorithm is not None and algorithm != found:
        raise InputError(f"the table holds {found} digests, not {algorithm}", path=where, hint=f"use --algo {found}")
    return ChecksumTable(
        name=name,
        algorithm=found,
        entries=tuple(entries),
        path=path,
        source=" ".join(h for h in header if not h.startswith("describes:")),
        builtin=builtin,
        header=tuple(header),
    )


def table_name(path: Path) -> str:
    """``techgpt-7b.enc.md5`` -> ``techgpt-7b.enc``."""
    return path.name[: -len(path.suffix)] if path.suffix in TABLE_SUFFIXES else path.name


def load_table(path: Path, *, builtin: bool = False) -> ChecksumTable:
    """Read a table file (any name; the algorithm follows from its digests)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("not a text checksum table", path=path) from None
    return parse_table(text, name=table_name(path), path=path, builtin=builtin)


def checksums_dir() -> Path:
    """The folder holding the built-in tables: ``$LLMKIT_CHECKSUMS``, else ``llmkit/checksums``."""
    env = os.environ.get("LLMKIT_CHECKSUMS")
    if env:
        return Path(env)
    folder = _PACKAGE_TABLES
    if folder.is_dir() and any(p.suffix in TABLE_SUFFIXES for p in folder.iterdir()):
        return folder
    raise InputError(
        "the built-in checksum tables are not installed",
        path=folder,
        hint="reinstall llmkit, or set LLMKIT_CHECKSUMS to a folder of *.md5 / *.sha256 tables",
    )


@lru_cache(maxsize=4)
def _tables_in(folder: str) -> dict[str, ChecksumTable]:
    out: dict[str, ChecksumTable] = {}
    for p in sorted(Path(folder).iterdir()):
        if p.suffix in TABLE_SUFFIXES and p.is_file():
            t = load_table(p, builtin=True)
            out[t.name] = t
    return out


def builtin_tables() -> dict[str, ChecksumTable]:
    """Every built-in table by name (parsed once per process)."""
    return _tables_in(str(checksums_dir()))


def get_table(name_or_file: str | Path) -> ChecksumTable:
    """A built-in table by name (``zhixi-13b``), or a table file by path."""
    tables = builtin_tables()
    key = str(name_or_file)
    if key in tables:
        return tables[key]
    p = Path(name_or_file)
    if p.is_file():
        return load_table(p)
    if key.endswith(tuple(TABLE_SUFFIXES)) and table_name(p) in tables and not os.path.lexists(p):
        return tables[table_name(p)]
    if p.is_dir():
        raise InputError(
            "is a folder, not a checksum table file",
            path=p,
            hint="pass the md5sum-format table file (or a built-in table name) as --table",
        )
    if os.path.islink(p):
        from llmkit.io.core.destination import broken_link

        raise InputError(
            f"the table path {broken_link(p) or 'is a broken symlink'}",
            path=p,
            hint="fix the link or pass the table file itself",
        )
    raise InputError(
        f"no built-in table named {key!r} and no such file",
        path=None,
        hint=f"built-in tables: {', '.join(tables)} (llmkit models lists them)",
    )


def find_expected(name: str, algorithm: str = "md5") -> list[tuple[str, str]]:
    """(table name, expected hex digest) for every built-in table listing a file named ``name``.

    ``name`` is compared with the last component of each table path, so ``pytorch_model.bin`` finds
    TechGPT's ``./pytorch_model.bin``. A path may be passed; only its basename is used.
    """
    base = Path(name).name
    return [
        (t.name, e.digest)
        for t in builtin_tables().values()
        if t.algorithm == algorithm
        for e in t.entries
        if e.basename == base
    ]


def described_tables(kind: str) -> list[tuple[ChecksumTable, dict[str, int]]]:
    """The built-in tables whose header says they describe ``kind`` (``meta-pth``: a Meta folder of the
    given ``dim``/``vocab``/``layers``/``shards``; ``tokenizer``: a ``tokenizer.model`` of ``vocab``
    tokens), with those facts. Chinese-LLaMA-Alpaca's SHA256.md gives them (llmkit/checksums/*.sha256)."""
    out = []
    for t in builtin_tables().values():
        d = t.describes()
        if d is not None and d[0] == kind:
            out.append((t, d[1]))
    return out
