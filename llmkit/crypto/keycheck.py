"""The key check: only Meta's LLaMA-1 7B ``consolidated.00.pth`` decrypts TechGPT-1.0 (SPEC.md 1).

The key must be :data:`KEY_SIZE` bytes with md5 :data:`KEY_MD5`; the size check fails fast, the full
md5 (13.5 GB) is computed once and cached by (resolved path, size, mtime) in
``$LLMKIT_CACHE_DIR/key-md5.json`` (default ``~/.cache/llmkit``). Tests patch :data:`KEY_SIZE` and
:data:`KEY_MD5` in this module (constants read at call time); there is deliberately no CLI option for that.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from llmkit.errors import InputError
from llmkit.hashing import hash_file
from llmkit.io.core.destination import TMP_SUFFIX, broken_link
from llmkit.io.core.jsonfile import read_json
from llmkit.io.core.regular import require_file
from llmkit.pipeline import ProgressFactory, no_progress
from llmkit.redact import value_shape

# The key: Meta's LLaMA-1 7B consolidated.00.pth (the same file is the key for 7B and 13B models).
# Test seam: tests patch these two constants (they are read at call time).
KEY_SIZE = 13_476_939_516
KEY_MD5 = "6efc8dab194ab59e49cd24be5574d85e"
KEY_DESCRIPTION = "Meta's original LLaMA-1 7B consolidated.00.pth"
KEY_CACHE_FILE = "key-md5.json"


def cache_dir() -> Path:
    return Path(os.environ.get("LLMKIT_CACHE_DIR") or Path.home() / ".cache" / "llmkit")


def _load_key_cache() -> dict:
    try:
        data = read_json(cache_dir() / KEY_CACHE_FILE)
    except InputError:  # missing or damaged: the cache only saves time
        return {}
    assert isinstance(data, dict)
    return data


def _store_key_cache(entry_key: str, entry: dict) -> None:
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        data = _load_key_cache()
        data[entry_key] = entry
        tmp = folder / f".{KEY_CACHE_FILE}.{os.getpid()}{TMP_SUFFIX}"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, folder / KEY_CACHE_FILE)
    except OSError:
        pass  # the cache only saves time


def _wrong_key(path: Path, why: str) -> InputError:
    return InputError(
        f"{why}: this is not {KEY_DESCRIPTION} ({KEY_SIZE:,} bytes, md5 {KEY_MD5})",
        path=path,
        hint="pass the original LLaMA-1 7B consolidated.00.pth (also for 13B models); LLaMA-2's "
        "consolidated.00.pth or a converted (Hugging Face) model is the usual mistake. "
        "Use --no-key-check only if the weights were encrypted with another key on purpose",
    )


def require_key_file(path: Path, *, flag: str = "--key") -> None:
    """The key must be an existing regular file (whatever its identity; :func:`check_key` checks that).

    A value that is no entry on disk is refused without being repeated: it may be key material typed
    where the key's path belongs (only its length is named)."""
    require_file(
        path,
        absent=lambda: InputError(
            f"{flag}: no such key file ({value_shape(str(path))})", hint=f"pass the path of {KEY_DESCRIPTION}"
        ),
        special=f"the key ({KEY_DESCRIPTION})",
        not_file=_not_a_key_file,
    )


def _not_a_key_file(path: Path) -> InputError:
    problem = broken_link(path)
    return InputError(
        f"the key {problem}" if problem else "the key is not a file", path=path, hint=f"pass {KEY_DESCRIPTION}"
    )


def check_key(path: str | os.PathLike, *, progress: ProgressFactory | None = None) -> str:
    """Refuse any key but LLaMA-1 7B ``consolidated.00.pth``. Returns ``verified`` or ``verified (cached)``.

    The size check fails fast; the full md5 (13.5 GB) is computed once per (path, size, mtime).
    """
    path = Path(path)
    st = path.stat()
    if not path.is_file():
        raise InputError("the key is not a file", path=path, hint=f"pass {KEY_DESCRIPTION}")
    if st.st_size != KEY_SIZE:
        raise _wrong_key(path, f"the key file is {st.st_size:,} bytes")
    entry_key = str(path.resolve())
    cached = _load_key_cache().get(entry_key)
    if isinstance(cached, dict) and cached.get("size") == st.st_size and cached.get("mtime_ns") == st.st_mtime_ns:
        digest, status = str(cached.get("md5")), "verified (cached)"
    else:
        with (progress or no_progress)("checking the key (md5, once)", st.st_size) as advance:
            digest, status = hash_file(path, "md5", progress=advance), "verified"
        _store_key_cache(entry_key, {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": digest})
    if digest != KEY_MD5:
        raise _wrong_key(path, f"the key file has md5 {digest}")
    return status
