"""The checks of a Meta folder that every reader runs (inspect, from-meta, a Meta ``--base``, checksum
and verify of a Meta folder), from headers only: ``params.json``'s types and values against the tensors,
the shard set (a missing ``consolidated.NN.pth`` found from a gap in the numbers or from the shapes: a
model-parallel shard holds ``dim / shards`` columns of ``tok_embeddings``), and the shard order where
the shapes tell it (an uneven ``output`` split: the last shard holds the remainder).

:func:`published_order` is the content check of the order: when the shapes are those of a model whose
``consolidated.NN.pth`` digests are published (``llmkit/checksums/*.sha256`` with a ``describes: meta-pth``
line), the shards are hashed and a swapped pair is refused by name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.errors import InputError

if TYPE_CHECKING:
    from llmkit.io.core.spec import TensorInfo


# params.json keys of Meta's and Chinese-LLaMA-Alpaca's files, by the type each must have.
_INT_KEYS = ("dim", "n_heads", "n_layers", "n_kv_heads", "multiple_of", "max_seq_len")


_FLOAT_KEYS = ("norm_eps", "rope_theta", "ffn_dim_multiplier")


_SHARD = re.compile(r"^consolidated\.(\d+)\.pth$")


_LAYER = re.compile(r"^layers\.(\d+)\.")


_FIX_PARAMS = "the file is damaged or edited by hand; use the params.json that came with these weights"


def shard_name(index: int) -> str:
    return f"consolidated.{index:02d}.pth"


def check_params_types(params: object, path: Path) -> dict:
    """``params.json`` must be an object whose sizes are positive integers and whose rates are numbers
    (``"dim": "4096"`` is refused: a string where a number belongs); ``vocab_size`` may be -1."""
    if not isinstance(params, dict):
        raise InputError("params.json is not a JSON object", path=path, hint=_FIX_PARAMS)
    for key in _INT_KEYS:
        value = params.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise InputError(
                f"params.json: {key} must be a positive integer, found {value!r}", path=path, hint=_FIX_PARAMS
            )
    vocab = params.get("vocab_size")
    if vocab is not None and (isinstance(vocab, bool) or not isinstance(vocab, int) or (vocab <= 0 and vocab != -1)):
        raise InputError(
            f"params.json: vocab_size must be a positive integer or -1, found {vocab!r}", path=path, hint=_FIX_PARAMS
        )
    for key in _FLOAT_KEYS:
        value = params.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise InputError(
                f"params.json: {key} must be a positive number, found {value!r}", path=path, hint=_FIX_PARAMS
            )
    return params


def check_shard_names(paths: list[Path], folder: Path) -> None:
    """The shards are ``consolidated.00.pth`` .. ``consolidated.{N-1}.pth`` with no gap."""
    numbers = sorted(int(m.group(1)) for p in paths if (m := _SHARD.match(p.name)))
    missing = [shard_name(i) for i in range(max(numbers, default=-1) + 1) if i not in numbers]
    if missing:
        raise InputError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing: the folder has "
            f"{', '.join(p.name for p in paths)}",
            path=folder / missing[0],
            hint="download every consolidated.NN.pth of the model into this folder",
        )


def expected_shards(first: dict[str, TensorInfo], dim: int | None) -> int | None:
    """How many shards the first shard's shapes say the model has: ``dim / tok_embeddings columns``
    (the full ``dim`` from the replicated ``norm.weight``, else params.json). None: nothing tells."""
    embed = first.get("tok_embeddings.weight")
    norm = first.get("norm.weight")
    full = norm.shape[0] if norm is not None and len(norm.shape) == 1 else dim
    if embed is None or len(embed.shape) != 2 or not full or embed.shape[1] == 0 or full % embed.shape[1]:
        return None
    return full // embed.shape[1]


def check_shard_count(paths: list[Path], first: dict[str, TensorInfo], folder: Path, dim: int | None) -> None:
    """Refuse a shard set smaller or larger than its shapes say, naming the first missing file."""
    want = expected_shards(first, dim)
    if want is None or want == len(paths):
        return
    if want > len(paths):
        missing = [shard_name(i) for i in range(len(paths), want)]
        raise InputError(
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing: each shard holds "
            f"1/{want} of the model (tok_embeddings has {first['tok_embeddings.weight'].shape[1]} of "
            f"its {first['tok_embeddings.weight'].shape[1] * want} columns), and the folder has "
            f"{len(paths)} shard(s)",
            path=folder / missing[0],
            hint="download every consolidated.NN.pth of the model into this folder",
        )
    raise InputError(
        f"{len(paths)} shards, but their shapes say the model has {want}: "
        f"{', '.join(p.name for p in paths[want:])} belong(s) to another model",
        path=paths[want],
        hint="keep only the consolidated.NN.pth files of one model in the folder",
    )


def uneven_split_order(paths: list[Path], infos: list[dict[str, TensorInfo]]) -> tuple[bool, str | None]:
    """(settled, warning) from an ``output.weight`` that does not split evenly (Chinese-LLaMA's 49953
    rows over 2 shards): Chinese-LLaMA-Alpaca's merge script (and llmkit) put the remainder in the last
    shard, so that pattern settles the order; a larger piece elsewhere means swapped names, or a writer
    that splits the other way (``torch.chunk``): a warning, since the shapes alone cannot tell which."""
    rows = [i["output.weight"].shape[0] for i in infos if "output.weight" in i]
    if len(rows) != len(paths) or len(set(rows)) == 1:
        return False, None
    total, n = sum(rows), len(rows)
    expected = [total // n] * n
    expected[-1] += total % n
    if rows == expected:
        return True, None
    big = max(range(n), key=lambda k: rows[k])
    return False, (
        f"{paths[big].name} holds the larger piece of output.weight ({rows[big]} of {total} rows), which "
        f"Chinese-LLaMA-Alpaca's merge script puts in {shard_name(n - 1)}: the shard files' names may "
        "be swapped (or another tool split the model)"
    )


def check_params_against_tensors(params: dict, joined: dict[str, TensorInfo], path: Path) -> None:
    """dim, n_layers, vocab_size (when not -1) and n_heads of ``params.json`` against the joined tensors."""
    embed = joined.get("tok_embeddings.weight")
    if embed is None or len(embed.shape) != 2:
        return
    vocab, dim = embed.shape
    layers = 1 + max((int(m.group(1)) for n in joined if (m := _LAYER.match(n))), default=-1)
    want = {"dim": dim, "n_layers": layers}
    if isinstance(params.get("vocab_size"), int) and params["vocab_size"] > 0:
        want["vocab_size"] = vocab
    for key, actual in want.items():
        stated = params.get(key)
        if stated is not None and stated != actual:
            raise InputError(
                f"params.json says {key}={stated} but the tensors have {actual}",
                path=path,
                hint="params.json and the consolidated.NN.pth files come from different models",
            )
    heads = params.get("n_heads")
    if heads is not None and (dim % heads or (dim // heads) % 2):
        raise InputError(
            f"params.json says n_heads={heads}, which does not divide dim {dim} into even head sizes",
            path=path,
            hint="use the params.json of these weights",
        )
    wq = joined.get("layers.0.attention.wq.weight")
    if heads is not None and wq is not None and wq.shape[0] % heads:
        raise InputError(
            f"params.json says n_heads={heads}, but attention.wq has {wq.shape[0]} rows",
            path=path,
            hint="use the params.json of these weights",
        )


def shape_facts(joined: dict[str, TensorInfo], shards: int) -> dict[str, int] | None:
    """``dim``, ``vocab``, ``layers``, ``shards`` of a Meta folder (None without an embedding)."""
    embed = joined.get("tok_embeddings.weight")
    if embed is None or len(embed.shape) != 2:
        return None
    layers = 1 + max((int(m.group(1)) for n in joined if (m := _LAYER.match(n))), default=-1)
    return {"dim": embed.shape[1], "vocab": embed.shape[0], "layers": layers, "shards": shards}


def published_tables_for(facts: dict[str, int] | None) -> list:
    """The built-in tables of Meta folders with exactly these shapes (e.g. LLaMA-13B original and the
    Chinese merges of the same size and vocabulary)."""
    if facts is None:
        return []
    from llmkit.registry import described_tables

    return [t for t, f in described_tables("meta-pth") if all(f.get(k) == v for k, v in facts.items())]


def order_unverified(shards: int, tables: list) -> str:
    """The warning for a multi-shard folder whose order nothing checked."""
    if tables:
        return (
            f"the {shards} shards are not the published files of {', '.join(t.name for t in tables)}, so their "
            "order cannot be verified: a swapped consolidated.NN.pth gives a different model without an error"
        )
    return (
        f"the order of the {shards} shards cannot be verified (no published hashes for a model of this size): "
        "a swapped consolidated.NN.pth gives a different model without an error"
    )


def published_order(paths: list[Path], facts: dict[str, int] | None) -> str | None:
    """Hash the shards when their shapes are those of a published model: refuse swapped names
    (:class:`InputError` naming both files); return None when the files are the published ones in
    order, else the warning that the order is unverified."""
    tables = published_tables_for(facts)
    if not tables:
        return order_unverified(len(paths), [])
    from llmkit.verify.files import hash_files

    digests = hash_files(paths, "sha256", jobs=min(4, len(paths)))
    for t in tables:
        by_digest = {e.digest: e.rel for e in t.entries}
        named = [by_digest.get(digests[p]) for p in paths]
        if all(n == p.name for n, p in zip(named, paths, strict=True)):
            return None
        swapped = [(p, n) for p, n in zip(paths, named, strict=True) if n is not None and n != p.name]
        if swapped:
            p, n = swapped[0]
            raise InputError(
                f"{p.name} is the published {n} of {t.name} (sha256): the shard files' names are "
                "swapped, which would give a different model",
                path=p,
                hint=f"rename the files back (this one to {n}); llmkit verify {p.parent} lists them all",
            )
    return order_unverified(len(paths), tables)
