"""``to-gguf``: any LLaMA llmkit reads (a Hugging Face folder, a Meta folder, a tensor stream) -> one GGUF file.

A plan like to-meta's: every tensor of the source in its order, unchanged, into the ``gguf`` sink, which
stores each under llama.cpp's name and type (``llmkit.io.gguf``); config and tokenizer files go to the sink
for the header. The bytes equal ``convert_hf_to_gguf.py --outtype X`` on the same Hugging Face folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from llmkit.errors import InputError
from llmkit.io.core.files import AUX_FILES
from llmkit.io.core.source import STDIN, TensorSource, open_model
from llmkit.io.meta.as_hf import open_as_hf
from llmkit.io.remote.url import remote_url, shown
from llmkit.pipeline import AuxCopy, PlanReport, PlanResult, ProgressFactory, run_plan
from llmkit.units import parse_size


@dataclass(frozen=True)
class ToGGUFOptions:
    """``llmkit to-gguf``: ``outtype`` one of ``llmkit.io.gguf.types.OUTTYPES``; ``split_max_size`` bytes per
    file (0: one file); ``model_name``: ``general.name`` (default: what the converter finds)."""

    source: Path
    output: Path
    outtype: str = "f16"
    split_max_size: int = 0
    model_name: str | None = None
    force: bool = False
    dry_run: bool = False


@dataclass(kw_only=True)
class GGUFResult(PlanResult):
    """Result of ``to-gguf`` (docs/json.md): ``outtype``; ``tensor_types``: GGML type name -> tensor count;
    ``plan``: the report every tensor job shares."""

    plan: PlanReport
    command: str = "to-gguf"
    source: str = ""
    outtype: str = "f16"
    tensor_types: dict[str, int] = field(default_factory=dict)


def tensor_type_counts(sink: Any) -> dict[str, int]:
    """GGML type name -> how many tensors of the planned GGUF file have it."""
    import gguf

    counts: dict[str, int] = {}
    for t in sink.tensors.values():
        key = gguf.GGMLQuantizationType(t.ttype).name
        counts[key] = counts.get(key, 0) + 1
    return counts


def gguf_sink_options(
    outtype: str, split_max_size: int | str = 0, model_name: str | None = None, *, folder_name: str | None = None
) -> dict:
    """The ``gguf`` sink's options as every job passes them (``outtype`` checked here, before any work)."""
    from llmkit.io.gguf.types import parse_outtype

    size = parse_size(split_max_size) if isinstance(split_max_size, str) else split_max_size
    return {
        "outtype": parse_outtype(outtype),
        "split_max_size": size,
        "display_name": model_name,
        "model_name": folder_name,
    }


def _refuse(options: ToGGUFOptions):
    def refuse(src: TensorSource) -> InputError | None:
        if src.adapter is not None:
            return InputError(
                "this is a LoRA adapter, not a model; llama.cpp runs merged models",
                path=options.source,
                hint="merge it first: llmkit merge-lora --base BASE --lora ADAPTER -o OUT --format gguf",
            )
        if src.layout == "ckpt":
            return InputError(
                "a MindSpore .ckpt has no tokenizer or config for GGUF's header",
                path=options.source,
                hint="llmkit from-ckpt CKPT --tokenizer DIR -o OUT.gguf --format gguf",
            )
        return None

    return refuse


_HF_LAYOUTS = ("safetensors", "safetensors-sharded", "bin", "bin-sharded")


def converter_order(src: TensorSource) -> list[str] | None:
    """The order ``convert_hf_to_gguf.py`` reads a Hugging Face folder's tensors in, and so writes them: the
    weight files sorted by name, each file's tensors sorted by name (safetensors, as ``safetensors`` lists
    them) or as stored (a ``.bin``). None for another layout or a model not on disk (a Meta folder, a stream,
    a chain's planned model): the sink then orders them as the folder llmkit would write (``folder_order``)."""
    # a remote folder (hf://, s3://) is the folder the converter reads too (its files, listed the same way)
    on_disk = all(
        f.path.suffix in (".safetensors", ".bin") and (f.path.is_file() or remote_url(f.path) is not None)
        for f in src.files
    )
    if src.layout not in _HF_LAYOUTS or not on_disk or not src.files:  # a stream, a chain's planned model
        return None
    names = set(src.keys())
    order: list[str] = []
    for f in sorted(src.files, key=lambda f: f.path.name):
        stored = sorted(f.infos) if f.path.suffix == ".safetensors" else list(f.infos)
        order += [n for n in stored if n in names]
    return order if sorted(order) == sorted(names) else None


def to_gguf(options: ToGGUFOptions, *, progress: ProgressFactory | None = None) -> GGUFResult:
    """Convert a LLaMA to GGUF; the outtype, names and destination are checked before any tensor is read."""
    from llmkit.convert.meta import _cast_plan

    sink_options = gguf_sink_options(options.outtype, options.split_max_size, options.model_name)
    src = open_model(options.source, refuse=_refuse(options), view=open_as_hf)
    folder = src.folder
    try:
        # the name llama.cpp's converter reads general.name from: the model folder's (a planned one, in a chain)
        source = Path(options.source)
        named = source.parent if source.suffix in (".safetensors", ".bin", ".pth") else source
        remote = remote_url(options.source) is not None  # hf://owner/name@rev: the repo's name
        local_name = named.name.split("@")[0] if remote else named.resolve().name
        sink_options["model_name"] = Path(options.output).stem if str(source) == STDIN else local_name
        plan = _cast_plan(
            "to-gguf",
            src,
            options.output,
            None,
            "gguf",
            sink_options=sink_options,
            aux=[AuxCopy(folder, AUX_FILES)],
        )
        order = converter_order(src)
        if order is not None:  # the whole file as the converter writes it of this folder, tensor order included
            place = {n: i for i, n in enumerate(order)}
            plan.specs.sort(key=lambda s: place[s.name])
            plan.sink_options["order"] = order
    except BaseException:
        src.close()
        raise
    return run_plan(
        plan,
        options,
        lambda report, sink: GGUFResult(
            plan=report,
            source=shown(options.source),  # a URL as given, not as a Path folds it
            outtype=cast(Any, sink).outtype.name,
            tensor_types=tensor_type_counts(sink),
        ),
        progress,
    )
