"""Which repo files ``llmkit download`` takes: ``--include`` / ``--exclude`` read exactly as ``hf download`` reads them.

The matching is huggingface_hub's own (``huggingface_hub.utils.filter_repo_objects``): case-sensitive
``fnmatch``, ``*`` matches across ``/`` (``data/*.json`` takes ``data/a/b.json`` too), a pattern ending in
``/`` means the whole folder (``extra/`` is ``extra/*``), ``\\`` is read as ``/``. A file is taken if it matches
some ``--include`` (or there is none) and no ``--exclude``.

Unlike ``hf download``, a filter that selects nothing is an error rather than an empty download that exits 0:
every pattern must match some file of the repo, and together they must leave at least one file.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmkit.errors import InputError

_SHOWN = 6  # repo entries named in the hint


def select_paths(repo: str, paths: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> set[str]:
    """The repo paths the filters take; an :class:`InputError` naming the pattern if one matches no file."""
    from huggingface_hub.utils import filter_repo_objects

    for flag, patterns in (("--include", include), ("--exclude", exclude)):
        for pattern in patterns:
            if next(filter_repo_objects(paths, allow_patterns=[pattern]), None) is None:
                raise InputError(
                    f"{flag} {pattern!r} matches no file of {repo}; nothing was downloaded", hint=_hint(pattern, paths)
                )
    chosen = set(
        filter_repo_objects(paths, allow_patterns=list(include) or None, ignore_patterns=list(exclude) or None)
    )
    if not chosen and (include or exclude):
        given = " ".join(f"{flag} {p!r}" for flag, ps in (("--include", include), ("--exclude", exclude)) for p in ps)
        raise InputError(
            f"{given} together leave no file of {repo} to download; nothing was downloaded", hint=_hint(None, paths)
        )
    return chosen


def _hint(pattern: str | None, paths: Sequence[str]) -> str:
    """What the repo holds (its top-level files and folders, a folder written "name/"), and the likely fix."""
    top = sorted({p.split("/", 1)[0] + ("/" if "/" in p else "") for p in paths})
    shown = ", ".join(top[:_SHOWN]) + (", ..." if len(top) > _SHOWN else "")
    folder = (pattern or "").replace("\\", "/").rstrip("/")
    if pattern is not None and not pattern.endswith(("/", "\\")) and any(p.startswith(folder + "/") for p in paths):
        return f"'{folder}' is a folder: write '{folder}/' for all of it; the repo has {shown} ({len(paths)} files)"
    if pattern is not None:
        from fnmatch import fnmatchcase

        other_case = next((p for p in paths if fnmatchcase(p.lower(), pattern.lower())), None)
        if other_case is not None:
            return f"patterns are case-sensitive: {other_case!r} matches only ignoring case; the repo has {shown}"
    return (
        f"the repo has {shown} ({len(paths)} files); patterns are matched against whole repo paths, "
        "a folder is written 'name/'"
    )
