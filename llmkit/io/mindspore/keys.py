"""The keys and modes of encrypted MindSpore checkpoints (AES-GCM, AES-CBC, SM4-CBC, told apart by a
block's magic number): :func:`read_key` takes a key file path (raw bytes) or ``env:VAR`` (hex in an
environment variable), never the key itself on the command line, and checks its length for the mode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import InputError
from llmkit.io.core.regular import require_file
from llmkit.redact import register_secret, value_shape

MAGICS = {"AES-GCM": 0x7F3A5ED8, "AES-CBC": 0x7F3A5ED9, "SM4-CBC": 0x7F3A5EDA}


MODE_OF_MAGIC = {v: k for k, v in MAGICS.items()}


ENC_MODES = tuple(MAGICS)


KEY_LENGTHS = {"AES-GCM": (16, 24, 32), "AES-CBC": (16, 24, 32), "SM4-CBC": (16,)}


@dataclass(frozen=True)
class CkptKey:
    """A checkpoint key and mode (``mode`` None when reading: taken from the file). ``source`` says where
    the key came from, for messages; the key bytes never appear in a repr."""

    key: bytes = field(repr=False)
    mode: str | None
    source: str

    def check(self, mode: str) -> None:
        if len(self.key) not in KEY_LENGTHS[mode]:
            where = self.source.startswith("env:")
            raise InputError(
                f"the key{' in ' + self.source if where else ''} has {len(self.key)} bytes; {mode} needs "
                f"{_lengths(KEY_LENGTHS[mode])}",
                path=None if where else self.source,
                hint=KEY_FORMS,
            )


KEY_FORMS = "a key file holds the raw key bytes (no newline); env:VAR holds hex"


MAX_KEY = max(n for lengths in KEY_LENGTHS.values() for n in lengths)


def _lengths(ns: tuple[int, ...]) -> str:
    return str(ns[0]) if len(ns) == 1 else f"{', '.join(map(str, ns[:-1]))} or {ns[-1]}"


def _read_key_file(path: Path, flag: str) -> bytes:
    """The raw bytes of a key file, read only if its size can be a key's (a model file passed by mistake is
    refused from its size, never read)."""
    every = tuple(sorted({n for lengths in KEY_LENGTHS.values() for n in lengths}))
    size = os.stat(path).st_size
    if size > MAX_KEY:
        raise InputError(
            f"{flag}: the key file is {size:,} bytes; a checkpoint key is {_lengths(every)} bytes",
            path=path,
            hint=KEY_FORMS,
        )
    with open(path, "rb") as f:
        data = f.read(MAX_KEY + 1)
    if len(data) > MAX_KEY:  # it grew since the stat
        raise InputError(
            f"{flag}: the key file is more than {MAX_KEY} bytes; a checkpoint key is {_lengths(every)} bytes",
            path=path,
            hint=KEY_FORMS,
        )
    return data


def _key_path(spec: str, flag: str) -> Path:
    """The key file ``spec`` names. A value that is no entry on disk is refused without being repeated
    (it may be the key itself, typed where its file belongs); a path that exists is named."""
    accepted = "pass the path of a file holding the raw key bytes, or env:VAR naming a variable that holds it as hex"
    return require_file(
        spec,
        absent=lambda: InputError(f"{flag}: no such key file, and not env:VAR ({value_shape(spec)})", hint=accepted),
        special=f"the {flag} key file",
        not_file=lambda path: InputError(
            f"{flag}: not a key file (a key file or env:VAR is expected)", path=path, hint=accepted
        ),
    )


def read_key(spec: str, mode: str | None, *, flag: str) -> CkptKey:
    """The key named by ``spec``: ``env:VAR`` (hex) or the path of a file of raw key bytes. The key is
    registered as a secret (:mod:`llmkit.redact`): it never appears in what the CLI prints."""
    if mode is not None and mode not in MAGICS:
        raise InputError(f"{flag.replace('key', 'mode')}: {mode!r} is not one of {', '.join(ENC_MODES)}")
    if spec.startswith("env:"):
        var = spec[4:]
        value = os.environ.get(var)
        if not var or value is None:
            raise InputError(
                f"{flag}: the environment variable {var or '(empty name)'} is not set",
                hint=f"export {var or 'VAR'}=<hex key>, or pass the path of a key file",
            )
        register_secret(value)
        try:
            key = bytes.fromhex(value.strip())
        except ValueError:
            raise InputError(
                f"{flag}: the environment variable {var} does not hold a hex key",
                hint="put the key as hex digits in it, e.g. 32 digits for a 16-byte key",
            ) from None
        ck = CkptKey(key, mode, f"env:{var}")
    else:
        path = _key_path(spec, flag)
        ck = CkptKey(_read_key_file(path, flag), mode, str(path))
    register_secret(ck.key)
    if mode is not None:
        ck.check(mode)
    return ck
