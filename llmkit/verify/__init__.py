"""File checksums against published tables, and layout-independent per-tensor hashes.

- ``tables``: :func:`verify_files` (:class:`VerifyOptions`) checks folders/files against a table
  (``--table``) or the built-in tables picked by file names and sizes (:func:`plan_verify` +
  :func:`run_verify`); each file is ok / mismatch / missing / extra.
- ``mismatch``: why a file differs (:func:`classify_mismatch`: formatting-only JSON, re-saved
  checkpoint, truncation).
- ``published``: :func:`published_matches`, output or input files checked by name against the built-in
  tables (recover, decrypt); :func:`verify_file` for one file.
- ``checksum``: :func:`checksum` (:class:`ChecksumOptions`): md5sum-format tables, or per-tensor tables.
- ``tensors``: :func:`tensor_digest` hashes a tensor's raw little-endian C-order bytes; with its name,
  dtype and shape (:class:`TensorDigest`, one ``--tensors`` line) it identifies the tensor whatever
  file, shard or format holds it.
- ``compare``: :func:`compare_sources` / :func:`verify_tensors` (:class:`TensorVerifyOptions`) compare
  two models tensor by tensor, one pair in memory at a time.
- ``files``: the files PATH arguments name, parallel hashing (:func:`hash_files`), the report row.
"""

from llmkit.hashing import ALGORITHMS, BUFFER_BYTES, hash_file, new_hash
from llmkit.verify.checksum import (
    ChecksumOptions,
    ChecksumResult,
    FileDigest,
    TensorChecksums,
    checksum,
    checksum_files,
    escape_name,
    format_line,
    plan_checksum,
)
from llmkit.verify.files import (
    STATUSES,
    WEIGHT_SUFFIXES,
    FileCheck,
    default_jobs,
    display_path,
    hash_files,
    list_files,
    resolve_jobs,
)
from llmkit.verify.mismatch import (
    METADATA_KEYS,
    classify_json_mismatch,
    classify_mismatch,
    compare_json,
    json_difference,
)
from llmkit.verify.published import PublishedMatch, published_matches, verify_file
from llmkit.verify.tables import (
    VerifyOptions,
    VerifyPlan,
    VerifyReport,
    plan_verify,
    run_verify,
    verify_files,
    verify_paths,
)

# The per-tensor parts need torch: loaded on first use, so that file checksums (verify, checksum) start
# without it.
_LAZY = dict.fromkeys(
    (
        "TensorComparison",
        "TensorVerifyOptions",
        "TensorVerifyReport",
        "compare_aux_files",
        "compare_sources",
        "verify_tensors",
    ),
    "llmkit.verify.compare",
)
_LAZY.update(
    dict.fromkeys(
        (
            "TENSOR_TABLE_HEADER",
            "TensorDigest",
            "TensorTable",
            "is_tensor_table",
            "load_tensor_table",
            "parse_tensor_table",
            "tensor_digest",
            "tensor_table",
            "tensor_total_bytes",
        ),
        "llmkit.verify.tensors",
    )
)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALGORITHMS",
    "BUFFER_BYTES",
    "METADATA_KEYS",
    "STATUSES",
    "TENSOR_TABLE_HEADER",
    "WEIGHT_SUFFIXES",
    "ChecksumOptions",
    "ChecksumResult",
    "FileCheck",
    "FileDigest",
    "PublishedMatch",
    "TensorChecksums",
    "TensorComparison",
    "TensorDigest",
    "TensorTable",
    "TensorVerifyOptions",
    "TensorVerifyReport",
    "VerifyOptions",
    "VerifyPlan",
    "VerifyReport",
    "checksum",
    "checksum_files",
    "classify_json_mismatch",
    "classify_mismatch",
    "compare_aux_files",
    "compare_json",
    "compare_sources",
    "default_jobs",
    "display_path",
    "escape_name",
    "format_line",
    "hash_file",
    "hash_files",
    "is_tensor_table",
    "json_difference",
    "list_files",
    "load_tensor_table",
    "new_hash",
    "parse_tensor_table",
    "plan_checksum",
    "plan_verify",
    "published_matches",
    "resolve_jobs",
    "run_verify",
    "tensor_digest",
    "tensor_table",
    "tensor_total_bytes",
    "verify_file",
    "verify_files",
    "verify_paths",
    "verify_tensors",
]
