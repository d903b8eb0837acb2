"""The models llmkit knows and their published checksum tables, as data.

- :mod:`~llmkit.registry.tables`: ``md5sum``-format tables (parsing, the built-in tables in
  ``llmkit/checksums/``, lookups by file name).
- :mod:`~llmkit.registry.models`: the models (hub repos, files, tables per stage, what each needs).
- :mod:`~llmkit.registry.listing`: what ``llmkit models`` lists.

Callers import from here (``from llmkit.registry import find_expected``); tests replace these names on this
package (``monkeypatch.setattr(registry, "find_expected", ...)``), so library code looks them up here at
call time.
"""

from llmkit.registry.listing import ModelsListing, TableListing, list_models
from llmkit.registry.models import (
    KNOWN_SIZES,
    MODELS,
    TABLE_APPROX_BYTES,
    ModelSpec,
    close_model_names,
    get_model,
    model_for_path,
    table_for,
)
from llmkit.registry.tables import (
    ChecksumTable,
    TableEntry,
    builtin_tables,
    checksums_dir,
    described_tables,
    find_expected,
    get_table,
    load_table,
    parse_table,
)

__all__ = [
    "KNOWN_SIZES",
    "MODELS",
    "TABLE_APPROX_BYTES",
    "ChecksumTable",
    "ModelSpec",
    "ModelsListing",
    "TableEntry",
    "TableListing",
    "builtin_tables",
    "checksums_dir",
    "close_model_names",
    "described_tables",
    "find_expected",
    "get_model",
    "get_table",
    "list_models",
    "load_table",
    "model_for_path",
    "parse_table",
    "table_for",
]
