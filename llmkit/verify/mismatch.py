"""Why a file differs from the published one: formatting-only JSON, re-saved or truncated checkpoints.

A digest mismatch alone does not say whether a download is corrupt. :func:`classify_mismatch` gives a
one-sentence answer; :func:`json_difference` compares two JSON files by content (``verify --tensors``
of two folders). JSON here is parsed from bytes already read (a file that is not JSON is a finding,
not an error), so ``llmkit.io.core.jsonfile`` is not used.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llmkit.errors import InputError
from llmkit.registry import KNOWN_SIZES, ChecksumTable, TableEntry

METADATA_KEYS = ("transformers_version", "_name_or_path", "_commit_hash")
# transformers writes its version into config.json / generation_config.json; these are the versions a
# published file may carry (the cards date from 2023, transformers 4.26 - 4.35).
_TF_VERSIONS = tuple(
    v for m in range(26, 58) for v in (f"4.{m}.0.dev0", f"4.{m}.0", f"4.{m}.1", f"4.{m}.2", f"4.{m}.3")
)
_MISSING = object()


def _serializations(obj) -> list[bytes]:
    out = []
    for indent in (2, None, 4):
        for sort_keys in (True, False):
            for ensure_ascii in (False, True):
                text = json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
                for tail in ("\n", ""):
                    out.append((text + tail).encode("utf-8"))
    return out


def _json_variants(obj) -> list[tuple[object, str]]:
    """(object, what changed) candidates for the published file's content."""
    variants: list[tuple[object, str]] = [(obj, "")]
    if not isinstance(obj, dict):
        return variants
    base = [(obj, "")]
    if "dtype" in obj and "torch_dtype" not in obj:  # transformers 5 renamed torch_dtype -> dtype
        renamed = {("torch_dtype" if k == "dtype" else k): v for k, v in obj.items()}
        base.append((renamed, "the key dtype was torch_dtype"))
    for o, what in base:
        if o is not obj:
            variants.append((o, what))
        if "transformers_version" in o:
            stripped = {k: v for k, v in o.items() if k != "transformers_version"}
            variants.append((stripped, _join(what, "no transformers_version")))
            for v in _TF_VERSIONS:
                if v != o["transformers_version"]:
                    variants.append(
                        (
                            {**o, "transformers_version": v},
                            _join(what, f"transformers_version was {v} (yours: {o['transformers_version']})"),
                        )
                    )
        else:
            for v in _TF_VERSIONS:
                variants.append(
                    ({**o, "transformers_version": v}, _join(what, f"transformers_version {v} was present"))
                )
    return variants


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a else b


def classify_json_mismatch(data: bytes, expected: str, algorithm: str) -> str:
    """Why a JSON file's digest differs from ``expected``: re-serialises the content in the ways
    transformers and ``json`` write it (indent, key order, ASCII escapes, final newline, version
    metadata) and reports the variant whose digest equals the published one, if any."""
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"not valid JSON ({e.__class__.__name__}: {e}); the file is damaged or truncated: download it again"
    for variant, what in _json_variants(obj):
        for blob in _serializations(variant):
            h = hashlib.new(algorithm)
            h.update(blob)
            if h.hexdigest() == expected:
                if not what:
                    return "same JSON content as the published file; only the formatting differs (not corruption)"
                return f"same JSON content as the published file except metadata: {what} (not corruption)"
    return "the JSON content differs from the published file (not only formatting); compare it with the original"


def published_elsewhere(
    actual: str, algorithm: str, *, table: ChecksumTable | None = None, entry: TableEntry | None = None
) -> str | None:
    """Where a digest that does not match its line is published after all: another line of the same
    table (swapped or renamed files), else a line of another built-in table (another model's file)."""
    from llmkit.registry import builtin_tables

    if table is not None:
        other = next((e for e in table.entries if e.digest == actual and e != entry), None)
        if other is not None:
            return (
                f"its {algorithm} is the one table {table.name} lists for {other.rel}: the files' names are "
                f"swapped (or renamed); give each file its published name"
            )
    for t in builtin_tables().values():
        if t.algorithm == algorithm and (table is None or t.name != table.name):
            other = next((e for e in t.entries if e.digest == actual), None)
            if other is not None:
                return f"its {algorithm} is the one table {t.name} lists for {other.rel}: this is that file"
    return None


def classify_mismatch(
    path: Path,
    expected: str,
    algorithm: str,
    *,
    table: ChecksumTable | None = None,
    entry: TableEntry | None = None,
    actual: str | None = None,
) -> str:
    """A one-sentence explanation of a digest mismatch: a file published under another name (swapped
    shards, another model's file), formatting-only JSON, a readable checkpoint whose bytes changed
    (re-saved), a truncated file, or plain different content."""
    if actual is not None:
        elsewhere = published_elsewhere(actual, algorithm, table=table, entry=entry)
        if elsewhere is not None:
            return elsewhere
    size = path.stat().st_size
    if table is not None and entry is not None:
        known = KNOWN_SIZES.get((table.name, entry.basename))
        if known is not None and known != size:
            return f"size is {size:,} bytes, the published file has {known:,}: truncated or a different file"
    if size == 0:
        return "the file is empty: download it again"
    name = path.name
    if name.endswith(".json") and size <= 16 * 1024 * 1024:
        return classify_json_mismatch(path.read_bytes(), expected, algorithm)
    if path.suffix in (".bin", ".pth", ".pt", ".safetensors") and not name.endswith(".enc"):
        try:
            from llmkit.io.core.source import open_source

            with open_source(path) as src:
                n = len(src)
        except InputError as e:
            return f"not a readable checkpoint ({e.message}): damaged or truncated, download it again"
        except Exception as e:
            return f"not a readable checkpoint ({type(e).__name__}): damaged or truncated, download it again"
        if path.suffix == ".safetensors":
            return (
                f"bytes differ, but the file is a readable safetensors checkpoint with {n} tensors; safetensors "
                f"bytes are deterministic (a header, then the raw tensor data), so different bytes mean "
                f"different tensor values, or equal tensors stored in another order, under other names or "
                f"with other header metadata (e.g. written by another tool or with another shard size); "
                f"compare tensors with 'llmkit verify --tensors {path} REFERENCE' to tell which"
            )
        return (
            f"bytes differ, but the file is a readable checkpoint with {n} tensors; .bin bytes depend on the "
            f"torch/transformers version and shard size that wrote them, so compare tensors with "
            f"'llmkit verify --tensors {path} REFERENCE' to tell a re-save from corruption"
        )
    return "content differs from the published file"


def compare_json(a: bytes, b: bytes) -> str | None:
    """None if equal as JSON, else a short description of the difference (keys that differ)."""
    try:
        oa, ob = json.loads(a.decode("utf-8-sig")), json.loads(b.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"not valid JSON ({e})"
    if oa == ob:
        return None
    if isinstance(oa, dict) and isinstance(ob, dict):
        keys = sorted(k for k in set(oa) | set(ob) if oa.get(k, _MISSING) != ob.get(k, _MISSING))
        return "keys differ: " + ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
    return "content differs"


def json_difference(a: bytes, b: bytes) -> tuple[str, str]:
    """(status, note) for two JSON files whose bytes differ: ``ok`` when only the formatting or the
    metadata keys (:data:`METADATA_KEYS`) differ, else ``mismatch`` with the keys that differ."""
    diff = compare_json(a, b)
    if diff is None:
        return "ok", "same JSON content; only the formatting differs"
    oa, ob = (None, None) if diff.startswith("not valid") else (json.loads(a), json.loads(b))
    if isinstance(oa, dict) and isinstance(ob, dict):
        strip = lambda o: {k: v for k, v in o.items() if k not in METADATA_KEYS}  # noqa: E731
        if strip(oa) == strip(ob):
            return "ok", f"only metadata differs ({diff[len('keys differ: ') :]})"
    return "mismatch", diff
