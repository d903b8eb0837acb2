"""The real MindSpore (in a subprocess, as tests/test_ckpt_mindspore.py runs it) checks the CRC trailer
that ``to-ckpt --crc --enc-key`` encrypts with the records: ``load_checkpoint(dec_key=, crc_check=True)``
decrypts, finds the trailer at the end of the plaintext, and accepts the file or refuses a damaged one."""

from __future__ import annotations

import pytest
import torch
from test_ckpt_mindspore import save_ordered

KEY_HEX = "00112233445566778899aabbccddeeff"

CHECK = """
    from safetensors.torch import load_file
    key, mode = bytes.fromhex(sys.argv[3]), sys.argv[4]
    src = load_file(sys.argv[1])
    loaded = ms.load_checkpoint(sys.argv[2], dec_key=key, dec_mode=mode, crc_check=True)
    assert list(loaded) == list(json.load(open(sys.argv[1] + ".order.json")))
    for k, t in src.items():
        assert np.array_equal(loaded[k].asnumpy(), t.numpy()), k
    try:
        ms.load_checkpoint(sys.argv[5], dec_key=key, dec_mode=mode, crc_check=True)
        print("damaged file loaded")
    except ValueError as e:
        print("damaged file refused:", "crc" in str(e).lower())
"""


@pytest.mark.parametrize("mode", ["AES-CBC", "SM4-CBC", "AES-GCM"])
def test_mindspore_checks_the_crc_trailer_of_an_encrypted_checkpoint(
    tmp_path,
    run_cli,
    mindspore_run,
    monkeypatch,
    mode,
):
    monkeypatch.setenv("LLMKIT_MS_KEY", KEY_HEX)
    (tmp_path / "src").mkdir()
    src = tmp_path / "src" / "t.safetensors"
    tensors = {
        "half": torch.arange(300, dtype=torch.float16) / 3,
        "step": torch.tensor(3, dtype=torch.int64),
        "w": torch.arange(4096, dtype=torch.float32).reshape(64, 64) / 7,
    }  # in to-ckpt's (sorted) order
    save_ordered(tensors, src)
    ours = tmp_path / "ours.ckpt"
    r = run_cli(
        "to-ckpt",
        src,
        "-o",
        ours,
        "--names",
        "hf",
        "--enc-key",
        "env:LLMKIT_MS_KEY",
        "--enc-mode",
        mode,
        "--crc",
        "--json",
    )
    assert r.exit_code == 0 and r.json()["crc"] is True and r.json()["encryption"] == mode, r.stderr
    data = bytearray(ours.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the data of "w" (CBC: garbles one cipher block, no error)
    (tmp_path / "damaged.ckpt").write_bytes(bytes(data))
    out = mindspore_run(CHECK, src, ours, KEY_HEX, mode, tmp_path / "damaged.ckpt")
    assert "damaged file refused:" in out, out
    if mode != "AES-GCM":  # GCM refuses on its tag before the CRC is looked at
        assert "damaged file refused: True" in out, out
