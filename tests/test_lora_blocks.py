"""The blocked merge (``apply_lora``) gives peft's bits: the formula written here, not llmkit's own path."""

from __future__ import annotations

import pytest
import torch

from llmkit.lora import arithmetic
from llmkit.lora.adapters import LoraModule
from llmkit.lora.arithmetic import DeltaBuffer, apply_lora


class _Source:
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def _case(out_f: int, in_f: int, r: int, seed: int) -> tuple[torch.Tensor, _Source, LoraModule]:
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(out_f, in_f, generator=g) * 0.02).half()
    a = (torch.randn(r, in_f, generator=g) * 0.05).half()
    b = (torch.randn(out_f, r, generator=g) * 0.05).half()
    mod = LoraModule("m", "m.weight", "m.lora_A.weight", "m.lora_B.weight", None, None, False, scaling=2.0)
    return weight, _Source({mod.a_key: a, mod.b_key: b}), mod


def _peft(weight: torch.Tensor, src: _Source, mod: LoraModule, dtype: torch.dtype) -> torch.Tensor:
    """peft 0.21 on the CPU: B @ A in fp32 times scaling, added to the fp32 weight, one rounding."""
    delta = src.get(mod.b_key).float() @ src.get(mod.a_key).float() * mod.scaling
    return (weight.float() + delta).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_blocks_give_the_formulas_bits(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    monkeypatch.setattr(arithmetic, "BLOCK_ELEMENTS", 3 * 1000 + 17)  # 3 rows a block, the last one short
    buffer = DeltaBuffer()
    for out_f, in_f, r, seed in [(301, 1000, 8, 0), (64, 1000, 4, 1), (7, 333, 16, 2)]:  # big, then smaller
        weight, src, mod = _case(out_f, in_f, r, seed)
        before = weight.clone()
        got = apply_lora(weight, src, mod, dtype, buffer)
        want = _peft(weight, src, mod, dtype)
        assert got.dtype == dtype and got.shape == weight.shape
        assert torch.equal(got.view(-1).view(torch.uint8), want.view(-1).view(torch.uint8))
        assert torch.equal(weight, before)  # the input (maybe a file mapping) is never written


def test_llama_shape_in_default_blocks() -> None:
    weight, src, mod = _case(11008, 4096, 8, 3)
    got = apply_lora(weight, src, mod, torch.float16, DeltaBuffer())
    assert torch.equal(got.view(torch.int16), _peft(weight, src, mod, torch.float16).view(torch.int16))


def test_the_buffer_is_reused_and_never_returned() -> None:
    buffer = DeltaBuffer()
    weight, src, mod = _case(40, 50, 4, 4)
    first = apply_lora(weight, src, mod, torch.float32, buffer)
    held = buffer.take((40, 50)).data_ptr()
    second = apply_lora(weight, src, mod, torch.float32, buffer)
    assert buffer.take((10, 10)).data_ptr() == held  # smaller products reuse the same memory
    assert first.data_ptr() != held and second.data_ptr() != held  # the output is never the buffer
    assert torch.equal(first, second)
