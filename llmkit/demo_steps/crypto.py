"""Demo step: XOR-encrypt the tiny model as TechGPT and BELLE publish weights, decrypt it, check it.

The references are independent of llmkit: the encrypted bytes are compared with the plaintext
XORed (Python integers) with the key's prefix, which is what SPEC.md 1's key stream is for files
shorter than both the key and 10 MiB; the decrypted files are compared byte for byte and by md5 and
sha256 computed here with hashlib.
"""

from __future__ import annotations

import hashlib
import random

from llmkit.demo import DemoContext, demo_step
from llmkit.errors import CheckFailed, InputError

KEY_BYTES = 3 * 2**20 + 12_345  # a few MB, not a multiple of 10 MiB


def _xor_prefix(data: bytes, key: bytes) -> bytes:
    x = int.from_bytes(data, "little") ^ int.from_bytes(key[: len(data)], "little")
    return x.to_bytes(len(data), "little")


@demo_step(50, "encrypt -> decrypt (TechGPT, BELLE)")
def _encrypt_decrypt(ctx: DemoContext) -> str:
    from llmkit.crypto import DecryptOptions, EncryptOptions, decrypt, encrypt

    folder = ctx.workdir / "crypto"
    key_bytes = random.Random(7).randbytes(KEY_BYTES)
    key = folder / "generated-key.bin"
    folder.mkdir(parents=True, exist_ok=True)
    key.write_bytes(key_bytes)
    originals = {p.name: p.read_bytes() for p in sorted(ctx.base.iterdir()) if p.is_file()}
    if any(len(b) >= KEY_BYTES for b in originals.values()):
        raise CheckFailed("a tiny model file is longer than the demo key; the prefix reference does not apply")

    for fmt in ("techgpt", "belle"):
        enc_dir, dec_dir = folder / f"{fmt}-enc", folder / f"{fmt}-dec"
        encrypt(
            EncryptOptions(inputs=(ctx.base,), key=key, output=enc_dir, format=fmt, key_check=False, force=ctx.force)
        )
        for name, plain in originals.items():
            sha = hashlib.sha256(plain)
            label = sha.hexdigest() if fmt == "belle" else hashlib.sha256(b"").hexdigest()
            enc = enc_dir / f"{name}.{label}.enc"
            if not enc.is_file():
                raise CheckFailed(f"{fmt}: {enc.name} was not written")
            expected = (sha.digest() if fmt == "belle" else b"") + _xor_prefix(plain, key_bytes)
            if enc.read_bytes() != expected:
                raise CheckFailed(f"{fmt}: {enc.name} differs from plaintext XOR key")
        # the tiny model's files share TechGPT-1.0's names (config.json ...), not its published md5s
        result = decrypt(
            DecryptOptions(
                inputs=(enc_dir,), key=key, output=dec_dir, key_check=False, force=ctx.force, table_check=False
            )
        )
        if sorted(f.format for f in result.files) != [fmt] * len(originals):
            raise CheckFailed(f"{fmt}: format detected as {[f.format for f in result.files]}")
        for name, plain in originals.items():
            got = (dec_dir / name).read_bytes()
            if (
                got != plain
                or hashlib.md5(got).digest() != hashlib.md5(plain).digest()
                or hashlib.sha256(got).digest() != hashlib.sha256(plain).digest()
            ):
                raise CheckFailed(f"{fmt}: decrypted {name} differs from the original")

    try:  # without --no-key-check, anything but LLaMA-1 7B consolidated.00.pth is refused up front
        decrypt(DecryptOptions(inputs=(folder / "techgpt-enc",), key=key, output=folder / "refused"))
    except InputError as e:
        if "consolidated.00.pth" not in str(e) or (folder / "refused").exists():
            raise CheckFailed(f"the wrong key was refused with an unclear message: {e}") from None
    else:
        raise CheckFailed("a wrong key was accepted")
    total = sum(len(b) for b in originals.values())
    return (
        f"{len(originals)} files ({total:,} bytes) x 2 formats with a {KEY_BYTES:,}-byte key: .enc = "
        "plaintext XOR key, decrypted md5/sha256 identical (hashlib); wrong key refused"
    )
