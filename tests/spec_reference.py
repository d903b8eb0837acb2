"""The SPEC.md section 1 key stream written as the upstream scripts loop: the independent reference
for every decrypt/encrypt test (shares no code with llmkit)."""

from __future__ import annotations

from pathlib import Path

C = 10 * 1024 * 1024  # upstream's data chunk and key read size


def upstream_xor(data: bytes, key_path: Path) -> bytes:
    """One sequential 10 MiB key read per 10 MiB chunk, seek(0) on an empty read, the read tiled to the chunk."""
    out = bytearray()
    with open(key_path, "rb") as key:
        for start in range(0, len(data), C):
            chunk = data[start : start + C]
            k = key.read(C)
            if k == b"":
                key.seek(0)
                k = key.read(C)
            tiled = (k * (len(chunk) // len(k) + 1))[: len(chunk)]
            out += (int.from_bytes(chunk, "little") ^ int.from_bytes(tiled, "little")).to_bytes(len(chunk), "little")
    return bytes(out)
