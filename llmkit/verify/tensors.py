"""Per-tensor digests: a tensor's identity whatever file, shard or format holds it.

:func:`tensor_digest` hashes a tensor's raw little-endian C-order bytes; with its name, dtype and shape
(:class:`TensorDigest`, one ``llmkit checksum --tensors`` line) it identifies the tensor. A
:class:`TensorTable` is those lines for a whole model, written and read here.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmkit.errors import InputError
from llmkit.hashing import new_hash
from llmkit.io.core.dtypes import TORCH_TO_ST, dtype_name
from llmkit.io.core.layout import tensor_bytes
from llmkit.io.core.source import TensorSource, open_source
from llmkit.io.mindspore.reader import finish_reads
from llmkit.pipeline import Notice, Result

TENSOR_TABLE_HEADER = "# llmkit tensor checksums v1: <{algo} of the raw C-order bytes>  <name> <dtype> <shape>"
_TENSOR_LINE = re.compile(
    r"^(?P<hex>[0-9a-f]{32}|[0-9a-f]{64})  (?P<name>\S.*) (?P<dtype>[A-Z0-9_]+) "
    r"\[(?P<shape>[0-9,]*)\]$"
)


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code of a dtype (``F16``); torch's short name for one safetensors cannot hold."""
    return TORCH_TO_ST.get(dtype) or dtype_name(dtype)


def shape_text(shape: Iterable[int]) -> str:
    """``[4096,5120]``, ``[]`` for a scalar: the shape as the tables and reports write it."""
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def as_source(x: TensorSource | Path | str, ckpt_key=None) -> tuple[TensorSource, bool]:
    """(source, whether the caller opened it and must close it); ``ckpt_key`` opens an encrypted .ckpt."""
    if isinstance(x, TensorSource):
        return x, False
    return open_source(x, ckpt_key=ckpt_key), True


def tensor_digest(tensor: torch.Tensor, algorithm: str = "sha256") -> str:
    """Hex digest of the tensor's raw bytes (C order). dtype and shape are not part of the digest;
    the ``--tensors`` table carries them beside it."""
    h = new_hash(algorithm)
    h.update(tensor_bytes(tensor))
    return h.hexdigest()


@dataclass(frozen=True)
class TensorDigest:
    """A tensor's identity independent of file, shard and format."""

    name: str
    dtype: str  # safetensors code: F16, BF16, F32, ...; a GGUF quantized type (Q8_0, ...): its dequantized values
    shape: tuple[int, ...]
    digest: str

    def line(self) -> str:
        return f"{self.digest}  {self.name} {self.dtype} {shape_text(self.shape)}"


@dataclass
class TensorTable(Result):
    """The per-tensor digests of one model (``llmkit checksum --tensors``), in its stored order.
    ``quantized``: the tensors stored in a quantized type (name -> GGUF type), hashed as the float32
    values they dequantize to (their line's dtype is that type)."""

    algorithm: str
    source: str
    tensors: list[TensorDigest] = field(default_factory=list)
    quantized: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        head = [TENSOR_TABLE_HEADER.format(algo=self.algorithm), f"# source: {self.source}"]
        if self.quantized:
            head.append(f"# {_dequantized_note(self.quantized)}")
        return "\n".join(head + [t.line() for t in self.tensors]) + "\n"


def _dequantized_note(quantized: dict[str, str]) -> str:
    counts: dict[str, int] = {}
    for t in quantized.values():
        counts[t] = counts.get(t, 0) + 1
    types = ", ".join(f"{n} {t}" for t, n in counts.items())
    return (
        f"{len(quantized)} tensors stored quantized ({types}): each digest is of the float32 values "
        "gguf.quants.dequantize gives (rows in Hugging Face order), the line's dtype the stored type"
    )


def stored_code(src: TensorSource, name: str) -> str:
    """A tensor's dtype as tables and comparisons name it: its stored type when the source reads it as
    another (a GGUF's ``Q8_0``), else the code of the dtype it is read as."""
    return src.stored_type(name) or dtype_code(src.info(name).dtype)


def tensor_table(
    source: TensorSource | Path,
    algorithm: str = "sha256",
    *,
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
    ckpt_key=None,
) -> TensorTable:
    """Per-tensor digests of a model in its stored order; a ``.ckpt``'s CRC trailer is checked, and its
    notices say when nothing vouches for the values (AES-CBC, SM4-CBC).

    Tensors are read one at a time on the calling thread (sources are not thread-safe) and hashed on
    ``jobs`` threads, with at most ``2 * jobs`` tensors in flight: memory ~ that many tensors.
    """
    new_hash(algorithm)
    src, close = as_source(source, ckpt_key)
    try:
        names = src.keys()
        infos = {n: src.info(n) for n in names}
        lock = threading.Lock()

        def work(name: str, tensor: torch.Tensor) -> str:
            d = tensor_digest(tensor, algorithm)
            if progress is not None:
                with lock:
                    progress(infos[name].nbytes)
            return d

        digests: dict[str, str] = {}
        reads = src.read_order(names)  # a stream on stdin in its order; the table lists them in stored order
        if jobs <= 1:
            for n in reads:
                digests[n] = work(n, src.get(n))
        else:
            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="llmkit-thash") as pool:
                pending: list = []
                for n in reads:
                    pending.append((n, pool.submit(work, n, src.get(n))))
                    while len(pending) >= 2 * jobs:
                        m, f = pending.pop(0)
                        digests[m] = f.result()
                for m, f in pending:
                    digests[m] = f.result()
        src.read_to_end()
        notices = [Notice.warning(w) for w in finish_reads(src.files)]
        quantized = {n: t for n in names if (t := src.stored_type(n)) is not None}
        if quantized:
            notices.append(Notice.info(_dequantized_note(quantized)))
        return TensorTable(
            algorithm,
            str(src.path),
            [TensorDigest(n, stored_code(src, n), tuple(infos[n].shape), digests[n]) for n in names],
            notices=notices,
            quantized=quantized,
        )
    finally:
        if close:
            src.close()


def is_tensor_table(path: Path) -> bool:
    """True if ``path`` is a text file whose first checksum line is a ``--tensors`` line."""
    if not path.is_file() or path.stat().st_size > 64 * 1024 * 1024:
        return False
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(TENSOR_TABLE_HEADER[:26]):
                    return True
                if line.strip() and not line.startswith("#"):
                    return bool(_TENSOR_LINE.match(line.rstrip("\n")))
    except (UnicodeDecodeError, OSError):
        return False
    return False


def parse_tensor_table(text: str, *, path: Path | None = None) -> TensorTable:
    tensors: list[TensorDigest] = []
    source = str(path) if path else ""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            if line.startswith("# source: "):
                source = line[len("# source: ") :]
            continue
        m = _TENSOR_LINE.match(line)
        if not m:
            raise InputError(
                f"line {lineno} is not '<hex>  <name> <dtype> [<shape>]': {line[:80]!r}",
                path=path,
                hint="tensor tables are written by llmkit checksum --tensors",
            )
        shape = tuple(int(d) for d in m.group("shape").split(",") if d)
        tensors.append(TensorDigest(m.group("name"), m.group("dtype"), shape, m.group("hex")))
    if not tensors:
        raise InputError("no tensor lines found", path=path)
    algos = {len(t.digest) for t in tensors}
    if len(algos) != 1:
        raise InputError("the tensor table mixes md5 and sha256 digests", path=path)
    algorithm = "md5" if algos.pop() == 32 else "sha256"
    return TensorTable(algorithm, source, tensors)


def load_tensor_table(path: Path) -> TensorTable:
    return parse_tensor_table(path.read_text(encoding="utf-8"), path=path)


def tensor_total_bytes(path: Path, ckpt_key=None) -> int:
    """Bytes of tensor data a model at ``path`` holds (0 for a tensor table)."""
    if is_tensor_table(path):
        return 0
    with open_source(path, ckpt_key=ckpt_key) as src:
        return src.total_bytes
