"""peft adapter folders: every layout peft has written, indexed against the base (SPEC.md section 3).

:func:`load_adapter` opens an adapter lazily (headers, mmap), sorts its tensors into LoRA layers
(``lora_A``/``lora_B``, ``lora_embedding_A/B``, ``lora_B.bias``) and full tensors (saved modules), and
resolves each to the base tensor it changes, checking shapes: an adapter for another model is refused
before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import InputError
from llmkit.io.core.regular import is_special
from llmkit.io.core.source import TensorSource, open_source
from llmkit.io.hf.adapter_config import ADAPTER_CONFIG
from llmkit.io.remote.url import remote_url
from llmkit.lora.layer_shapes import bias_target, check_pair, orientation
from llmkit.lora.settings import LoraSettings
from llmkit.lora.vocab import OUTPUT_HEADS

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")

_PEFT_PREFIXES = ("base_model.model.", "base_model.")
_LORA_LINEAR_RE = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.(?P<adapter>[^.]+))?\.(?P<param>weight|bias)$"
)
_LORA_EMBED_RE = re.compile(r"^(?P<module>.+)\.(?P<part>lora_embedding_A|lora_embedding_B)(?:\.(?P<adapter>[^.]+))?$")
_MODULES_TO_SAVE_RE = re.compile(r"\.modules_to_save(?:\.[^.]+)?\.")
_UNSUPPORTED_KEYS = {
    "lora_magnitude_vector": "a DoRA adapter (use_dora); llmkit merges plain LoRA only",
    "trainable_tokens_delta": "trainable-token deltas (trainable_token_indices), which llmkit does not merge",
    "lora_E": "an AdaLoRA adapter; llmkit merges plain LoRA only",
}


@dataclass
class LoraModule:
    """One LoRA layer of one adapter, resolved to the base tensor it changes."""

    module: str  # name as the adapter knows it (after the peft prefix), e.g. model.layers.0.self_attn.q_proj
    target: str  # base tensor it changes (the weight)
    a_key: str
    b_key: str
    bias_key: str | None  # lora_B.bias (lora_bias=True)
    bias_target: str | None
    embedding: bool
    scaling: float = 1.0
    transpose: bool = False  # Conv1D weight ([in, out]) or embedding: add (B @ A)^T


@dataclass
class Adapter:
    """A peft adapter folder, opened lazily, checked against the base."""

    folder: Path
    file: Path
    settings: LoraSettings
    source: TensorSource
    modules: dict[str, LoraModule] = field(default_factory=dict)  # base tensor name -> LoRA layer
    bias_modules: dict[str, LoraModule] = field(default_factory=dict)  # base bias name -> LoRA layer
    replacements: dict[str, str] = field(default_factory=dict)  # base tensor name -> adapter key
    tokenizer_size: int | None = None
    vocab_size: int | None = None  # rows of the vocabulary tensors once this adapter is applied
    ignored: list[str] = field(default_factory=list)  # LoRA layers peft would not load
    url: str | None = None  # a remote adapter's URL (``folder``: the private folder of its side files)

    def close(self) -> None:
        self.source.close()


def _adapter_file(folder: Path) -> Path:
    for name in ADAPTER_FILES:
        if (folder / name).is_file() or is_special(folder / name):  # a FIFO is refused when it is opened
            return folder / name
    found = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    raise InputError(
        "no adapter_model.safetensors or adapter_model.bin in the adapter folder",
        path=folder,
        hint=f"found {', '.join(found)}" if found else "download the adapter again",
    )


def _strip_peft_prefix(key: str) -> str:
    for p in _PEFT_PREFIXES:
        if key.startswith(p):
            return key[len(p) :]
    return key


def _name_candidates(name: str) -> Iterator[str]:
    """Where an adapter-side tensor name may live in the base: as is, without leading parts, with ``model.``."""
    yield name
    parts = name.split(".")
    for i in range(1, len(parts) - 1):
        yield ".".join(parts[i:])
    yield f"model.{name}"


class Resolver:
    """Map adapter-side names to base tensor names (any peft prefix, ``model.`` or not)."""

    def __init__(self, base: TensorSource):
        self.base = base
        self.keys = set(base.keys())

    def find(self, name: str) -> str | None:
        for c in _name_candidates(name):
            if c in self.keys:
                return c
        return None


def load_adapter(
    folder: Path,
    base: TensorSource,
    resolver: Resolver,
    model_type: str | None,
    vocab: dict[str, str],
    warnings: list[str],
) -> Adapter:
    """Open the adapter in ``folder`` (a file stands for its folder; a URL is read remotely) and index it
    against ``base``."""
    url = remote_url(folder)
    if url is not None:
        return _load_remote_adapter(url, base, resolver, model_type, vocab, warnings)
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise InputError("no such adapter folder", path=folder, hint="pass a local peft adapter folder")
    cfg_path = folder / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise InputError(
            "not a peft adapter folder: adapter_config.json is missing",
            path=folder,
            hint="pass the folder that holds adapter_config.json and adapter_model.*",
        )
    settings = LoraSettings.read(cfg_path)
    file = _adapter_file(folder)
    source = open_source(file)
    ad = Adapter(folder=folder, file=file, settings=settings, source=source)
    try:
        _index_adapter(ad, base, resolver, model_type, vocab, warnings)
    except BaseException:
        source.close()
        raise
    return ad


def _load_remote_adapter(
    url: str, base: TensorSource, resolver: Resolver, model_type: str | None, vocab: dict[str, str], warnings: list[str]
) -> Adapter:
    """An adapter at ``hf://``/``s3://``: its side files (adapter_config.json, a tokenizer) fetched into the
    source's private folder, its weights streamed (``llmkit.io.remote``)."""
    source = open_source(url)
    try:
        folder = source.folder
        if folder is None or not (folder / ADAPTER_CONFIG).is_file():
            raise InputError(
                "not a peft adapter: adapter_config.json is missing",
                path=url,
                hint="give the URL of the folder that holds adapter_config.json and adapter_model.*",
            )
        file = source.files[0].path if len(source.files) == 1 else Path(url)
        ad = Adapter(folder=folder, file=file, settings=LoraSettings.read(folder / ADAPTER_CONFIG), source=source)
        ad.url = url
        _index_adapter(ad, base, resolver, model_type, vocab, warnings)
    except BaseException:
        source.close()
        raise
    return ad


def _saved_modules(keys: list[str]) -> dict[str, str]:
    """Which full tensors of an adapter file end up in peft's merged model: adapter-side name -> adapter key.

    Every layout peft has written (SPEC.md section 3), as peft 0.21's ``set_peft_model_state_dict`` loads it
    and ``merge_and_unload`` keeps it (tests/test_lora_peft_layouts.py checks each against peft):

    - ``X.weight``: a ``modules_to_save`` module's trained copy (Chinese-LLaMA-Alpaca, peft 0.3-0.21) or an
      embedding layer saved because the vocabulary was resized. peft loads it and the merge keeps it: it wins.
    - ``X.base_layer.weight``: the saved base layer of an embedding LoRA targets; loaded, then the delta adds.
    - ``X.modules_to_save.weight`` + ``X.original_module.weight``: since peft 0.8, ``save_embedding_layers="auto"``
      saves a resized ``modules_to_save`` module as the whole wrapper, beside ``X.weight``. peft ignores the first
      (an unexpected key, equal to ``X.weight``) and loads the second into the untrained copy that
      ``merge_and_unload`` throws away: ``original_module`` never reaches the output.

    A ``modules_to_save`` copy (also ``.modules_to_save.<adapter>.``) is used only when the file has no
    ``X.weight`` (peft fails on such a file with a KeyError; llmkit reads it as the trained copy).
    """
    chosen: dict[str, tuple[bool, str]] = {}  # name -> (is a modules_to_save copy, key)
    for key in keys:
        name = _strip_peft_prefix(key)
        if ".original_module." in name:
            continue
        name, copies = _MODULES_TO_SAVE_RE.subn(".", name)
        name = name.replace(".base_layer.", ".")
        if name not in chosen or (chosen[name][0] and not copies):
            chosen[name] = (copies > 0, key)
    return {name: key for name, (_, key) in chosen.items()}


def _sort_keys(ad: Adapter) -> tuple[dict[str, dict[str, str]], list[str]]:
    """The adapter's LoRA layers (module -> {"A", "B", "bias", "embedding"}) and its full tensors' keys."""
    parts: dict[str, dict[str, str]] = {}
    adapter_names: set[str] = set()
    full: list[str] = []  # keys of full tensors (saved modules), sorted out by _saved_modules
    for key in ad.source.keys():
        name = _strip_peft_prefix(key)
        for marker, why in _UNSUPPORTED_KEYS.items():
            if f".{marker}" in name:
                raise InputError(
                    f"tensor {key!r} belongs to {why}", path=ad.file, hint="merge it with peft's merge_and_unload"
                )
        m = _LORA_LINEAR_RE.match(name)
        if m:
            entry = parts.setdefault(m.group("module"), {})
            what = m.group("part")[-1] if m.group("param") == "weight" else "bias"
            if what == "bias" and m.group("part") == "lora_A":
                raise InputError(f"unexpected LoRA tensor {key!r}", path=ad.file)
            entry[what] = key
        else:
            m = _LORA_EMBED_RE.match(name)
            if m:
                entry = parts.setdefault(m.group("module"), {})
                entry[m.group("part")[-1]] = key
                entry["embedding"] = "1"
        if m:
            if m.group("adapter"):
                adapter_names.add(m.group("adapter"))
            continue
        if ".lora_" in name:
            raise InputError(
                f"unrecognised LoRA tensor {key!r}",
                path=ad.file,
                hint="llmkit reads lora_A/lora_B and lora_embedding_A/B tensors",
            )
        full.append(key)
    if len(adapter_names) > 1:
        raise InputError(
            f"the adapter file holds several adapters ({', '.join(sorted(adapter_names))})",
            path=ad.file,
            hint="save each adapter into its own folder",
        )
    return parts, full


def _index_adapter(
    ad: Adapter,
    base: TensorSource,
    resolver: Resolver,
    model_type: str | None,
    vocab: dict[str, str],
    warnings: list[str],
) -> None:
    s = ad.settings
    parts, full = _sort_keys(ad)
    base_shapes = {n: base.info(n).shape for n in base.keys()}
    # Full tensors (modules_to_save, saved embedding layers) replace base tensors.
    for plain, key in _saved_modules(full).items():
        target = resolver.find(plain)
        if target is None:
            raise InputError(
                f"the adapter holds {key!r}, which the base model does not have",
                path=ad.file,
                hint="this adapter belongs to another model",
            )
        ad.replacements[target] = key
    for module, entry in parts.items():
        mod = _lora_module(ad, module, entry, resolver, base_shapes, model_type, vocab)
        if mod is not None:
            ad.modules[mod.target] = mod
            if mod.bias_target is not None:
                ad.bias_modules[mod.bias_target] = mod
    # peft decides fan_in_fan_out from the layer type and warns when the config disagrees.
    flips = {m.transpose for m in ad.modules.values() if not m.embedding}
    if flips and s.fan_in_fan_out not in flips:
        layer = "Conv1D" if True in flips else "Linear"
        warnings.append(
            f"{ad.settings.path}: fan_in_fan_out is {str(s.fan_in_fan_out).lower()} but the targeted "
            f"layers are {layer}; like peft, llmkit uses {str(not s.fan_in_fan_out).lower()}"
        )
    if ad.ignored:
        warnings.append(
            f"{ad.file}: {len(ad.ignored)} LoRA layer(s) are not in target_modules and are ignored, as "
            f"peft ignores them (e.g. {ad.ignored[0]})"
        )
    if not ad.modules and not ad.replacements:
        targets = s.target_modules if isinstance(s.target_modules, str) else ", ".join(s.target_modules or [])
        raise InputError(
            f"the adapter changes nothing in this base (target_modules: {targets or '-'})",
            path=ad.folder,
            hint="this adapter belongs to another model",
        )
    _check_targets_have_weights(ad, base, warnings)
    warnings += _settings_warnings(ad)


def _settings_warnings(ad: Adapter) -> list[str]:
    """What the merge cannot honour of the adapter's settings, and saved modules the file lacks."""
    s, warnings = ad.settings, []
    if isinstance(s.init_lora_weights, str) and s.init_lora_weights.lower().split("_")[0] in (
        "pissa",
        "olora",
        "corda",
        "loftq",
    ):
        warnings.append(
            f"{ad.settings.path}: init_lora_weights={s.init_lora_weights} changes the base during "
            "training; the merge is right only on the base the adapter was trained on"
        )
    if s.modules_to_save and not ad.replacements:
        warnings.append(
            f"{ad.file}: modules_to_save lists {', '.join(s.modules_to_save)} but the file holds no "
            "full tensors; the base tensors are kept"
        )
    return warnings


def _lora_module(
    ad: Adapter,
    module: str,
    entry: dict[str, str],
    resolver: Resolver,
    base_shapes: dict[str, tuple[int, ...]],
    model_type: str | None,
    vocab: dict[str, str],
) -> LoraModule | None:
    """One LoRA layer resolved against the base and shape-checked; None when peft would ignore it."""
    s = ad.settings
    if "A" not in entry or "B" not in entry:
        raise InputError(
            f"LoRA layer {module!r} lacks its {'A' if 'A' not in entry else 'B'} matrix",
            path=ad.file,
            hint="the adapter file is incomplete; download it again",
        )
    target = resolver.find(f"{module}.weight")
    if target is None:
        raise InputError(
            f"the adapter changes {module!r}, which the base model does not have",
            path=ad.file,
            hint="this adapter belongs to another model (compare base_model_name_or_path in adapter_config.json)",
        )
    if not s.targets(module, is_output_head=target.endswith(OUTPUT_HEADS)):
        ad.ignored.append(module)
        return None
    a_shape = ad.source.info(entry["A"]).shape
    b_shape = ad.source.info(entry["B"]).shape
    check_pair(s, module, a_shape, b_shape, ad.file)
    mod = LoraModule(
        module=module,
        target=target,
        a_key=entry["A"],
        b_key=entry["B"],
        bias_key=entry.get("bias"),
        bias_target=None,
        embedding="embedding" in entry,
        scaling=s.scaling(module),
    )
    mod.transpose = orientation(
        module,
        target,
        tuple(base_shapes[target]),
        a_shape,
        b_shape,
        embedding=mod.embedding,
        output_head=target in vocab,
        model_type=model_type,
        path=ad.file,
    )
    if mod.bias_key is not None:
        mod.bias_target = bias_target(module, target, base_shapes, ad.file)
    return mod


def _check_targets_have_weights(ad: Adapter, base: TensorSource, warnings: list[str]) -> None:
    """Base layers peft would wrap with LoRA but that have no weights in the file (peft leaves them unchanged)."""
    if not ad.modules:
        return
    # How the adapter names base tensors: learn it from one resolved layer.
    sample = next(iter(ad.modules.values()))
    base_module = sample.target[: -len(".weight")]
    a_prefix = sample.module[: len(sample.module) - len(base_module)] if sample.module.endswith(base_module) else ""
    b_prefix = base_module[: len(base_module) - len(sample.module)] if base_module.endswith(sample.module) else ""
    missing = []
    for name in base.keys():
        if not name.endswith(".weight") or len(base.info(name).shape) != 2 or name in ad.modules:
            continue
        module = name[: -len(".weight")]
        if b_prefix and not module.startswith(b_prefix):
            continue
        adapter_side = a_prefix + module[len(b_prefix) :]
        if ad.settings.targets(adapter_side, is_output_head=name.endswith(OUTPUT_HEADS)):
            missing.append(adapter_side)
    if missing:
        warnings.append(
            f"{ad.file}: {len(missing)} layer(s) matched by target_modules have no LoRA weights "
            f"(e.g. {missing[0]}); like peft, llmkit leaves them unchanged"
        )
