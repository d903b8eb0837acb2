"""What ``llmkit merge-lora`` reports: :class:`MergeResult` and, per adapter, :class:`AdapterReport`."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmkit.lora.adapters import Adapter
from llmkit.pipeline import PlanResult


@dataclass
class AdapterReport:
    path: str
    file: str
    r: int
    lora_alpha: float
    scaling: float
    use_rslora: bool
    fan_in_fan_out: bool  # as applied (decided by the base layer type, as peft does)
    lora_modules: int  # base tensors that receive a delta
    replaced: list[str]  # base tensors replaced by full tensors (modules_to_save)
    tokenizer_size: int | None
    vocab_size: int | None  # rows of the embedding after this adapter


@dataclass(kw_only=True)
class MergeResult(PlanResult):
    """Result of ``llmkit merge-lora``. Sizes in bytes. ``warnings``: the texts of the warning notices;
    ``files``: the output's weight files (planned, for a dry run); ``plan``: the dry-run report, for a dry
    run only (None after a run); the disk figures are the report's, for a run too."""

    base: str
    format: str
    dtype: str
    adapters: list[AdapterReport]
    vocab_before: int | None
    vocab_after: int | None
    mean_initialised_rows: dict[str, int]  # vocab tensor -> new rows no adapter supplied (set to the mean)
    tokenizer_from: str | None
    tensors: int
    total_bytes: int
    rounding: str
    warnings: list[str] = field(default_factory=list)
    free_disk_bytes: int = 0  # free space found in the output folder's filesystem
    needed_disk_bytes: int = 0  # output + copied files + margin; less free space is refused
    disk_margin_bytes: int = 0  # free space kept beyond the output (llmkit.units.space_margin)


def adapter_report(a: Adapter) -> AdapterReport:
    s = a.settings
    return AdapterReport(
        path=a.url or str(a.folder),
        file=a.file.name,
        r=s.r,
        lora_alpha=s.lora_alpha,
        scaling=s.scaling(""),
        use_rslora=s.use_rslora,
        fan_in_fan_out=any(m.transpose and not m.embedding for m in a.modules.values()),
        lora_modules=len(a.modules),
        replaced=sorted(a.replacements),
        tokenizer_size=a.tokenizer_size,
        vocab_size=a.vocab_size,
    )
