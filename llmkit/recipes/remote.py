"""Recipe inputs read from their URL: a download that the next step would only stream is not run.

:func:`stream_inputs` rewrites the active steps before they are fused: a ``download`` step that is not a
final output, whose every reader is a tensor job reading it as a model or adapter (recover, merge-lora,
to-ckpt, to-meta, to-gguf: each streams ``hf://``/``s3://`` through ``io.remote``) is dropped, and its
readers read the URL instead: ``hf://<repo>`` of the registry model it downloads, or the URL given for
that name (``--input NAME=URL``). ``keep_intermediate`` (the user wants the local copies) keeps a registry
download as a step; an input given as a URL streams all the same (no download writes an S3 prefix).

:class:`RemotePrints` lists each URL once per run (metadata only: the hub's commit and tree, an S3
listing; no data) for the manifest: per URL the resolved commit (hub; None in S3) and each file's size and
published digest (hub: LFS sha256 or git blob sha1; S3: the ETag). A step reads the commit that was
recorded (:meth:`RemotePrints.pinned`), and a re-run compares the listing with the record
(:meth:`RemotePrints.check`): the same files with the same digests are unchanged, whatever the commit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llmkit.errors import InputError
from llmkit.io.remote.url import as_remote_path, registry_url, remote_url
from llmkit.recipes.book import Step
from llmkit.recipes.fingerprint import Change

# The fields of each job that open a model through open_source (which streams a URL).
STREAMING_FIELDS = {
    "recover": ("base", "diff"),
    "merge-lora": ("base", "adapters"),
    "to-ckpt": ("source",),
    "to-meta": ("source",),
    "to-gguf": ("source",),
}

RemoteRecord = dict[str, Any]  # {"revision": str | None, "files": {name: {"size": int, "digest": [alg, value] | None}}}


@dataclass(frozen=True)
class Streamed:
    """A download the recipe does not run: ``name`` (the registry model), ``url``, ``step`` (the download's
    id), ``readers`` (the steps reading the URL), ``given`` (from ``--input``, not the registry)."""

    name: str
    url: str
    step: str
    readers: tuple[str, ...]
    given: bool


def _refs(value: Any, ref: str) -> int:
    if isinstance(value, str):
        return value.count(ref)
    if isinstance(value, (list, tuple)):
        return sum(_refs(v, ref) for v in value)
    if isinstance(value, dict):
        return sum(_refs(v, ref) for v in value.values())
    return 0


def _streamed_refs(step: Step, ref: str) -> int:
    """How many of ``step``'s references to ``ref`` are whole values of fields that stream a URL."""
    n = 0
    for key in STREAMING_FIELDS.get(step.job, ()):
        value = step.args.get(key)
        n += sum(v == ref for v in value) if isinstance(value, (list, tuple)) else int(value == ref)
    return n


def _swap(value: Any, ref: str, url: str) -> Any:
    if isinstance(value, (list, tuple)):
        return [url if v == ref else v for v in value]
    return url if value == ref else value


def _blocker(d: Step, steps: list[Step]) -> str | None:
    """Why the download ``d`` must write its local copy (a step reads it from disk), or None."""
    ref = f"{{out:{d.id}}}"
    if d.final:
        return f"its download is a result of the recipe ({d.args['output']})"
    for s in steps:
        if _refs(s.args, ref) != _streamed_refs(s, ref):
            return f"step {s.id} ({s.job}) reads it from a local copy"
    return None


def stream_inputs(
    steps: list[Step], given: dict[str, str], *, keep_intermediate: bool, recipe: str
) -> tuple[list[Step], list[Streamed]]:
    """The steps with each streamable download dropped and its readers reading the URL (see the module)."""
    downloads = {s.args["model"]: s for s in steps if s.job == "download"}
    for name, url in given.items():
        if name not in downloads:
            known = ", ".join(downloads) or "nothing"
            raise InputError(
                f"recipe {recipe} downloads no {name} with these flags (it downloads {known})",
                hint=f"llmkit recipe show {recipe}",
            )
        why = _blocker(downloads[name], steps)
        if why is not None:
            raise InputError(
                f"--input {name}=...: recipe {recipe} cannot stream {name}: {why}",
                hint=f"drop --input {name}=...; the recipe downloads it",
            )
        if remote_url(url) is None:
            raise InputError(
                f"--input {name}={url}: not a URL", hint="give hf://OWNER/NAME[@REV] or s3://BUCKET/PREFIX"
            )
    streamed: list[Streamed] = []
    for name, d in downloads.items():
        found = remote_url(given[name]) if name in given else registry_url(name)
        if found is None or set(d.args) != {"model", "output"} or _blocker(d, steps) is not None:
            continue
        if keep_intermediate and name not in given:
            continue  # the local copy is asked for: the download runs as before
        url, ref = found, f"{{out:{d.id}}}"
        readers = tuple(s.id for s in steps if _refs(s.args, ref))
        streamed.append(Streamed(name, url, d.id, readers, name in given))
        steps = [
            dataclasses.replace(s, args={k: _swap(v, ref, url) for k, v in s.args.items()})
            for s in steps
            if s.id != d.id
        ]
    return steps, streamed


def urls_in(paths: list[str]) -> list[str]:
    """The URLs among a step's input paths."""
    return [u for p in paths if (u := remote_url(p)) is not None]


def pin(value: Any, pins: dict[str, str]) -> Any:
    """``value`` (a step's args) with every URL in ``pins`` replaced by its pinned form."""
    if isinstance(value, dict):
        return {k: pin(v, pins) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [pin(v, pins) for v in value]
    return pins.get(value, value) if isinstance(value, str) else value


class RemotePrints:
    """The listing of each remote input, taken once per run (metadata only)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[RemoteRecord, str]] = {}

    def _list(self, url: str) -> tuple[RemoteRecord, str]:
        if url not in self._seen:
            from llmkit.io.remote.store import open_store

            store = open_store(url)
            files = {
                e.name: {"size": e.size, "digest": list(e.digest) if e.digest else None}
                for e in sorted(store.entries().values(), key=lambda e: e.name)
            }
            self._seen[url] = ({"revision": store.revision, "files": files}, store.pinned_url)
        return self._seen[url]

    def record(self, url: str) -> RemoteRecord:
        """What the manifest keeps of ``url``: the commit (hub) and each file's size and published digest."""
        return self._list(url)[0]

    def pinned(self, url: str) -> str:
        """``url`` at the commit :meth:`record` lists (hub); an S3 URL as it is."""
        return self._list(url)[1]

    def size(self, url: str) -> int:
        """Bytes of every file listed at ``url``."""
        return sum(int(f["size"]) for f in self.record(url)["files"].values())

    def check(self, url: str, recorded: RemoteRecord) -> Change | None:
        """None when the listing has the recorded files with the same sizes and digests, else the first change
        (a file without a published digest always counts as changed: its step runs again)."""
        now = self.record(url)["files"]
        before = recorded.get("files", {})
        for name in sorted(set(now) | set(before)):
            if name not in now or name not in before:
                how = "missing" if name not in now else "added"
                return Change(as_remote_path(url) / name, "remote", f"{how}{_commit(recorded, self.record(url))}")
            if now[name].get("digest") is None:  # a plain HTTP server publishes none: no way to tell
                return Change(as_remote_path(url) / name, "remote", "unknown: its server publishes no digest")
            if now[name] != before[name]:
                what = "size" if now[name]["size"] != before[name]["size"] else "published digest"
                detail = f"a different {what}{_commit(recorded, self.record(url))}"
                return Change(as_remote_path(url) / name, "remote", detail)
        return None


def _commit(before: RemoteRecord, now: RemoteRecord) -> str:
    old, new = before.get("revision"), now.get("revision")
    return f"; commit {str(old)[:12]} is now {str(new)[:12]}" if old and new and old != new else ""
