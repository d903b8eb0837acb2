"""What decrypt and encrypt return: one :class:`FileResult` per file inside a :class:`CryptoResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmkit.pipeline import Check, Notice, Result

if TYPE_CHECKING:
    from llmkit.crypto.plan import CryptoPlan


@dataclass
class FileResult:
    """One file. ``checks``: ``ok`` passed, ``mismatch`` failed (a warning), ``info`` a note."""

    input: str
    output: str
    format: str
    bytes: int  # plaintext bytes
    sha256: str | None = None  # BELLE: the plaintext sha256 (verified against the header on decrypt)
    md5: str | None = None  # plaintext md5, when a published table lists the file
    input_md5: str | None = None  # md5 of the .enc: streamed (3+ CPUs, stdin) or read again after a mismatch
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    fetched: int | None = None  # a remote input: the bytes fetched from its store (the whole .enc); None: local


@dataclass
class CryptoResult(Result):
    """A whole run. ``outputs``: every file written (``-`` for stdout); ``checks``: every file's checks,
    named ``<input>: <check>``; ``notices``: the ignored files (info) and ``warnings`` (warning)."""

    command: str  # decrypt | encrypt
    key: str
    key_check: str  # verified | verified (cached) | skipped
    output: str  # folder, or "-" for stdout
    files: list[FileResult] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files in input folders that were not touched
    warnings: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    dry_run: bool = False  # the files were listed and checked, not read: ``files`` is the plan, ``outputs`` empty

    def __post_init__(self) -> None:
        """Fill the common fields (``outputs``, ``checks``, ``notices``) from the crypto ones."""
        if not self.outputs and not self.dry_run:
            self.outputs = [f.output for f in self.files]
        if not self.checks:
            self.checks = [Check(f"{f.input}: {c.name}", c.status, c.detail) for f in self.files for c in f.checks]
        if not self.notices:
            why = "an .enc file" if self.command == "decrypt" else "encrypted"
            self.notices = [Notice.info(f"ignored (not {why}): {name}") for name in self.ignored] + [
                Notice.warning(w) for w in self.warnings
            ]


def planned_files(plan: CryptoPlan) -> list[FileResult]:
    """A dry run's files: each input, the output it would write, its format, the bytes it would decrypt and,
    for a remote input, fetch."""
    return [
        FileResult(
            j.display,
            str(plan.out_dir / j.out_name) if plan.out_dir is not None and j.out_name else "-",
            j.fmt,
            j.payload or 0,
            fetched=j.remote.size if j.remote is not None else None,
        )
        for j in plan.files
    ]
