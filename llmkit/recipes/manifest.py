"""The record of a recipe run in its work folder (``llmkit-recipe.json``), so a re-run resumes.

Each finished and verified step is recorded with its resolved options, a fingerprint of every input and
output (per file: relative path, size, modification time; hashed into one sha256), the checks it
passed, the llmkit version and when. A re-run skips a step whose record matches, re-runs a step whose
options or inputs changed (and every step after it that reads its output), and resumes at a failed
one. ``created`` lists the outputs a step of this recipe created (they did not exist before it ran):
only those may be replaced without ``--force`` or deleted as intermediates. The file is replaced
atomically (temporary name, fsync, rename) after every step.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmkit import __version__
from llmkit.errors import InputError
from llmkit.io.jsonfile import read_json

MANIFEST = "llmkit-recipe.json"


def fingerprint(path: Path) -> str | None:
    """sha256 over (relative path, size, mtime_ns) of every file under ``path`` (hidden names skipped);
    None when ``path`` does not exist."""
    if not path.exists():
        return None
    rows = []
    if path.is_file():
        st = path.stat()
        rows.append(("", st.st_size, st.st_mtime_ns))
    else:
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(f for f in files if not f.startswith(".")):
                p = Path(root) / name
                st = p.stat()
                rows.append((p.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


@dataclass
class StepRecord:
    """One finished step: ``inputs``/``output``: path -> fingerprint; ``removed``: its output was deleted
    as an intermediate once no later step needed it."""

    job: str
    options: dict[str, Any]
    inputs: dict[str, str | None]
    output: dict[str, str | None]
    checks: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    llmkit: str = __version__
    finished: str = ""
    removed: bool = False


@dataclass
class Manifest:
    recipe: str
    steps: dict[str, StepRecord] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # step id -> the error of its last attempt
    created: list[str] = field(default_factory=list)  # outputs this recipe created in the work folder

    @classmethod
    def load(cls, workdir: Path, recipe: str) -> "Manifest":
        path = workdir / MANIFEST
        if not path.is_file():
            return cls(recipe)
        data = read_json(path, what="the recipe manifest", hint="delete it to start the recipe over")
        assert isinstance(data, dict)
        if data.get("recipe") != recipe:
            raise InputError(f"this folder holds a run of recipe {data.get('recipe')!r}, not {recipe!r}",
                             path=workdir, hint="choose another --workdir")
        try:
            steps = {k: StepRecord(**v) for k, v in (data.get("steps") or {}).items()}
            created = [str(c) for c in data.get("created") or []]
            failed = dict(data.get("failed") or {})
        except (TypeError, AttributeError, ValueError):  # a field of the wrong type (a list or string of steps)
            raise InputError("the recipe manifest is not one llmkit wrote", path=path,
                             hint="delete it to start the recipe over") from None
        return cls(recipe, steps, failed, created)

    def save(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / MANIFEST
        tmp = workdir / f".{MANIFEST}.llmkit-tmp"
        data = {"recipe": self.recipe, "llmkit": __version__,
                "steps": {k: asdict(v) for k, v in self.steps.items()}, "failed": self.failed,
                "created": self.created}
        with open(tmp, "w") as f:
            f.write(json.dumps(data, indent=2) + "\n")  # steps in recipe order
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
