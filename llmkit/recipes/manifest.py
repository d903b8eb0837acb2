"""The record of a recipe run in its work folder (``llmkit-recipe.json``), so a re-run resumes.

Each finished and verified step is recorded with its resolved options, a fingerprint of every input and
output (``llmkit.recipes.fingerprint``: per file its size, modification time and, for what the recipe
itself wrote, the sha256 of its content), the listing of every remote input it streamed (``remote``: the
commit and each file's published digest, ``llmkit.recipes.remote``), the checks it passed, the llmkit
version and when. A re-run
skips a step whose record matches, re-runs a step whose options, inputs or output changed (and every
step after it that reads its output), and resumes at a failed one. ``created`` lists the outputs a step
of this recipe created (they did not exist before it ran): only those may be replaced without
``--force`` or deleted as intermediates. The file is replaced atomically (temporary name, fsync,
rename) after every step.

Loading checks the type of every field (:func:`_load_record` and friends): a manifest edited by hand or
damaged is one :class:`~llmkit.errors.InputError` naming the file and the field, never a crash later.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NoReturn

from llmkit import __version__
from llmkit.errors import InputError
from llmkit.io.core.jsonfile import json_kind, read_json
from llmkit.recipes.fingerprint import Fingerprint

MANIFEST = "llmkit-recipe.json"
_HINT = "delete it to start the recipe over"
_HEX = frozenset("0123456789abcdef")


@dataclass
class StepRecord:
    """One finished step: ``inputs``/``output``: path -> fingerprint (None: it did not exist);
    ``removed``: its output was deleted as an intermediate once no later step needed it; ``remote``: per
    URL it read, ``{"revision": commit or None, "files": {name: {"size", "digest": [algorithm, value]}}}``."""

    job: str
    options: dict[str, Any]
    inputs: dict[str, Fingerprint]
    output: dict[str, Fingerprint]
    checks: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    llmkit: str = __version__
    finished: str = ""
    removed: bool = False
    remote: dict[str, Any] = field(default_factory=dict)  # URL -> its listing (llmkit.recipes.remote)


@dataclass
class Manifest:
    recipe: str
    steps: dict[str, StepRecord] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # step id -> the error of its last attempt
    created: list[str] = field(default_factory=list)  # outputs this recipe created in the work folder

    @classmethod
    def load(cls, workdir: Path, recipe: str) -> Manifest:
        path = workdir / MANIFEST
        if not path.is_file():
            return cls(recipe)
        data = read_json(path, what="the recipe manifest", hint=_HINT)
        assert isinstance(data, dict)  # read_json refuses any other JSON type
        return _load_manifest(data, path, recipe)

    def save(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / MANIFEST
        tmp = workdir / f".{MANIFEST}.llmkit-tmp"
        data = {
            "recipe": self.recipe,
            "llmkit": __version__,
            "steps": {k: asdict(v) for k, v in self.steps.items()},
            "failed": self.failed,
            "created": self.created,
        }
        with open(tmp, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")  # steps in recipe order
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


# ------------------------------------------------------------------ loading, every field checked


def _bad(path: Path, where: str, problem: str) -> NoReturn:
    raise InputError(f"the recipe manifest's {where} {problem}", path=path, hint=_HINT)


def _typed(value: Any, kind: type | tuple[type, ...], wanted: str, path: Path, where: str) -> Any:
    """``value`` when it is a ``kind`` (a bool only where ``kind`` is bool); otherwise the error naming ``where``."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)):
        return value
    _bad(path, where, f"is {json_kind(value)}, not {wanted}")


def _load_manifest(data: dict, path: Path, recipe: str) -> Manifest:
    unknown = sorted(set(data) - {"recipe", "llmkit", "steps", "failed", "created"})
    if unknown:
        _bad(path, f"field {unknown[0]!r}", "is not one llmkit writes")
    if "recipe" not in data:
        _bad(path, "recipe name", "is missing")
    name = _typed(data["recipe"], str, "a recipe name", path, "recipe")
    _typed(data.get("llmkit", ""), str, "a version string", path, "llmkit")
    if name != recipe:
        raise InputError(
            f"this work folder holds a run of recipe {name!r}, not {recipe!r}",
            path=path,
            hint="choose another --workdir",
        )
    steps = _typed(data.get("steps", {}), dict, "an object of step records", path, "steps")
    failed = _typed(data.get("failed", {}), dict, "an object of step ids and errors", path, "failed")
    for k, v in failed.items():
        _typed(v, str, "an error message", path, f"failed.{k}")
    created = _typed(data.get("created", []), list, "a list of paths", path, "created")
    for i, c in enumerate(created):
        _typed(c, str, "a path", path, f"created[{i}]")
    records = {k: _load_record(v, path, f"steps.{k}") for k, v in steps.items()}
    return Manifest(name, records, dict(failed), list(created))


def _load_record(value: Any, path: Path, where: str) -> StepRecord:
    from llmkit.recipes.jobs import JOBS

    rec = _typed(value, dict, "a step record", path, where)
    known = {f.name for f in fields(StepRecord)}
    for key in sorted(rec):
        if key not in known:
            _bad(path, f"{where}.{key}", "is not a field llmkit writes")
    for key in ("job", "options", "inputs", "output"):
        if key not in rec:
            _bad(path, f"{where}.{key}", "is missing")
    if _typed(rec["job"], str, "a job name", path, f"{where}.job") not in JOBS:
        _bad(path, f"{where}.job", f"{rec['job']!r} is not a job a recipe runs")
    _typed(rec["options"], dict, "an object of options", path, f"{where}.options")
    for key in ("inputs", "output"):
        prints = _typed(rec[key], dict, "an object of paths and fingerprints", path, f"{where}.{key}")
        for p, fp in prints.items():
            _check_fingerprint(fp, path, f"{where}.{key}[{p!r}]")
    remote = _typed(rec.get("remote", {}), dict, "an object of URLs and listings", path, f"{where}.remote")
    for url, listed in remote.items():
        _check_listing(listed, path, f"{where}.remote[{url!r}]")
    checks = _typed(rec.get("checks", []), list, "a list of checks", path, f"{where}.checks")
    for i, c in enumerate(checks):
        _typed(c, dict, "a check", path, f"{where}.checks[{i}]")
        for k, v in c.items():
            _typed(v, str, "a string", path, f"{where}.checks[{i}].{k}")
    _typed(rec.get("seconds", 0.0), (int, float), "a number", path, f"{where}.seconds")
    _typed(rec.get("removed", False), bool, "true or false", path, f"{where}.removed")
    for key in ("llmkit", "finished"):
        _typed(rec.get(key, ""), str, "a string", path, f"{where}.{key}")
    return StepRecord(**rec)


def _check_fingerprint(fp: Any, path: Path, where: str) -> None:
    """None (it did not exist), a string (an earlier llmkit's size+mtime digest), or file -> entry."""
    if fp is None or isinstance(fp, str):
        return
    files = _typed(fp, dict, "a fingerprint (an object of files)", path, where)
    for rel, entry in files.items():
        at = f"{where}[{rel!r}]"
        entry = _typed(entry, dict, "a file fingerprint", path, at)
        extra = sorted(set(entry) - {"size", "mtime_ns", "sha256", "seal"})
        if extra:
            _bad(path, f"{at}.{extra[0]}", "is not a field llmkit writes")
        for key in ("size", "mtime_ns"):
            if key not in entry:
                _bad(path, f"{at}.{key}", "is missing")
            _typed(entry[key], int, "an integer", path, f"{at}.{key}")
        sha = entry.get("sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and all(c in _HEX for c in sha)):
            _bad(path, f"{at}.sha256", f"is {json_kind(sha)}, not a sha256 in hex")
        seal = entry.get("seal")
        if seal is not None and not (
            isinstance(seal, list)
            and len(seal) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in seal)
        ):
            _bad(path, f"{at}.seal", f"is {json_kind(seal)}, not a pair of integers")


def _check_listing(listed: Any, path: Path, where: str) -> None:
    """A remote input's record: its commit (a string, or None in S3) and per file its size and digest."""
    listed = _typed(listed, dict, "a remote listing", path, where)
    extra = sorted(set(listed) - {"revision", "files"})
    if extra:
        _bad(path, f"{where}.{extra[0]}", "is not a field llmkit writes")
    if listed.get("revision") is not None:
        _typed(listed["revision"], str, "a commit", path, f"{where}.revision")
    files = _typed(listed.get("files"), dict, "an object of files", path, f"{where}.files")
    for name, entry in files.items():
        at = f"{where}.files[{name!r}]"
        entry = _typed(entry, dict, "a remote file", path, at)
        if set(entry) != {"size", "digest"}:
            _bad(path, at, "does not hold exactly size and digest")
        _typed(entry["size"], int, "an integer", path, f"{at}.size")
        digest = entry["digest"]
        if digest is not None and not (
            isinstance(digest, list) and len(digest) == 2 and all(isinstance(x, str) for x in digest)
        ):
            _bad(path, f"{at}.digest", f"is {json_kind(digest)}, not [algorithm, value]")
