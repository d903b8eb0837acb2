"""What ``llmkit models`` lists: the known models and the built-in tables with their lines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from llmkit.pipeline import Result
from llmkit.registry.models import MODELS
from llmkit.registry.tables import builtin_tables


@dataclass
class TableListing:
    name: str
    algorithm: str
    source: str
    file: str
    files: list[dict[str, str]] = field(default_factory=list)  # {"path", "digest"} per line


@dataclass
class ModelsListing(Result):
    """``llmkit models``: every :class:`~llmkit.registry.models.ModelSpec` (as a dict) and every built-in table."""

    models: list[dict]
    tables: list[TableListing]


def list_models() -> ModelsListing:
    """The registry as data: the known models and the built-in tables with their lines."""
    tables = [
        TableListing(
            t.name, t.algorithm, t.source, str(t.path), [{"path": e.path, "digest": e.digest} for e in t.entries]
        )
        for t in builtin_tables().values()
    ]
    return ModelsListing(models=[asdict(m) for m in MODELS], tables=tables)
