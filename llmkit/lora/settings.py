"""What an adapter's ``adapter_config.json`` decides about a merge (SPEC.md section 3).

:class:`LoraSettings` is the parsed file (:class:`~llmkit.io.hf.adapter_config.AdapterConfig`, the one parser)
plus peft's rules that use it: the adapters llmkit can merge exactly, ``scaling`` per module after
``rank_pattern`` / ``alpha_pattern``, and which modules ``target_modules`` selects.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from llmkit.errors import InputError
from llmkit.io.hf.adapter_config import AdapterConfig, check_scaling


@dataclass(frozen=True)
class LoraSettings(AdapterConfig):
    """The parts of ``adapter_config.json`` that decide the merge (the file is authoritative)."""

    @classmethod
    def read(cls, path: str | os.PathLike) -> LoraSettings:
        """Parse ``path`` and refuse the adapters llmkit cannot merge exactly (DoRA, non-LoRA, ...)."""
        s = super().read(path)
        peft_type = s.peft_type.upper()
        if peft_type != "LORA":
            raise InputError(f"this is a {peft_type} adapter; llmkit merges LoRA adapters only", path=s.path)
        if s.use_dora:
            raise InputError(
                "this is a DoRA adapter (use_dora: true); llmkit merges plain LoRA only",
                path=s.path,
                hint="merge it with peft's merge_and_unload",
            )
        if s.target_parameters:
            raise InputError(
                "the adapter targets parameters (target_parameters), which llmkit does not merge",
                path=s.path,
                hint="merge it with peft's merge_and_unload",
            )
        if s.trainable_token_indices:
            raise InputError(
                "the adapter trains single token rows (trainable_token_indices), which llmkit does not merge",
                path=s.path,
                hint="merge it with peft's merge_and_unload",
            )
        return s

    @staticmethod
    def pattern_key(patterns: dict, module: str) -> str | None:
        """The key of ``patterns`` that matches ``module`` (peft.utils.other.get_pattern_key)."""
        for key in patterns:
            if re.match(rf"(.*\.)?({key})$", module):
                return key
        return None

    def rank_alpha(self, module: str) -> tuple[int, float]:
        """r and lora_alpha for one module, after ``rank_pattern``/``alpha_pattern``."""
        rk = self.pattern_key(self.rank_pattern, module)
        ak = self.pattern_key(self.alpha_pattern, module)
        r = self.rank_pattern[rk] if rk is not None else self.r
        alpha = self.alpha_pattern[ak] if ak is not None else self.lora_alpha
        return r, alpha

    def scaling(self, module: str) -> float:
        """peft's scaling of ``module``; one beyond MAX_SCALING is an InputError naming the pattern that set it."""
        r, alpha = self.rank_alpha(module)
        ak = self.pattern_key(self.alpha_pattern, module)
        field = "lora_alpha" if ak is None else f"alpha_pattern[{json.dumps(ak)}]"
        return check_scaling(alpha, r, self.use_rslora, field, self.path)

    def targets(self, module: str, *, is_output_head: bool = False) -> bool:
        """Whether peft would put a LoRA layer on ``module`` (peft's ``check_target_module_exists``)."""
        ex = self.exclude_modules
        if ex:
            if isinstance(ex, str):
                if re.fullmatch(ex, module):
                    return False
            elif module in ex or any(module.endswith(f".{e}") for e in ex):
                return False
        if any(re.match(rf"(^|.*\.){m}($|\..*)", module) for m in self.modules_to_save):
            return False
        t = self.target_modules
        if t is None:
            return False
        if isinstance(t, str):
            if t.lower() == "all-linear":
                return not is_output_head
            return re.fullmatch(t, module) is not None
        if module in t:
            return True
        found = any(module.endswith(f".{k}") for k in t)
        idx = self.layers_to_transform
        if found and idx is not None and (idx != [] if isinstance(idx, list) else True):
            return self._layer_selected(module, idx)
        return found

    def _layer_selected(self, module: str, idx: list[int] | int) -> bool:
        """``layers_to_transform`` / ``layers_pattern``: the layer index in ``module`` is selected."""
        pattern = self.layers_pattern
        match = None
        if not pattern:
            match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
        else:
            for p in [pattern] if isinstance(pattern, str) else pattern:
                match = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", module)
                if match:
                    break
        if match is None:
            return False
        layer = int(match.group("idx"))
        return layer == idx if isinstance(idx, int) else layer in idx
