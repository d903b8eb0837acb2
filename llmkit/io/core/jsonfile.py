"""Reading the small JSON files of a model folder, checked for type (torch-free).

``config.json``, shard indexes, ``adapter_config.json`` and ``params.json`` are JSON *objects*. A file
that is valid JSON of another type (``[1, 2]``, ``"text"``, ``null``) is bad input like any other
damage: :func:`read_json` / :func:`parse_json` raise :class:`~llmkit.errors.InputError` naming the
file, so callers can use ``.get`` and ``[...]`` on the result without guarding against an
``AttributeError``. Python's ``json`` accepts ``NaN``, ``Infinity`` and numbers too large for a float
(``1e400`` reads as infinity); no file llmkit reads may hold one, so each is refused naming the file and
the key. A FIFO, socket or device is refused without being read (:mod:`llmkit.io.core.regular`).
:func:`int_field` / :func:`number_field` read an optional positive setting the same way.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

from llmkit.errors import InputError
from llmkit.io.core.regular import read_regular

_DAMAGED = "the file is damaged or not what its name says; download it again"


class JsonObject(dict):
    """A JSON object read from a file, which remembers that file (``path``) so later checks can name it."""

    path: Path | None = None


def json_kind(value: object) -> str:
    """``[1, 2]`` -> ``"an array"``: how a JSON value is named in messages."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return f"the value {str(value).lower()}"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"


class _NonFinite:
    """Stands for a non-finite number while parsing, so that the key holding it can be named."""

    def __init__(self, literal: str):
        self.literal = literal


class NonFiniteNumber(ValueError):
    """A JSON number that is NaN or infinite; ``key`` holds it (None: not inside an object)."""

    def __init__(self, key: str | None, literal: str):
        super().__init__(literal)
        self.key, self.literal = key, literal

    def describe(self, name: str) -> str:
        """``hidden_size is Infinity, not a finite number`` (the file itself is named by the error's path)."""
        what = f"{self.key} is {self.literal}" if self.key is not None else f"{name} holds {self.literal}"
        reads = " (too large: it reads as infinity)" if self.literal not in ("NaN", "Infinity", "-Infinity") else ""
        return f"{what}{reads}, not a finite number"


def _number(literal: str) -> float | _NonFinite:
    value = float(literal)
    return value if math.isfinite(value) else _NonFinite(literal)


def _holds_non_finite(value: object) -> _NonFinite | None:
    if isinstance(value, _NonFinite):
        return value
    if isinstance(value, _Flagged):  # an object inside a list
        return _NonFinite(value.bad[1])
    if isinstance(value, list):
        for item in value:
            found = _holds_non_finite(item)
            if found is not None:
                return found
    return None


class _Flagged(dict):
    """An object that holds a non-finite number: ``bad`` = (the key path to it, its literal)."""

    bad: tuple[str, str]


def _flagged(pairs: list[tuple[str, object]], key: str, literal: str) -> _Flagged:
    d = _Flagged(pairs)
    d.bad = (key, literal)
    return d


def _checked_object(pairs: list[tuple[str, object]]) -> dict:
    for key, value in pairs:
        if isinstance(value, _Flagged):  # named by its whole path: alpha_pattern.q_proj
            return _flagged(pairs, f"{key}.{value.bad[0]}", value.bad[1])
        found = _holds_non_finite(value)
        if found is not None:
            return _flagged(pairs, key, found.literal)
    return dict(pairs)


def loads_finite(text: str) -> object:
    """``json.loads``, except that NaN, Infinity and numbers too large for a float raise
    :class:`NonFiniteNumber` naming the innermost key that holds one."""
    value = json.loads(text, parse_constant=_NonFinite, parse_float=_number, object_pairs_hook=_checked_object)
    if isinstance(value, _Flagged):
        raise NonFiniteNumber(*value.bad)
    found = _holds_non_finite(value)
    if found is not None:
        raise NonFiniteNumber(None, found.literal)
    return value


def parse_json(
    data: bytes | str, path: str | os.PathLike, *, what: str | None = None, expect: type = dict, hint: str | None = None
) -> object:
    """Parse ``data`` (the content of ``path``) and check that it is a JSON ``expect`` (dict or list)."""
    name = what or Path(path).name
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError(f"{name} is not UTF-8 text", path=path, hint=hint or _DAMAGED) from None
    try:
        value = loads_finite(data)
    except NonFiniteNumber as e:
        raise InputError(e.describe(name), path=path, hint=hint or _DAMAGED) from None
    except json.JSONDecodeError as e:
        raise InputError(
            f"{name} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", path=path, hint=hint or _DAMAGED
        ) from None
    except ValueError:  # Python refuses integers of over 4300 digits
        raise InputError(
            f"{name} holds a number too long to read (over 4300 digits)", path=path, hint=hint or _DAMAGED
        ) from None
    except RecursionError:
        raise InputError(f"{name} is nested too deeply to be read", path=path, hint=hint or _DAMAGED) from None
    if not isinstance(value, expect):
        wanted = json_kind(expect())
        raise InputError(
            f"{name} must hold a JSON {wanted.split(' ', 1)[1]}, found {json_kind(value)}",
            path=path,
            hint=hint or _DAMAGED,
        )
    if isinstance(value, dict):
        value = JsonObject(value)
        value.path = Path(path)
    return value


def read_json(
    path: str | os.PathLike, *, what: str | None = None, expect: type = dict, hint: str | None = None
) -> object:
    """Read and parse the JSON file ``path``; any problem is an :class:`InputError` naming it."""
    p = Path(path)
    name = what or p.name
    try:
        if p.is_dir():
            raise IsADirectoryError(p)
        data = read_regular(p, name)
    except IsADirectoryError:
        raise InputError(f"{name} is a folder, not a file", path=p, hint="remove or rename that folder") from None
    except FileNotFoundError:
        if os.path.islink(p):
            raise InputError(
                f"{name} is a dangling symlink (to {os.readlink(p)})", path=p, hint="fix or remove the link"
            ) from None
        raise InputError(f"{name} does not exist", path=p, hint="check the path") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{name} is a symlink loop", path=p, hint="fix or remove the link") from None
        raise InputError(f"cannot read {name}: {e.strerror or e}", path=p, hint="check the file") from None
    return parse_json(data, p, what=name, expect=expect, hint=hint)


def int_field(obj: dict, key: str, *, path: str | os.PathLike | None = None, positive: bool = True) -> int | None:
    """``obj[key]`` as an int, None when absent or null; an InputError naming ``path`` when it is not one."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or (positive and value <= 0):
        raise InputError(
            f"{key} must be a {'positive ' if positive else ''}integer, found {json.dumps(value)[:40]}",
            path=path,
            hint="the file is damaged or was edited by hand; download it again",
        )
    return value


def number_field(obj: dict, key: str, *, path: str | os.PathLike | None = None, positive: bool = True) -> float | None:
    """``obj[key]`` as a number (an int or a float, never a bool or a string), None when absent or null;
    an InputError naming ``path`` and ``key`` when it is not one."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and not value > 0):
        raise InputError(
            f"{key} must be a {'positive ' if positive else ''}number, found {json.dumps(value)[:40]}",
            path=path,
            hint="the file is damaged or was edited by hand; download it again",
        )
    return float(value)
