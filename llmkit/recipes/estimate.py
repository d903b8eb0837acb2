"""What a recipe run needs before it starts: the bytes each step writes and the peak memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmkit.recipes.book import Recipe, Step
from llmkit.recipes.jobs import build_options, call
from llmkit.recipes.planning import deps, input_paths
from llmkit.recipes.remote import RemotePrints, urls_in


def estimate(
    steps: list[Step], resolved: dict[str, dict[str, Any]], to_run: set[str], remote: RemotePrints | None = None
) -> dict[str, int | None]:
    """Bytes each step writes: for a download the hub's listing (a dry run of it, which also checks the repo
    and endpoint before anything starts), the size of its input for the other jobs (a streamed input: its
    listing, which checks the URL before anything starts)."""
    est: dict[str, int | None] = {}
    listings = remote or RemotePrints()
    for s in steps:
        args = resolved[s.id]
        streamed = [listings.size(u) for u in urls_in(input_paths(s.job, args))] if s.id in to_run else []
        if s.job == "download":
            est[s.id] = _download_size(args) if s.id in to_run else 0
        elif s.job == "from-meta":
            est[s.id] = _meta_bytes(Path(args["source"]))
        elif s.job == "chain":  # the final output and each kept one: about the size of the largest input
            sizes = [est.get(d) for d in deps(s)] + [_meta_bytes(Path(p)) for p in args["inputs"] if _is_meta(p)]
            sizes += streamed
            largest = None if None in sizes else max((n or 0 for n in sizes), default=0)
            est[s.id] = None if largest is None else largest * (1 + len(args["keep"]))
        elif s.job == "verify":
            est[s.id] = 0
        else:
            sources = [est.get(d) for d in deps(s)] + streamed
            known = [n for n in sources if n is not None]
            est[s.id] = sources[0] if len(sources) == 1 else (max(known, default=0) if known == sources else None)
    return est


def _is_meta(path: str) -> bool:
    p = Path(path)
    return p.is_dir() and any(p.glob("consolidated.*.pth"))


def _meta_bytes(folder: Path) -> int | None:
    """The bytes of a Meta folder's shards (what a model made from it holds, in the same dtype)."""
    return sum(p.stat().st_size for p in folder.glob("consolidated.*.pth")) if folder.is_dir() else None


def _download_size(args: dict[str, Any]) -> int | None:
    """Bytes the download would fetch (files already there and verified count as 0)."""
    planned = call("download", build_options("download", {**args, "dry_run": True}))
    return sum(f.size for f in planned.files if f.status != "skipped")


def memory_estimate(recipe: Recipe, steps: list[Step]) -> int:
    """Copies of the largest tensor (an fp32 embedding of the recipe's size) alive at once, and the process:
    three for one job, two more for each further stage of the longest chain (each stage's working set)."""
    hidden = 5120 if "13b" in recipe.name else 4096
    stages = max((len(s.args["stages"]) for s in steps if s.job == "chain"), default=1)
    return (3 + 2 * (stages - 1)) * 32000 * hidden * 4 + 512 * 2**20
