"""The weight formats a tensor job writes and its sink's options, the same for every job.

``safetensors``/``bin`` take ``shard_size``; ``gguf`` takes ``outtype`` and ``split_max_size`` (and ``-o`` is a
``.gguf`` file, or the folder of its splits). A GGUF-only option given with another format is refused, so no
flag is silently ignored.
"""

from __future__ import annotations

from typing import Any

from llmkit.errors import InputError

HF_FORMATS = ("safetensors", "bin")
WEIGHT_FORMATS = (*HF_FORMATS, "gguf")


def weight_sink_options(
    fmt: str, *, shard_size: int, outtype: str | None = None, split_max_size: int = 0, name: str | None = None
) -> dict[str, Any]:
    """The sink options of ``fmt``; ``outtype``/``split_max_size`` refused unless ``fmt`` is gguf."""
    if fmt == "gguf":
        from llmkit.convert.gguf import gguf_sink_options

        return gguf_sink_options(outtype or "f16", split_max_size, None, folder_name=name)
    if outtype is not None or split_max_size:
        flag = "--outtype" if outtype is not None else "--split-max-size"
        raise InputError(f"{flag} applies to --format gguf only", hint=f"add --format gguf, or drop {flag}")
    return {"shard_size": shard_size}


def job_sink_options(options: Any) -> dict[str, Any]:
    """:func:`weight_sink_options` from a job's options (``fmt``, ``shard_size``, ``outtype``,
    ``split_max_size``, ``output``: a GGUF's name is the output's stem)."""
    from pathlib import Path

    return weight_sink_options(
        options.fmt,
        shard_size=options.shard_size,
        outtype=options.outtype,
        split_max_size=options.split_max_size,
        name=Path(options.output).stem,
    )
