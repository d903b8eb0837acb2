"""Key material and tokens never reach a message: the last line of defence before anything is printed.

Messages are written not to hold secrets in the first place (a key option's value that is not a key
file is refused without repeating it). As a second guard, the code that reads a key or a token
registers it here (:func:`register_secret`), and the CLI's output passes every line, JSON document and
``--debug`` traceback through :func:`redact`, which replaces registered secrets and the credentials of
URLs (``https://user:token@host``) by ``***``.
"""

from __future__ import annotations

import re
import threading

MIN_SECRET = 8  # shorter values are not registered: they would blank out ordinary words
_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | bytes | None) -> None:
    """Never print ``value`` (bytes: their hex, both cases; text: as is) from now on in this process."""
    if not value:
        return
    forms = [value.hex(), value.hex().upper()] if isinstance(value, bytes) else [value, value.strip()]
    with _lock:
        _secrets.update(f for f in forms if len(f) >= MIN_SECRET)


def without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` part replaced by ``***@`` (a mirror URL may carry a token)."""
    return _URL_CREDENTIALS.sub(r"\1***@", url)


def redact(text: str) -> str:
    """``text`` with every registered secret and every URL's credentials replaced by ``***``."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, "***")
    return without_credentials(text)


def value_shape(value: str) -> str:
    """How a refused key option value is described instead of being repeated: its length only."""
    return f"the {len(value)}-character value is not shown, in case it is a key"
