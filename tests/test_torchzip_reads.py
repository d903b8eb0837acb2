"""Large tensors of a torch zip file are read into fresh tensors at their place in the file (not faulted in
through the mapping); what the file holds is what ``torch.load`` gives."""

from __future__ import annotations

from pathlib import Path

import torch

from llmkit.io.hf.torchzip import _PAGES, TorchFile


def test_large_tensors_are_read_not_mapped(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    big = torch.randn(700, 1024, generator=g).half()  # 1.4 MB
    wide = torch.randn(64, 9000, generator=g)
    state = {"big": big, "small": torch.randn(10, generator=g), "strided": wide.t(), "bf16": big.bfloat16()}
    path = tmp_path / "w.bin"
    torch.save(state, path)
    f = TorchFile(path)
    try:
        want = torch.load(path, weights_only=True)
        for name in state:
            got = f.get(name)
            assert got.dtype == want[name].dtype and torch.equal(got, want[name]), name
        ranges = _PAGES._file_ranges(path)
        inside = [any(lo <= f.get(n).data_ptr() < hi for lo, hi, _ in ranges) for n in ("big", "bf16", "small")]
        assert inside == [False, False, True]  # read into fresh memory; a small one stays the mapped tensor
        assert not f.get("strided").is_contiguous()  # not one run of bytes in the file: the mapped view
    finally:
        f.close()
