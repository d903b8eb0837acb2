"""``adapter_config.json`` of a peft adapter, read once and typed (torch-free).

The one parser of that file: :class:`~llmkit.io.sources.AdapterInfo` (what ``inspect`` shows) and
:class:`llmkit.lora.settings.LoraSettings` (what decides a merge) are both built from
:meth:`AdapterConfig.read`. A file that is not a JSON object, a field of a type peft does not accept
(``rank_pattern`` an array, ``target_modules`` a number, ...), ``r`` / ``lora_alpha`` that are not numbers
or a non-positive ``r`` are an :class:`~llmkit.errors.InputError` naming the file. Absent fields take
peft's ``LoraConfig`` defaults (``r=8``, ``lora_alpha=8``, ``peft_type=LORA``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import InputError
from llmkit.io.jsonfile import json_kind, read_json

ADAPTER_CONFIG = "adapter_config.json"

# Types peft accepts for the fields llmkit reads (else a plain error, not a crash later).
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "target_modules": (list, str), "modules_to_save": list, "rank_pattern": dict, "alpha_pattern": dict,
    "layers_to_transform": (int, list), "layers_pattern": (list, str), "exclude_modules": (list, str)}


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
                raise InputError(f"{key} is {json_kind(cfg[key])}; peft expects {expected}",
                                 path=path, hint="fix that field or download the adapter again")
        try:
            # Without "r" peft's LoraConfig uses its default r=8 (and lora_alpha=8).
            r = int(cfg.get("r", 8))
            alpha = float(cfg.get("lora_alpha", 8))
            rank_pattern = {str(k): int(v) for k, v in (cfg.get("rank_pattern") or {}).items()}
            alpha_pattern = {str(k): float(v) for k, v in (cfg.get("alpha_pattern") or {}).items()}
        except (TypeError, ValueError):
            raise InputError("r / lora_alpha (or rank_pattern / alpha_pattern values) are not numbers",
                             path=path, hint="fix them or download the adapter again") from None
        if r <= 0:
            raise InputError(f"r must be positive, found {r}", path=path)
        targets = cfg.get("target_modules")
        if isinstance(targets, list):
            targets = [str(t) for t in targets]
        base_model = cfg.get("base_model_name_or_path")
        return cls(
            path=path, peft_type=str(cfg.get("peft_type", "LORA")), r=r, r_given="r" in cfg, lora_alpha=alpha,
            target_modules=targets, modules_to_save=[str(m) for m in (cfg.get("modules_to_save") or [])],
            fan_in_fan_out=bool(cfg.get("fan_in_fan_out", False)), use_rslora=bool(cfg.get("use_rslora", False)),
            rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
            layers_to_transform=cfg.get("layers_to_transform"), layers_pattern=cfg.get("layers_pattern"),
            exclude_modules=cfg.get("exclude_modules"), lora_bias=bool(cfg.get("lora_bias", False)),
            base_model=str(base_model) if base_model is not None else None,
            init_lora_weights=cfg.get("init_lora_weights", True), use_dora=bool(cfg.get("use_dora")),
            target_parameters=bool(cfg.get("target_parameters")),
            trainable_token_indices=bool(cfg.get("trainable_token_indices")),
        )
