"""``adapter_config.json`` of a peft adapter, read once and typed (torch-free).

The one parser of that file: :class:`~llmkit.io.hf.adapter_config.AdapterInfo` (what ``inspect`` shows) and
:class:`llmkit.lora.settings.LoraSettings` (what decides a merge) are both built from
:meth:`AdapterConfig.read`. A file that is not a JSON object, a field of a type peft does not accept
(``rank_pattern`` an array, ``target_modules`` a number, ...) and a number no trained adapter has are an
:class:`~llmkit.errors.InputError` naming the file and the field: ``r`` (and ``rank_pattern`` values) an
integer from 1 to :data:`MAX_RANK`; ``lora_alpha`` (and ``alpha_pattern`` values) a finite number whose
scaling (``lora_alpha / r``, or ``/ sqrt(r)`` with ``use_rslora``) is at most :data:`MAX_SCALING` in size;
``lora_dropout`` a number from 0 to 1. Absent fields take peft's ``LoraConfig`` defaults (``r=8``,
``lora_alpha=8``, ``lora_dropout=0``, ``peft_type=LORA``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import InputError
from llmkit.io.core.jsonfile import json_kind, read_json

ADAPTER_CONFIG = "adapter_config.json"


# A rank above a layer's width adds nothing, and no LLaMA layer is 2**20 wide: a larger r is a damaged file.
MAX_RANK = 2**20


# The largest float16 number. A LoRA update is trained as lora_B(lora_A(x)) * scaling, often in float16; a
# larger scaling overflows it for any input, so no trained adapter has one (1e308 is a typo or damage).
MAX_SCALING = 65504.0


_EDITED = "the file is damaged or was edited by hand; fix that field or download the adapter again"


# Types peft accepts for the fields llmkit reads (else a plain error, not a crash later).
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "target_modules": (list, str),
    "modules_to_save": list,
    "rank_pattern": dict,
    "alpha_pattern": dict,
    "layers_to_transform": (int, list),
    "layers_pattern": (list, str),
    "exclude_modules": (list, str),
}


@dataclass(frozen=True)
class AdapterConfig:
    """The fields of ``adapter_config.json`` llmkit uses; ``path`` is the file."""

    path: Path
    peft_type: str  # as written (LORA, IA3, ...)
    r: int
    r_given: bool  # False: the file has no "r" and r is peft's default, 8
    lora_alpha: float
    target_modules: list[str] | str | None  # a list of names, or one regular expression
    modules_to_save: list[str]
    fan_in_fan_out: bool
    use_rslora: bool
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    layers_to_transform: list[int] | int | None
    layers_pattern: list[str] | str | None
    exclude_modules: list[str] | str | None
    lora_bias: bool
    base_model: str | None  # base_model_name_or_path
    init_lora_weights: object
    use_dora: bool
    target_parameters: bool  # the file lists target_parameters
    trainable_token_indices: bool  # the file lists trainable_token_indices

    @classmethod
    def read(cls, path: str | os.PathLike):
        """Parse ``path``; any problem is an :class:`InputError` naming it. Returns an instance of ``cls``."""
        path = Path(path)
        cfg = read_json(path, hint="download the adapter again")  # not a JSON object: an InputError naming it
        assert isinstance(cfg, dict)
        for key, kinds in _FIELD_TYPES.items():
            if cfg.get(key) is not None and not isinstance(cfg[key], kinds):
                expected = " or ".join(json_kind(k()) for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
                raise InputError(
                    f"{key} is {json_kind(cfg[key])}; peft expects {expected}",
                    path=path,
                    hint="fix that field or download the adapter again",
                )
        # Without "r" peft's LoraConfig uses its default r=8 (and lora_alpha=8).
        r = rank_value(cfg.get("r", 8), "r", path)
        alpha = alpha_value(cfg.get("lora_alpha", 8), "lora_alpha", path)
        check_scaling(alpha, r, bool(cfg.get("use_rslora", False)), "lora_alpha", path)
        rank_pattern = {
            str(k): rank_value(v, f"rank_pattern[{json.dumps(k)}]", path)
            for k, v in (cfg.get("rank_pattern") or {}).items()
        }
        alpha_pattern = {
            str(k): alpha_value(v, f"alpha_pattern[{json.dumps(k)}]", path)
            for k, v in (cfg.get("alpha_pattern") or {}).items()
        }
        dropout_value(cfg.get("lora_dropout", 0.0), path)
        targets = cfg.get("target_modules")
        if isinstance(targets, list):
            targets = [str(t) for t in targets]
        base_model = cfg.get("base_model_name_or_path")
        return cls(
            path=path,
            peft_type=str(cfg.get("peft_type", "LORA")),
            r=r,
            r_given="r" in cfg,
            lora_alpha=alpha,
            target_modules=targets,
            modules_to_save=[str(m) for m in (cfg.get("modules_to_save") or [])],
            fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)),
            use_rslora=bool(cfg.get("use_rslora", False)),
            rank_pattern=rank_pattern,
            alpha_pattern=alpha_pattern,
            layers_to_transform=cfg.get("layers_to_transform"),
            layers_pattern=cfg.get("layers_pattern"),
            exclude_modules=cfg.get("exclude_modules"),
            lora_bias=bool(cfg.get("lora_bias", False)),
            base_model=str(base_model) if base_model is not None else None,
            init_lora_weights=cfg.get("init_lora_weights", True),
            use_dora=bool(cfg.get("use_dora")),
            target_parameters=bool(cfg.get("target_parameters")),
            trainable_token_indices=bool(cfg.get("trainable_token_indices")),
        )


def _shown(value: object) -> str:
    """How a JSON value is quoted in a message: numbers as written (NaN, Infinity), other types by kind."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = json.dumps(value)
        return text if len(text) <= 24 else f"{text[:12]}...({len(text)} digits)"
    if isinstance(value, str):
        return f"{json_kind(value)} ({json.dumps(value)[:24]})"
    return json_kind(value)


def _number(value: object) -> float | None:
    """``value`` as a float (an integer too large for one is infinite); None when it is not a JSON number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def rank_value(value: object, field: str, path: Path) -> int:
    """A rank (``r``, a ``rank_pattern`` value): a JSON integer from 1 to MAX_RANK, as peft needs (it fails on
    8.0, "8" or 0 when it builds the layer)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RANK:
        raise InputError(
            f"{field} must be an integer from 1 to {MAX_RANK}, found {_shown(value)}", path=path, hint=_EDITED
        )
    return value


def alpha_value(value: object, field: str, path: Path) -> float:
    """``lora_alpha`` (an ``alpha_pattern`` value): a finite JSON number (peft would merge NaN or Infinity)."""
    number = _number(value)
    if number is None or not math.isfinite(number):
        kind = "number" if number is None else "finite number"
        raise InputError(f"{field} must be a {kind}, found {_shown(value)}", path=path, hint=_EDITED)
    return number


def check_scaling(alpha: float, r: int, use_rslora: bool, field: str, path: Path) -> float:
    """The scaling of a LoRA layer (peft: ``alpha / r``, ``alpha / sqrt(r)`` with rsLoRA), at most MAX_SCALING."""
    scaling = alpha / math.sqrt(r) if use_rslora else alpha / r
    if abs(scaling) > MAX_SCALING:
        raise InputError(
            f"{field} {alpha:g} with r {r} scales the update by {scaling:g}; no trained adapter "
            f"scales it by more than {MAX_SCALING:g} (the merged weights would overflow)",
            path=path,
            hint=_EDITED,
        )
    return scaling


def dropout_value(value: object, path: Path) -> float:
    """``lora_dropout``: a number from 0 to 1. It does not change a merge, but peft cannot load an adapter with
    a string or a value above 1, and NaN or a negative value is a damaged file."""
    number = _number(value)
    if number is None or not 0.0 <= number <= 1.0:
        raise InputError(f"lora_dropout must be a number from 0 to 1, found {_shown(value)}", path=path, hint=_EDITED)
    return number


@dataclass
class AdapterInfo:
    """What ``adapter_config.json`` says about a peft LoRA adapter (parsed by :class:`AdapterConfig`), as a source carries it."""

    r: int
    lora_alpha: float
    target_modules: list[str]
    modules_to_save: list[str]
    fan_in_fan_out: bool
    use_rslora: bool
    base_model: str | None
    peft_type: str

    @classmethod
    def read(cls, path: Path) -> AdapterInfo:
        cfg = AdapterConfig.read(path)
        targets = cfg.target_modules
        return cls(
            r=cfg.r,
            lora_alpha=cfg.lora_alpha,
            target_modules=sorted([targets] if isinstance(targets, str) else targets or []),
            modules_to_save=list(cfg.modules_to_save),
            fan_in_fan_out=cfg.fan_in_fan_out,
            use_rslora=cfg.use_rslora,
            base_model=cfg.base_model,
            peft_type=cfg.peft_type,
        )
