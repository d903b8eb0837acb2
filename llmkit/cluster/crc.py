"""CRC-32 of concatenated byte ranges from the ranges' own CRC-32s (a ``.ckpt``'s trailer under ``--ray``)."""

from __future__ import annotations


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A + B from ``crc1`` = crc32(A), ``crc2`` = crc32(B) and ``len2`` = len(B) (zlib's
    ``crc32_combine``, which Python's zlib does not expose): crc1 shifted through len2 zero bytes, xor crc2."""
    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)
        if len2 & 1:
            crc1 = _gf2_times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = _gf2_square(even)
        if len2 & 1:
            crc1 = _gf2_times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def _gf2_times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]
