"""The ``.enc`` formats (SPEC.md 1): names, format detection, which files of a folder take part.

- TechGPT: ``<name>.<64 hex>.enc``, no header, the whole file is XORed; the hex is always sha256 of
  the empty string (a constant label, not a checksum).
- BELLE / point-alpaca: ``<name>.<sha256 hex>.enc``, the first 32 bytes are the raw sha256 of the
  plaintext, then the XORed payload (key offset 0 aligns with payload byte 0).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from llmkit.errors import InputError
from llmkit.io.core.regular import check_regular, is_special

HEADER_BYTES = 32  # BELLE: raw sha256 of the plaintext
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # TechGPT's constant label
FORMATS = ("techgpt", "belle")

_HEX64 = re.compile(r"(?P<name>.+)\.(?P<hex>[0-9a-fA-F]{64})")
_NOT_ENCRYPTED = re.compile(r"^(README|LICENSE|NOTICE)(\..*)?$", re.IGNORECASE)


def split_enc_name(name: str) -> tuple[str, str | None]:
    """``config.json.<64 hex>.enc`` -> (``config.json``, hex). Without a 64-hex label: (name minus .enc, None)."""
    base = name[:-4] if name.endswith(".enc") else name
    m = _HEX64.fullmatch(base)
    if m:
        return m.group("name"), m.group("hex").lower()
    return base, None


def output_name(path: Path) -> str:
    """The name ``path`` decrypts to (:func:`split_enc_name`); a name that gives none (``..<hex>.enc`` -> ``.``,
    ``...<hex>.enc`` -> ``..``, ``.enc`` -> nothing) is refused before anything is created."""
    name, _ = split_enc_name(path.name)
    if name in ("", ".", ".."):
        raise InputError(
            f"this .enc name gives no output name (it would decrypt to {name!r}, which names no file)",
            path=path,
            hint="rename it <name>.<64 hex>.enc, e.g. config.json.<64 hex>.enc: the part "
            "before the hex names the output",
        )
    return name


def detect_format(path: Path, fmt: str = "auto") -> tuple[str, bytes | None]:
    """The format of a local ``.enc`` file and, for BELLE, its 32-byte header (:func:`detect_format_of`)."""

    def head() -> bytes:
        with open(path, "rb") as f:
            return f.read(HEADER_BYTES)

    return detect_format_of(path, path.stat().st_size, head, fmt)


def detect_format_of(
    path: Path, size: int, read_head: Callable[[], bytes], fmt: str = "auto"
) -> tuple[str, bytes | None]:
    """The format of the ``.enc`` file ``path`` of ``size`` bytes (SPEC.md 1) and, for BELLE, its 32-byte
    header, read by ``read_head()`` only when the name and size leave the format open (a remote file's
    first bytes are then fetched; a TechGPT name never needs them).

    auto: BELLE when the first 32 bytes equal the hex in the name. A name whose label is neither the
    TechGPT constant nor the file's first 32 bytes is refused (a damaged BELLE file decrypted as
    TechGPT would silently give garbage); ``--format`` settles it. The TechGPT label is the sha256 of
    empty bytes, so only a 32-byte file with it can be BELLE (a header, nothing encrypted).
    """
    _, label = split_enc_name(path.name)
    if fmt == "techgpt":
        return "techgpt", None
    if fmt == "auto" and (label is None or (label == EMPTY_SHA256 and size != HEADER_BYTES)):
        return "techgpt", None
    if fmt == "belle" and size < HEADER_BYTES:
        raise InputError(
            f"only {size} bytes: too short for the 32-byte BELLE sha256 header",
            path=path,
            hint="the file is truncated; download it again",
        )
    if fmt not in ("auto", "belle"):
        raise InputError(f"unknown format {fmt!r}", hint="use auto, techgpt or belle")
    head = read_head()
    if fmt == "auto":
        assert label is not None  # no label is TechGPT, above
        if len(head) == HEADER_BYTES and head == bytes.fromhex(label):
            return "belle", head
        if label == EMPTY_SHA256:
            return "techgpt", None
        raise InputError(
            f"cannot tell the format: the name carries sha256 {label[:12]}... but the file "
            f"({size:,} bytes) does not start with it",
            path=path,
            hint="a BELLE file that is damaged or truncated? re-download it, or pass --format techgpt|belle",
        )
    if label is not None and head != bytes.fromhex(label):
        raise InputError(
            f"the header sha256 {head.hex()[:12]}... differs from the name's {label[:12]}...",
            path=path,
            hint="the file is damaged or renamed; download it again",
        )
    return "belle", head


def expand_decrypt_inputs(inputs: Sequence[Path]) -> tuple[list[Path | None], list[str]]:
    """(the ``.enc`` files to decrypt, ``None`` for stdin ``-``; the other files of input folders)."""
    files: list[Path | None] = []
    ignored: list[str] = []
    for p in inputs:
        if str(p) == "-":
            files.append(None)
            continue
        if p.is_dir():
            for c in sorted(p.iterdir()):  # a FIFO or device named *.enc is refused, not skipped
                if c.name.endswith(".enc") and not c.name.startswith(".") and is_special(c):
                    check_regular(c, "an .enc file")
            found = sorted(c for c in p.iterdir() if c.is_file() and c.name.endswith(".enc"))
            ignored += sorted(
                str(c)
                for c in p.iterdir()
                if c.is_file() and not c.name.endswith(".enc") and not c.name.startswith(".")
            )
            if not found:
                raise InputError(
                    "no .enc files in this folder", path=p, hint="pass the folder holding the downloaded *.enc files"
                )
            files += found
        elif p.is_file():
            if not p.name.endswith(".enc"):
                raise InputError(
                    "not an .enc file",
                    path=p,
                    hint="decrypt takes .enc files or their folder; other files are never decrypted",
                )
            files.append(p)
        else:
            _refuse_other(p, "an .enc file or a folder")
    return files, ignored


def expand_encrypt_inputs(inputs: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """(the files to encrypt; the files of input folders left alone: ``*.enc``, README*, LICENSE*, NOTICE*)."""
    files: list[Path] = []
    ignored: list[str] = []
    for p in inputs:
        if str(p) == "-":
            raise InputError("encrypt reads files, not stdin", hint="pass the files or their folder")
        if p.is_dir():
            for c in sorted(p.iterdir()):
                if c.name.startswith("."):
                    continue
                if is_special(c) and not (c.name.endswith(".enc") or _NOT_ENCRYPTED.match(c.name)):
                    check_regular(c, "a file to encrypt")  # a FIFO or device: refused, not skipped
                if not c.is_file():
                    continue
                if c.name.endswith(".enc") or _NOT_ENCRYPTED.match(c.name):
                    ignored.append(str(c))
                else:
                    files.append(c)
            if not files:
                raise InputError("no files to encrypt in this folder", path=p)
        elif p.is_file():
            files.append(p)
        else:
            _refuse_other(p, "a file or a folder to encrypt")
    return files, ignored


def _refuse_other(path: Path, what: str) -> None:
    """An input that is neither a folder nor a regular file: a FIFO or device is refused as not ``what``, a
    missing path as missing."""
    if path.exists():
        check_regular(path, what)
    else:
        raise InputError("no such file or folder", path=path, hint="check the path")


def stale_belle_outputs(out_dir: Path, name: str) -> list[str]:
    """Earlier BELLE encryptions of ``name`` in ``out_dir`` (``name.<any sha256>.enc``)."""
    if not out_dir.is_dir():
        return []
    prefix = name + "."
    return sorted(
        c.name
        for c in out_dir.iterdir()
        if c.name.startswith(prefix)
        and c.name.endswith(".enc")
        and _HEX64.fullmatch(c.name[:-4])
        and split_enc_name(c.name)[0] == name
    )
