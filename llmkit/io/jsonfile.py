"""Reading the small JSON files of a model folder, checked for type (torch-free).

``config.json``, shard indexes, ``adapter_config.json`` and ``params.json`` are JSON *objects*. A file
that is valid JSON of another type (``[1, 2]``, ``"text"``, ``null``) is bad input like any other
damage: :func:`read_json` / :func:`parse_json` raise :class:`~llmkit.errors.InputError` naming the
file, so callers can use ``.get`` and ``[...]`` on the result without guarding against an
``AttributeError``. :func:`int_field` reads an optional positive integer setting the same way.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from llmkit.errors import InputError

_DAMAGED = "the file is damaged or not what its name says; download it again"


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


def parse_json(data: bytes | str, path: str | os.PathLike, *, what: str | None = None, expect: type = dict,
               hint: str | None = None) -> object:
    """Parse ``data`` (the content of ``path``) and check that it is a JSON ``expect`` (dict or list)."""
    name = what or Path(path).name
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError(f"{name} is not UTF-8 text", path=path, hint=hint or _DAMAGED) from None
    try:
        value = json.loads(data)
    except json.JSONDecodeError as e:
        raise InputError(f"{name} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", path=path,
                         hint=hint or _DAMAGED) from None
    except RecursionError:
        raise InputError(f"{name} is nested too deeply to be read", path=path, hint=hint or _DAMAGED) from None
    if not isinstance(value, expect):
        wanted = json_kind(expect())
        raise InputError(f"{name} must hold a JSON {wanted.split(' ', 1)[1]}, found {json_kind(value)}",
                         path=path, hint=hint or _DAMAGED)
    return value


def read_json(path: str | os.PathLike, *, what: str | None = None, expect: type = dict,
              hint: str | None = None) -> object:
    """Read and parse the JSON file ``path``; any problem is an :class:`InputError` naming it."""
    p = Path(path)
    name = what or p.name
    try:
        data = p.read_bytes()
    except IsADirectoryError:
        raise InputError(f"{name} is a folder, not a file", path=p, hint="remove or rename that folder") from None
    except FileNotFoundError:
        if os.path.islink(p):
            raise InputError(f"{name} is a dangling symlink (to {os.readlink(p)})", path=p,
                             hint="fix or remove the link") from None
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
        raise InputError(f"{key} must be a {'positive ' if positive else ''}integer, found {json.dumps(value)[:40]}",
                         path=path, hint="the file is damaged or was edited by hand; download it again")
    return value
