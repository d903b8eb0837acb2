"""Write the golden MindSpore checkpoints of tests/test_ckpt_format.py with the real ``mindspore`` wheel.

    .venv/bin/python tests/data/ckpt/make_golden.py     # mindspore 2.10.0 made the committed files

The tensors are given by formulas (``GOLDEN`` in the test file repeats them), so the files are
MindSpore's bytes for known values: llmkit's reader must return these values and llmkit's writer
must reproduce these bytes. The encrypted ones (``enc-<mode>.ckpt``, key :data:`KEY`) hold the same
tensors; their IVs are random, so llmkit reproduces their bytes given the IVs read from them.
"""

from pathlib import Path

import mindspore as ms
import numpy as np

HERE = Path(__file__).parent
KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")  # a 16-byte key: AES-128 and SM4


def tensors() -> list[dict]:
    return [
        {"name": "w_fp32", "data": ms.Tensor(np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5)},
        {"name": "b_fp16", "data": ms.Tensor(np.array([1, 2, 3, 4, 5], dtype=np.float16) / 8)},
        {"name": "c_bf16", "data": ms.Tensor(np.array([[1.0, 2.0, 3.0], [-1.5, 0.5, 0.25]], np.float32), ms.bfloat16)},
        {"name": "step", "data": ms.Tensor(np.array(7, dtype=np.int64))},
        {"name": "mask", "data": ms.Tensor(np.array([True, False, True]))},
        {"name": "empty", "data": ms.Tensor(np.zeros((0, 3), dtype=np.float32))},  # MindSpore leaves it out
    ]


if __name__ == "__main__":
    ms.save_checkpoint(tensors(), str(HERE / "golden.ckpt"))
    ms.save_checkpoint(tensors(), str(HERE / "golden_crc.ckpt"), crc_check=True)
    for mode in ("AES-GCM", "AES-CBC", "SM4-CBC"):
        ms.save_checkpoint(tensors(), str(HERE / f"enc-{mode}.ckpt"), enc_key=KEY, enc_mode=mode)
