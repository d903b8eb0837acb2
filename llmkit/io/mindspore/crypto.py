"""Encrypted MindSpore checkpoints (``save_checkpoint(enc_key=..., enc_mode=...)``), streamed, with the
``cryptography`` package. Layout observed from MindSpore 2.10 (docs/mindspore-notes.md):

The plaintext ``.ckpt`` bytes are cut into blocks of at most 64 MiB (:data:`BLOCK_PLAIN`); each block is
stored as a header and its ciphertext, all integers little-endian u32::

    AES-GCM:          magic d8 5e 3a 7f | tag (16) | block_size | iv_len (16) | IV (16) | cipher_len | ciphertext
    AES-CBC, SM4-CBC: magic d9/da 5e 3a 7f         | block_size | iv_len (16) | IV (16) | cipher_len | ciphertext

``block_size = 4 + iv_len + 4 + cipher_len``; a fresh random IV per block; GCM uses the IV's first 12
bytes as its nonce, no associated data, a 16-byte tag; the CBC modes pad each block with PKCS#7
(a full block grows by 16 bytes). Key: 16, 24 or 32 bytes for AES (AES-128/192/256), 16 for SM4.

- :class:`BlockEncryptor`: a write-only file wrapper that encrypts as the plaintext streams in (no block
  is held: memory is the chunk being written, whatever the checkpoint size);
  :func:`encrypt_block` is the same format for one whole block.
- :class:`DecryptedFile`: random access to the plaintext; an index of the block headers is read at
  open time (lengths, CBC padding, every block but the last exactly :data:`BLOCK_PLAIN` bytes of
  plaintext), and one decrypted block is cached (an AES-GCM block is authenticated as a whole).
- AES-CBC and SM4-CBC authenticate nothing: a changed ciphertext byte decrypts to other values without
  an error, so every read of such a file carries :func:`unverified_warning` unless a CRC trailer (inside
  the plaintext, where ``load_checkpoint`` looks for it after decrypting) covered the values.

Keys and modes: ``llmkit.io.mindspore.keys``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from llmkit.errors import InputError
from llmkit.io.mindspore.keys import MAGICS, MODE_OF_MAGIC, CkptKey

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import AEADEncryptionContext, Cipher, CipherContext, modes
    from cryptography.hazmat.primitives.padding import PaddingContext

BLOCK_PLAIN = 64 * 1024 * 1024  # MindSpore's ENCRYPT_BLOCK_SIZE (64 * 1024 KiB) of plaintext per block


IV_BYTES = 16


TAG_BYTES = 16


def block_sizes(plain_total: int) -> Iterator[int]:
    """Plaintext bytes of each block of a checkpoint of ``plain_total`` bytes."""
    for start in range(0, plain_total, BLOCK_PLAIN):
        yield min(BLOCK_PLAIN, plain_total - start)


def cipher_len(plain: int, mode: str) -> int:
    return plain if mode == "AES-GCM" else (plain // 16 + 1) * 16  # PKCS#7 always adds 1..16 bytes


def header_len(mode: str) -> int:
    return 4 + (TAG_BYTES if mode == "AES-GCM" else 0) + 4 + 4 + IV_BYTES + 4


def encrypted_size(plain_total: int, mode: str) -> int:
    """Bytes of the encrypted file holding ``plain_total`` plaintext bytes."""
    return sum(header_len(mode) + cipher_len(n, mode) for n in block_sizes(plain_total))


def _cbc(mode: str, key: bytes, iv: bytes) -> Cipher[modes.CBC]:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    alg = algorithms.AES(key) if mode == "AES-CBC" else algorithms.SM4(key)
    return Cipher(alg, modes.CBC(iv))


CIPHER_CHUNK = 1 << 20  # bytes per update(): one 64 MiB call runs at a fraction of the chunked speed


def _chunked(ctx: CipherContext, data: bytes) -> memoryview:
    """``ctx.update`` over ``data`` in chunks, into one buffer (no per-chunk allocation)."""
    out = bytearray(len(data) + 16)  # update_into needs room for one more cipher block
    src, dst, n = memoryview(data), memoryview(out), 0
    for i in range(0, len(data), CIPHER_CHUNK):
        n += ctx.update_into(src[i : i + CIPHER_CHUNK], dst[n:])
    return dst[:n]


def encrypt_block(plain: bytes | memoryview, key: bytes, mode: str, iv: bytes) -> bytes:
    """One stored block: header and ciphertext of ``plain`` (at most :data:`BLOCK_PLAIN` bytes)."""
    if mode == "AES-GCM":
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        sealed = AESGCM(key).encrypt(iv[:12], bytes(plain), None)
        ct, tag = memoryview(sealed)[:-TAG_BYTES], sealed[-TAG_BYTES:]
        head = struct.pack("<I", MAGICS[mode]) + tag + struct.pack("<II", 4 + IV_BYTES + 4 + len(ct), IV_BYTES)
    else:
        from cryptography.hazmat.primitives import padding

        padder = padding.PKCS7(128).padder()
        enc = _cbc(mode, key, iv).encryptor()
        ct = memoryview(enc.update(padder.update(bytes(plain)) + padder.finalize()) + enc.finalize())
        head = struct.pack("<III", MAGICS[mode], 4 + IV_BYTES + 4 + len(ct), IV_BYTES)
    return head + iv + struct.pack("<I", len(ct)) + bytes(ct)


class BlockEncryptor:
    """Write-only file wrapper: ``total`` plaintext bytes in (sequentially), encrypted blocks out to ``f``.

    Streaming, without holding a block: each block's length is known from ``total``, so its header goes
    out first and the ciphertext follows as the plaintext arrives; an AES-GCM tag is patched into the
    header when the block ends (``f`` must be seekable). ``ivs`` gives each block's 16-byte IV (default:
    ``os.urandom``; tests pass MindSpore's to compare bytes). :meth:`close` checks every byte arrived.
    """

    def __init__(self, f: BinaryIO, key: CkptKey, mode: str, total: int, ivs: Iterator[bytes] | None = None):
        key.check(mode)
        self.f, self.key, self.mode, self.total = f, key.key, mode, total
        self.ivs = ivs
        self.plain_written = 0
        self._left = 0  # plaintext bytes still to come in the current block
        self._enc: CipherContext | None = None  # the current block's cipher
        self._gcm: AEADEncryptionContext | None = None  # the same, in AES-GCM (its tag ends the block)
        self._pad: PaddingContext | None = None  # the current block's PKCS#7 padder (CBC modes)
        self._tag_at = 0

    def _begin(self) -> None:
        n = min(BLOCK_PLAIN, self.total - self.plain_written)
        iv = next(self.ivs) if self.ivs is not None else os.urandom(IV_BYTES)
        ct = cipher_len(n, self.mode)
        magic = struct.pack("<I", MAGICS[self.mode])
        tail = struct.pack("<II", 4 + IV_BYTES + 4 + ct, IV_BYTES) + iv + struct.pack("<I", ct)
        if self.mode == "AES-GCM":
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

            self._tag_at = self.f.tell() + 4
            self.f.write(magic + bytes(TAG_BYTES) + tail)  # the tag is known when the block ends
            self._enc = self._gcm = Cipher(algorithms.AES(self.key), modes.GCM(iv[:12])).encryptor()
        else:
            from cryptography.hazmat.primitives import padding

            self.f.write(magic + tail)
            self._enc = _cbc(self.mode, self.key, iv).encryptor()
            self._pad = padding.PKCS7(128).padder()
        self._left = n

    def _feed(self, data: memoryview) -> None:
        assert self._enc is not None
        if self._pad is not None:
            data = memoryview(self._pad.update(data))
        self.f.write(self._enc.update(data))

    def _end(self) -> None:
        assert self._enc is not None
        if self._pad is not None:
            self.f.write(self._enc.update(self._pad.finalize()))
        self.f.write(self._enc.finalize())
        if self._gcm is not None:
            end = self.f.tell()
            self.f.seek(self._tag_at)
            self.f.write(self._gcm.tag)
            self.f.seek(end)
        self._enc = self._gcm = self._pad = None

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        if self.plain_written + len(view) > self.total:
            raise InputError(f"more plaintext than planned ({self.plain_written + len(view)} > {self.total} bytes)")
        while len(view):
            if self._left == 0:
                self._begin()
            n = min(self._left, len(view))
            self._feed(view[:n])
            view = view[n:]
            self._left -= n
            self.plain_written += n
            if self._left == 0:
                self._end()

    def close(self) -> None:
        if self.plain_written != self.total:
            raise InputError(f"encrypted {self.plain_written} of {self.total} planned plaintext bytes")


@dataclass(frozen=True)
class _Block:
    at: int  # offset of the block's header in the file
    ct: int  # offset of its ciphertext
    ct_len: int
    iv: bytes
    tag: bytes
    plain_at: int  # offset of its plaintext in the decrypted stream
    plain_len: int


UNAUTHENTICATED = ("AES-CBC", "SM4-CBC")  # modes without an integrity check of the plaintext


def unverified_warning(name: str, mode: str | None, crc: bool, values_read: bool) -> str | None:
    """The warning every read of a checkpoint encrypted in a CBC mode carries (None for AES-GCM and
    unencrypted files, or when a CRC trailer covered the values read): CBC decrypts altered bytes to
    other values without any error; only the file's structure can be checked."""
    if mode not in UNAUTHENTICATED or (crc and values_read):
        return None
    if crc:
        return (
            f"{name}: {mode} has no integrity check and no tensor data was read; its CRC trailer is checked "
            "when the tensors are read (checksum --tensors, from-ckpt)"
        )
    return (
        f"{name}: {mode} has no integrity check, so altered or damaged tensor values go undetected (only the "
        "file's structure was checked); AES-GCM detects them (to-ckpt --enc-mode AES-GCM), and so does a "
        "CRC trailer (to-ckpt --crc)"
    )


def sniff_mode(head: bytes) -> str | None:
    """The encryption mode whose magic ``head`` (the first 4 bytes of a file) starts with, else None."""
    return MODE_OF_MAGIC.get(struct.unpack("<I", head)[0]) if len(head) >= 4 else None


class DecryptedFile:
    """Random access to the plaintext of an encrypted checkpoint (``fd`` open for reading)."""

    def __init__(self, fd: int, path: Path, key: CkptKey):
        self.fd, self.path, self.key = fd, path, key
        size = os.fstat(fd).st_size
        if size >= 17 and os.pread(fd, 7, size - 17) == b"crc_num":
            size -= 17  # MindSpore appends a plaintext trailer (with a zero CRC) when asked for one
        mode = sniff_mode(os.pread(fd, 4, 0))
        if mode is None:
            raise InputError("not an encrypted MindSpore checkpoint (unknown magic)", path=path)
        self.mode = mode
        if key.mode is not None and key.mode != self.mode:
            raise InputError(
                f"the file is encrypted with {self.mode}, not {key.mode}",
                path=path,
                hint=f"pass --dec-mode {self.mode} (or leave --dec-mode out: it is read from the file)",
            )
        key.check(self.mode)
        self.blocks: list[_Block] = []
        pos = plain = 0
        while pos < size:
            b = self._read_header(pos, size)
            plain_len = b.ct_len if self.mode == "AES-GCM" else b.ct_len - self._cbc_pad(b)
            if self.blocks and self.blocks[-1].plain_len != BLOCK_PLAIN:
                raise self._short(self.blocks[-1])
            if plain_len > BLOCK_PLAIN:
                raise self._short(b, plain_len)
            b = _Block(b.at, b.ct, b.ct_len, b.iv, b.tag, plain, plain_len)
            self.blocks.append(b)
            plain += plain_len
            pos = b.ct + b.ct_len
        self.size = plain
        self._cached: tuple[int, memoryview] | None = None

    def _fail(self, at: int, what: str) -> InputError:
        return InputError(
            f"corrupt encrypted checkpoint at byte {at}: {what}",
            path=self.path,
            hint="the file is truncated or damaged; download or convert it again",
        )

    def _short(self, b: _Block, plain_len: int | None = None) -> InputError:
        """A block whose plaintext length breaks MindSpore's layout (every block but the last holds exactly
        :data:`BLOCK_PLAIN` bytes): for CBC, a damaged block whose padding still looks valid."""
        n = b.plain_len if plain_len is None else plain_len
        return self._fail(
            b.at,
            f"the block holds {n} bytes of plaintext; every block but the last holds "
            f"{BLOCK_PLAIN} (and the last no more)",
        )

    def _read_header(self, at: int, size: int) -> _Block:
        gcm = self.mode == "AES-GCM"
        fixed = os.pread(self.fd, header_len(self.mode) - IV_BYTES - 4, at)
        if len(fixed) < header_len(self.mode) - IV_BYTES - 4:
            raise self._fail(at, "the file ends inside a block header")
        magic = struct.unpack_from("<I", fixed)[0]
        if magic != MAGICS[self.mode]:
            raise self._fail(at, f"expected the {self.mode} block magic, found {fixed[:4].hex()}")
        tag = fixed[4 : 4 + TAG_BYTES] if gcm else b""
        block_size, iv_len = struct.unpack_from("<II", fixed, len(fixed) - 8)
        if iv_len != IV_BYTES:
            raise self._fail(at, f"IV length {iv_len} (MindSpore writes {IV_BYTES})")
        iv_at = at + len(fixed)
        rest = os.pread(self.fd, IV_BYTES + 4, iv_at)
        if len(rest) < IV_BYTES + 4:
            raise self._fail(at, "the file ends inside a block header")
        (ct_len,) = struct.unpack_from("<I", rest, IV_BYTES)
        ct = iv_at + IV_BYTES + 4
        if block_size != 4 + IV_BYTES + 4 + ct_len:
            raise self._fail(at, f"block size {block_size} does not match its ciphertext length {ct_len}")
        if ct + ct_len > size:
            raise self._fail(at, f"a block of {ct_len} bytes runs past the end of the file (byte {size})")
        if not gcm and (ct_len == 0 or ct_len % 16):
            raise self._fail(at, f"a CBC block of {ct_len} bytes (not a multiple of 16)")
        return _Block(at, ct, ct_len, rest[:IV_BYTES], tag, 0, 0)

    def _wrong_key(self, b: _Block, why: str) -> InputError:
        return InputError(
            f"cannot decrypt the block at byte {b.at} ({why}): wrong key or mode, or the file was modified",
            path=self.path,
            hint=f"check the key ({self.key.source}) and the file",
        )

    def _cbc_pad(self, b: _Block) -> int:
        """PKCS#7 padding of a CBC block, from its last 16 bytes alone (so the index is cheap)."""
        prev = self.iv_or_prev(b)
        last = _cbc(self.mode, self.key.key, prev).decryptor().update(os.pread(self.fd, 16, b.ct + b.ct_len - 16))
        pad = last[-1]
        if not 1 <= pad <= 16 or last[-pad:] != bytes([pad]) * pad:
            raise self._wrong_key(b, "bad padding")
        return pad

    def iv_or_prev(self, b: _Block) -> bytes:
        return b.iv if b.ct_len == 16 else os.pread(self.fd, 16, b.ct + b.ct_len - 32)

    def _decrypt(self, i: int) -> memoryview:
        if self._cached is not None and self._cached[0] == i:
            return self._cached[1]
        self._cached = None  # one decrypted block in memory at a time
        b = self.blocks[i]
        ct = os.pread(self.fd, b.ct_len, b.ct)
        if len(ct) != b.ct_len:
            raise InputError("file shrank while reading", path=self.path)
        if self.mode == "AES-GCM":
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

            dec: CipherContext = Cipher(algorithms.AES(self.key.key), modes.GCM(b.iv[:12], b.tag)).decryptor()
            plain = _chunked(dec, ct)
            del ct
            try:
                dec.finalize()  # checks the tag: the whole block is authentic
            except InvalidTag:
                raise self._wrong_key(b, "the AES-GCM tag does not match") from None
        else:
            dec = _cbc(self.mode, self.key.key, b.iv).decryptor()
            plain = _chunked(dec, ct)[: b.plain_len]  # the padding was checked when indexing
            del ct
            dec.finalize()
        self._cached = (i, plain)
        return plain

    def readinto(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with the plaintext bytes at ``offset``."""
        done = 0
        i = self._block_at(offset)
        while done < len(view):
            if i >= len(self.blocks):
                raise InputError(
                    f"read past the end of the decrypted checkpoint (byte {offset + done})", path=self.path
                )
            b = self.blocks[i]
            plain = self._decrypt(i)
            start = offset + done - b.plain_at
            n = min(len(view) - done, b.plain_len - start)
            view[done : done + n] = plain[start : start + n]
            done += n
            i += 1

    def pread(self, n: int, offset: int) -> bytes:
        n = max(0, min(n, self.size - offset))
        buf = bytearray(n)
        self.readinto(memoryview(buf), offset)
        return bytes(buf)

    def _block_at(self, offset: int) -> int:
        lo, hi = 0, len(self.blocks)
        while lo + 1 < hi:  # the last block starting at or before offset
            mid = (lo + hi) // 2
            if self.blocks[mid].plain_at <= offset:
                lo = mid
            else:
                hi = mid
        return lo
