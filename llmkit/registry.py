"""The models llmkit knows, as data: hub repos, files, published checksum tables, what each needs.

Checksum tables are the files in the package's ``llmkit/checksums/`` folder (``md5sum`` format, one per
table published in a model card, SPEC.md section 6), shipped as package data so that every install form
(a clone, ``pip install -e``, a wheel, ``pip install --target``) has them beside the code. A table's name is
its file name without the algorithm suffix: ``techgpt-7b.enc.md5`` is table ``techgpt-7b.enc`` (md5).
``$LLMKIT_CHECKSUMS`` (a folder, for tests and local tables) replaces the folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from llmkit.errors import InputError
from llmkit.pipeline import Result

ALGORITHMS: dict[str, int] = {"md5": 32, "sha256": 64}  # name -> hex digits
TABLE_SUFFIXES: dict[str, str] = {".md5": "md5", ".sha256": "sha256"}

GB = 10**9
MB = 10**6
HUB = "https://huggingface.co"
KNOWLM = "https://github.com/zjunlp/KnowLM"  # ZhiXi's card: how its LLaMA-13B base is made


# ---------------------------------------------------------------- checksum tables


@dataclass(frozen=True)
class TableEntry:
    """One line of a table: the expected digest of the file at ``path`` (as written in the table)."""

    path: str
    digest: str

    @property
    def rel(self) -> str:
        """The path without a leading ``./`` (TechGPT's card writes ``./config.json``)."""
        p = self.path
        while p.startswith("./"):
            p = p[2:]
        return p

    @property
    def basename(self) -> str:
        return self.rel.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ChecksumTable:
    """A parsed ``md5sum``-format table."""

    name: str
    algorithm: str
    entries: tuple[TableEntry, ...]
    path: Path | None = None
    source: str = ""  # the header comment: where the values come from
    builtin: bool = False
    header: tuple[str, ...] = ()  # the header comment's lines

    def describes(self) -> tuple[str, dict[str, int]] | None:
        """What the table's files are, from a ``# describes: KIND key=N ...`` header line (the shipped
        sha256 tables: ``meta-pth dim= vocab= layers= shards=`` for a Meta folder, ``tokenizer vocab=``)."""
        for line in self.header:
            if line.startswith("describes:"):
                kind, *pairs = line[len("describes:") :].split()
                facts = dict(p.split("=", 1) for p in pairs if "=" in p)
                return kind, {k: int(v) for k, v in facts.items() if v.isdigit()}
        return None

    def lookup(self, rel: str) -> TableEntry | None:
        for e in self.entries:
            if e.rel == rel:
                return e
        return None


_BSD_LINE = re.compile(r"^(MD5|SHA256) ?\((?P<path>.+)\) ?= ?(?P<hex>[0-9a-fA-F]+)$")


def _unescape(path: str) -> str:
    # GNU md5sum escapes "\\" and "\n" in names and marks such lines with a leading backslash.
    out, i = [], 0
    while i < len(path):
        c = path[i]
        if c == "\\" and i + 1 < len(path):
            nxt = path[i + 1]
            out.append({"\\": "\\", "n": "\n", "r": "\r"}.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_table(
    text: str, *, name: str, algorithm: str | None = None, path: Path | None = None, builtin: bool = False
) -> ChecksumTable:
    """Parse ``md5sum``/``sha256sum`` output: ``<hex>  <path>`` or ``<hex> *<path>`` lines.

    Also accepts BSD tags (``MD5 (path) = hex``). ``#`` lines and blank lines are comments; the leading
    comment block becomes :attr:`ChecksumTable.source`. The algorithm comes from ``algorithm``, else
    from the digest length (32 hex = md5, 64 = sha256). Raises :class:`InputError` naming the bad line.
    """
    entries: list[TableEntry] = []
    header: list[str] = []
    in_header = True
    where = path if path is not None else name
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line.lstrip().startswith("#"):
            if in_header:
                header.append(line.lstrip()[1:].strip())
            continue
        in_header = False
        escaped = line.startswith("\\")
        body = line[1:] if escaped else line
        m = _BSD_LINE.match(body)
        if m:
            digest, fname = m.group("hex"), m.group("path")
        else:
            parts = body.split(" ", 1)
            if len(parts) != 2 or not parts[1] or parts[1][0] not in " *":
                raise InputError(
                    f"line {lineno} is not '<hex>  <file>': {line[:80]!r}",
                    path=where,
                    hint="checksum tables use md5sum format: the hex digest, two spaces, the path",
                )
            digest, fname = parts[0], parts[1][1:]
        if escaped:
            fname = _unescape(fname)
        digest = digest.lower()
        if not re.fullmatch(r"[0-9a-f]+", digest) or len(digest) not in ALGORITHMS.values():
            raise InputError(
                f"line {lineno}: {digest[:70]!r} is not an md5 or sha256 hex digest",
                path=where,
                hint="expected 32 (md5) or 64 (sha256) hex digits",
            )
        entries.append(TableEntry(fname, digest))
    if not entries:
        raise InputError("no checksum lines found", path=where, hint="expected '<hex>  <file>' lines")
    lengths = {len(e.digest) for e in entries}
    if len(lengths) > 1:
        raise InputError(
            "the table mixes digest lengths (md5 and sha256)", path=where, hint="keep one algorithm per table"
        )
    length = lengths.pop()
    found = next(a for a, n in ALGORITHMS.items() if n == length)
    if algorithm is not None and algorithm != found:
        raise InputError(f"the table holds {found} digests, not {algorithm}", path=where, hint=f"use --algo {found}")
    return ChecksumTable(
        name=name,
        algorithm=found,
        entries=tuple(entries),
        path=path,
        source=" ".join(h for h in header if not h.startswith("describes:")),
        builtin=builtin,
        header=tuple(header),
    )


def table_name(path: Path) -> str:
    """``techgpt-7b.enc.md5`` -> ``techgpt-7b.enc``."""
    return path.name[: -len(path.suffix)] if path.suffix in TABLE_SUFFIXES else path.name


def load_table(path: Path, *, builtin: bool = False) -> ChecksumTable:
    """Read a table file (any name; the algorithm follows from its digests)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("not a text checksum table", path=path) from None
    return parse_table(text, name=table_name(path), path=path, builtin=builtin)


def checksums_dir() -> Path:
    """The folder holding the built-in tables: ``$LLMKIT_CHECKSUMS``, else ``llmkit/checksums``."""
    env = os.environ.get("LLMKIT_CHECKSUMS")
    if env:
        return Path(env)
    folder = Path(__file__).resolve().parent / "checksums"
    if folder.is_dir() and any(p.suffix in TABLE_SUFFIXES for p in folder.iterdir()):
        return folder
    raise InputError(
        "the built-in checksum tables are not installed",
        path=folder,
        hint="reinstall llmkit, or set LLMKIT_CHECKSUMS to a folder of *.md5 / *.sha256 tables",
    )


@lru_cache(maxsize=4)
def _tables_in(folder: str) -> dict[str, ChecksumTable]:
    out: dict[str, ChecksumTable] = {}
    for p in sorted(Path(folder).iterdir()):
        if p.suffix in TABLE_SUFFIXES and p.is_file():
            t = load_table(p, builtin=True)
            out[t.name] = t
    return out


def builtin_tables() -> dict[str, ChecksumTable]:
    """Every built-in table by name (parsed once per process)."""
    return _tables_in(str(checksums_dir()))


def get_table(name_or_file: str | Path) -> ChecksumTable:
    """A built-in table by name (``zhixi-13b``), or a table file by path."""
    tables = builtin_tables()
    key = str(name_or_file)
    if key in tables:
        return tables[key]
    p = Path(name_or_file)
    if p.is_file():
        return load_table(p)
    if key.endswith(tuple(TABLE_SUFFIXES)) and table_name(p) in tables and not os.path.lexists(p):
        return tables[table_name(p)]
    if p.is_dir():
        raise InputError(
            "is a folder, not a checksum table file",
            path=p,
            hint="pass the md5sum-format table file (or a built-in table name) as --table",
        )
    if os.path.islink(p):
        from llmkit.io.core.destination import broken_link

        raise InputError(
            f"the table path {broken_link(p) or 'is a broken symlink'}",
            path=p,
            hint="fix the link or pass the table file itself",
        )
    raise InputError(
        f"no built-in table named {key!r} and no such file",
        path=None,
        hint=f"built-in tables: {', '.join(tables)} (llmkit models lists them)",
    )


def find_expected(name: str, algorithm: str = "md5") -> list[tuple[str, str]]:
    """(table name, expected hex digest) for every built-in table listing a file named ``name``.

    ``name`` is compared with the last component of each table path, so ``pytorch_model.bin`` finds
    TechGPT's ``./pytorch_model.bin``. A path may be passed; only its basename is used.
    """
    base = Path(name).name
    return [
        (t.name, e.digest)
        for t in builtin_tables().values()
        if t.algorithm == algorithm
        for e in t.entries
        if e.basename == base
    ]


def described_tables(kind: str) -> list[tuple[ChecksumTable, dict[str, int]]]:
    """The built-in tables whose header says they describe ``kind`` (``meta-pth``: a Meta folder of the
    given ``dim``/``vocab``/``layers``/``shards``; ``tokenizer``: a ``tokenizer.model`` of ``vocab``
    tokens), with those facts. Chinese-LLaMA-Alpaca's SHA256.md gives them (llmkit/checksums/*.sha256)."""
    out = []
    for t in builtin_tables().values():
        d = t.describes()
        if d is not None and d[0] == kind:
            out.append((t, d[1]))
    return out


# ---------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """A model llmkit knows. Sizes and facts come from its model card: ``card`` is that page (the hub page of
    ``repo_id``, filled in when not given; for a model without a repo, the page that documents it).

    ``tables`` maps a stage (``download``, ``decrypted``, ``recovered``, ``recovered-fp16``, ``key``)
    to a built-in checksum table name. ``needs`` names what the model needs to become usable (the
    LLaMA-7B key file for XOR decryption, a base model for a diff or a LoRA). ``None`` means unknown
    or not applicable; no value here is guessed.
    """

    name: str
    family: str
    kind: str  # full | encrypted | diff | lora | meta-original
    repo_id: str | None
    files: tuple[str, ...]
    tables: dict[str, str] = field(default_factory=dict)
    needs: str | None = None
    dtype: str | None = None
    vocab_size: int | None = None
    approx_bytes: int | None = None  # the card's published download size
    card: str = ""
    notes: str = ""

    def __post_init__(self) -> None:
        if not self.card and self.repo_id:
            object.__setattr__(self, "card", f"{HUB}/{self.repo_id}")


_TECHGPT_ENC = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_TECHGPT_FILES = (
    "config.json",
    "generation_config.json",
    "pytorch_model.bin",
    "special_tokens_map.json",
    "tokenizer_config.json",
    "tokenizer.model",
)


def _shards(n: int, ext: str = "bin") -> tuple[str, ...]:
    return tuple(f"pytorch_model-{i:05d}-of-{n:05d}.{ext}" for i in range(1, n + 1))


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="techgpt-7b",
        family="TechGPT-1.0",
        kind="encrypted",
        repo_id="neukg/TechGPT-7B",
        files=tuple(f"{f}.{_TECHGPT_ENC}.enc" for f in _TECHGPT_FILES),
        tables={"download": "techgpt-7b.enc", "decrypted": "techgpt-7b"},
        needs="llama-7b-meta (XOR key: 7B/consolidated.00.pth)",
        dtype="float16",
        approx_bytes=13 * GB,
        notes="decrypt with `llmkit decrypt`; the .enc name's hex is sha256 of the empty string, not a checksum",
    ),
    ModelSpec(
        name="techgpt-2.0-alpaca",
        family="TechGPT-2.0",
        kind="full",
        repo_id="neukg/TechGPT-2.0-alpaca-hf",
        files=(),
        dtype="float16",
        approx_bytes=13 * GB,
        notes="no published checksums; the card converts it to a MindSpore .ckpt",
    ),
    ModelSpec(
        name="techgpt-2.0-atom",
        family="TechGPT-2.0",
        kind="full",
        repo_id="neukg/TechGPT-2.0-atom-hf",
        files=(),
        dtype="float16",
        approx_bytes=13 * GB,
        notes="no published checksums; the card converts it to a MindSpore .ckpt",
    ),
    ModelSpec(
        name="zhixi-13b-diff",
        family="ZhiXi / KnowLM",
        kind="diff",
        repo_id="zjunlp/zhixi-13b-diff",
        files=_shards(6),
        tables={"download": "zhixi-13b-diff", "recovered": "zhixi-13b"},
        needs="llama-13b-hf (LLaMA-13B converted to Hugging Face, fp16)",
        dtype="float32",
        vocab_size=32000,
        approx_bytes=48 * GB,
        notes="recover with `llmkit recover`; fp32 sum check 94052.2891",
    ),
    ModelSpec(
        name="zhixi-13b-diff-fp16",
        family="ZhiXi / KnowLM",
        kind="diff",
        repo_id="zjunlp/zhixi-13b-diff-fp16",
        files=_shards(3),
        tables={"download": "zhixi-13b-diff-fp16", "recovered": "zhixi-13b-fp16"},
        needs="llama-13b-hf (LLaMA-13B converted to Hugging Face, fp16)",
        dtype="float16",
        vocab_size=32000,
        approx_bytes=24 * GB,
        notes="recover with `llmkit recover --dtype fp16`",
    ),
    ModelSpec(
        name="zhixi-13b-lora",
        family="ZhiXi / KnowLM",
        kind="lora",
        repo_id="zjunlp/zhixi-13b-lora",
        files=("adapter_model.bin", "adapter_config.json"),
        tables={"download": "zhixi-13b-lora"},
        needs="zhixi-13b (the recovered base)",
        vocab_size=32000,
        approx_bytes=251 * MB,
        notes="merge with `llmkit merge-lora`; tokenizer from the base",
    ),
    ModelSpec(
        name="cutegpt-13b-base",
        family="CuteGPT",
        kind="full",
        repo_id="XuYipei/kw-cutegpt-13b-base",
        files=(),
        notes="no published checksums; LLaMA with an extended Chinese vocabulary",
    ),
    ModelSpec(
        name="cutegpt-13b-ift",
        family="CuteGPT",
        kind="full",
        repo_id="XuYipei/kw-cutegpt-13b-ift",
        files=(),
        notes="no published checksums",
    ),
    ModelSpec(
        name="cutegpt-13b-ift-lora",
        family="CuteGPT",
        kind="lora",
        repo_id="Abbey4799/kw-cutegpt-13b-ift-lora",
        files=(),
        needs="cutegpt-13b-base",
        notes="r=8, alpha=16, q_proj/v_proj; no published checksums",
    ),
    ModelSpec(
        name="chinese-llama-lora-7b",
        family="Chinese-LLaMA-Alpaca",
        kind="lora",
        repo_id="ziqingyang/chinese-llama-lora-7b",
        files=(),
        tables={"download": "chinese-llama-lora-7b"},
        needs="llama-7b (original LLaMA-7B)",
        vocab_size=49953,
        approx_bytes=770 * MB,
        notes="card gives only an abbreviated SHA256 of the zip: 39b86b......fe0e60",
    ),
    ModelSpec(
        name="chinese-llama-lora-13b",
        family="Chinese-LLaMA-Alpaca",
        kind="lora",
        repo_id="ziqingyang/chinese-llama-lora-13b",
        files=(),
        tables={"download": "chinese-llama-lora-13b"},
        needs="llama-13b (original LLaMA-13B)",
        vocab_size=49953,
        approx_bytes=1 * GB,
        notes="card gives only an abbreviated SHA256 of the zip: 3d6dee......e5199b",
    ),
    ModelSpec(
        name="chinese-alpaca-lora-7b",
        family="Chinese-LLaMA-Alpaca",
        kind="lora",
        repo_id="ziqingyang/chinese-alpaca-lora-7b",
        files=(),
        tables={"download": "chinese-alpaca-lora-7b"},
        needs="llama-7b (original LLaMA-7B)",
        vocab_size=49954,
        approx_bytes=790 * MB,
        notes="card gives only an abbreviated SHA256 of the zip: 9bb5b6......ce2d87",
    ),
    ModelSpec(
        name="chinese-alpaca-lora-13b",
        family="Chinese-LLaMA-Alpaca",
        kind="lora",
        repo_id="ziqingyang/chinese-alpaca-lora-13b",
        files=(),
        tables={"download": "chinese-alpaca-lora-13b"},
        needs="llama-13b (original LLaMA-13B)",
        vocab_size=49954,
        approx_bytes=1_100 * MB,
        notes="card gives only an abbreviated SHA256 of the zip: 45c92e......682d91",
    ),
    ModelSpec(
        name="llama-7b-meta",
        family="LLaMA-1 (Meta)",
        kind="meta-original",
        repo_id=None,
        files=("consolidated.00.pth", "params.json"),
        tables={"key": "llama-7b-meta", "original": "llama-7b-original"},
        dtype="float16",
        vocab_size=32000,
        approx_bytes=13_476_939_516,
        card=f"{HUB}/neukg/TechGPT-7B",
        notes="the XOR key of TechGPT-1.0; consolidated.00.pth is 13,476,939,516 bytes",
    ),
    ModelSpec(
        name="llama-13b-meta",
        family="LLaMA-1 (Meta)",
        kind="meta-original",
        repo_id=None,
        files=("consolidated.00.pth", "consolidated.01.pth", "params.json"),
        tables={"original": "llama-13b-original"},
        dtype="float16",
        vocab_size=32000,
        card=KNOWLM,
        notes="two model-parallel shards in Meta's original layout (llmkit inspect reads it)",
    ),
    ModelSpec(
        name="llama-13b-hf",
        family="LLaMA-1 (Meta)",
        kind="full",
        repo_id=None,
        files=(),
        tables={"hf": "llama-13b-hf"},
        needs="llama-13b-meta (converted to Hugging Face)",
        dtype="float16",
        vocab_size=32000,
        card=KNOWLM,
        notes="the base ZhiXi's diff expects; Chinese-LLaMA-Alpaca publishes the sha256 of its HF conversion "
        "(table llama-13b-hf; keep fp16 when converting)",
    ),
)

# Download sizes of the tables' files as the cards state them (the recovered bases have the diff's dtype
# and shape, so the same size). Used only to tell apart tables whose file names match.
TABLE_APPROX_BYTES: dict[str, int] = {
    "techgpt-7b.enc": 13 * GB,
    "techgpt-7b": 13 * GB,
    "zhixi-13b-diff": 48 * GB,
    "zhixi-13b": 48 * GB,
    "zhixi-13b-diff-fp16": 24 * GB,
    "zhixi-13b-fp16": 24 * GB,
    "zhixi-13b-lora": 251 * MB,
    "llama-7b-meta": 13_476_939_516,
}

# Exact sizes known for single files (SPEC.md section 1).
KNOWN_SIZES: dict[tuple[str, str], int] = {
    ("llama-7b-meta", "consolidated.00.pth"): 13_476_939_516,
}


def get_model(name: str) -> ModelSpec:
    """A model by registry name or hub repo id (case-insensitive)."""
    low = name.lower()
    for m in MODELS:
        if m.name == low or (m.repo_id and m.repo_id.lower() == low):
            return m
    raise InputError(f"unknown model {name!r}", hint=f"known: {', '.join(m.name for m in MODELS)}")


def model_for_path(path: str | os.PathLike) -> ModelSpec | None:
    """The model whose download folder ``path`` is named like (``techgpt-2.0-atom``, or a repo's own name such
    as ``TechGPT-2.0-atom-hf``), else None."""
    name = Path(path).name.lower()
    return next((m for m in MODELS if name == m.name or (m.repo_id and name == m.repo_id.split("/")[1].lower())), None)


def close_model_names(name: str, n: int = 3) -> list[str]:
    """The known model names closest to a mistyped or partial ``name`` (``zhixi-13b`` -> ``zhixi-13b-diff``, ...)."""
    from difflib import SequenceMatcher

    low = name.lower()
    scored = [
        (SequenceMatcher(None, low, m.name).ratio() + (0.2 if m.name.startswith(low) else 0.0), m.name) for m in MODELS
    ]
    return [m for score, m in sorted(scored, key=lambda t: (-t[0], t[1])) if score >= 0.6][:n]


def table_for(model: str, stage: str) -> ChecksumTable | None:
    """The built-in table for ``model`` at ``stage`` (``download``, ``decrypted``, ...), or None."""
    spec = get_model(model)
    name = spec.tables.get(stage)
    return builtin_tables()[name] if name else None


def models_using_table(table: str) -> list[tuple[str, str]]:
    """(model name, stage) pairs that refer to ``table``."""
    return [(m.name, stage) for m in MODELS for stage, t in m.tables.items() if t == table]


# ---------------------------------------------------------------- llmkit models


@dataclass
class TableListing:
    name: str
    algorithm: str
    source: str
    file: str
    files: list[dict[str, str]] = field(default_factory=list)  # {"path", "digest"} per line


@dataclass
class ModelsListing(Result):
    """``llmkit models``: every :class:`ModelSpec` (as a dict) and every built-in table."""

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
