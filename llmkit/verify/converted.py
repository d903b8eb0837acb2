"""A tensor that a GGUF file stores in another type than the model it came from, judged exactly.

A GGUF holds a model *converted*: 2-D weights as the ``--outtype`` (F16, BF16, Q8_0, ...), norms as F32. Such
a tensor cannot be bit-identical to its source, and a tolerance would say nothing precise. Instead the other
model's tensor is converted the way the file's type is made (``gguf.quants.quantize`` after a float32 cast,
as ``convert_hf_to_gguf.py`` does) and read back as the GGUF side reads its own (dequantized for a quantized
type), and the two are compared bit for bit:

- equal: ``converted`` (name -> the GGUF type): the GGUF tensor is exactly the other one converted;
- not equal: a difference, with the largest absolute difference (quantized with an importance matrix, by
  another quantizer, or from another model);
- ``gguf.quants`` cannot make the type (the K-quants, IQ types: only ``llama-quantize`` does): ``unchecked``,
  with the relative RMS difference for information; not a match, not a mismatch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from llmkit.io.core.source import TensorSource
    from llmkit.verify.compare import TensorComparison


def same_bytes(ta: torch.Tensor, tb: torch.Tensor) -> bool:
    a = ta.detach().contiguous().reshape(-1).view(torch.uint8)
    b = tb.detach().contiguous().reshape(-1).view(torch.uint8)
    return bool(torch.equal(a, b))


def converting_side(sa: TensorSource, sb: TensorSource) -> int | None:
    """0 or 1: the one side whose files store converted values (a GGUF) against a model that does not."""
    if sa.stores_converted == sb.stores_converted:
        return None
    return 0 if sa.stores_converted else 1


def _relative_rms(got: torch.Tensor, want: torch.Tensor) -> float:
    diff = torch.linalg.vector_norm(got.double() - want.double())
    scale = torch.linalg.vector_norm(want.double())
    return float(diff / scale) if scale > 0 else float(diff)


def judge_converted(
    result: TensorComparison, name: str, sides: tuple[TensorSource, TensorSource], conv: int, codes: tuple[str, str]
) -> None:
    """Count one tensor stored converted on side ``conv`` (``codes``: each side's type) against the other
    side's, converted the same way (see the module's docstring)."""
    g, o = sides[conv], sides[1 - conv]
    other, stored = "AB"[1 - conv], codes[conv]
    result.compared += 1
    values = o.get(name)
    try:
        ref = g.as_stored(name, values)
    except NotImplementedError:
        rel = _relative_rms(g.get(name), values)
        result.unchecked[name] = (
            f"{stored}: gguf.quants cannot quantize to {stored}, so {other}'s values cannot be converted the "
            f"same way; relative RMS difference {rel:.3g}"
        )
        return
    got = g.get(name)
    if ref is not None and same_bytes(ref, got):
        result.converted[name] = stored
        return
    worst = float((got.double() - values.double()).abs().max()) if got.numel() else 0.0
    result.differing.append(name)
    result.reasons[name] = (
        f"values differ from {other}'s {codes[1 - conv]} converted to {stored} by gguf.quants "
        f"(largest difference from {other}: {worst:.3g})"
    )
