"""XOR "encryption" of TechGPT-1.0, BELLE and point-alpaca weights (SPEC.md section 1): a byte-stream job.

Options -> plan -> run, like every job, but over bytes instead of tensors:

- :mod:`~llmkit.crypto.keystream` — the upstream key stream (10 MiB chunks, short key reads tiled);
- :mod:`~llmkit.crypto.stream` — :func:`xor_stream`: threaded reader / XOR / writer / hasher;
- :mod:`~llmkit.crypto.names` — the ``.enc`` formats: names, :func:`detect_format`, input expansion;
- :mod:`~llmkit.crypto.keycheck` — :func:`check_key` (LLaMA-1 7B ``consolidated.00.pth``) and its cache;
- :mod:`~llmkit.crypto.tables` — TechGPT-1.0's published MD5 tables;
- :mod:`~llmkit.crypto.diagnosis` — wrong bytes: a wrong key or a damaged ``.enc``, and the check that tells them
  apart;
- :mod:`~llmkit.crypto.plan` — :class:`DecryptOptions`, :class:`EncryptOptions` and the pre-flight checks;
- :mod:`~llmkit.crypto.remote` — remote ``.enc`` inputs (``hf://``, ``s3://``, a registry name): listed, streamed
  and verified (no local copy);
- :mod:`~llmkit.crypto.jobs` — :func:`decrypt` and :func:`encrypt`, all or nothing;
- :mod:`~llmkit.crypto.results` — :class:`CryptoResult` (a :class:`llmkit.pipeline.Result`), :class:`FileResult`.
"""

from llmkit.crypto.jobs import decrypt, encrypt
from llmkit.crypto.keycheck import KEY_DESCRIPTION, KEY_MD5, KEY_SIZE, cache_dir, check_key
from llmkit.crypto.keystream import BLOCK, CHUNK, KeyStream
from llmkit.crypto.names import EMPTY_SHA256, FORMATS, HEADER_BYTES, detect_format, split_enc_name
from llmkit.crypto.plan import DecryptOptions, EncryptOptions
from llmkit.crypto.results import CryptoResult, FileResult
from llmkit.crypto.stream import SLOTS, xor_stream
from llmkit.io.core.destination import TMP_SUFFIX

__all__ = [
    "BLOCK",
    "CHUNK",
    "EMPTY_SHA256",
    "FORMATS",
    "HEADER_BYTES",
    "KEY_DESCRIPTION",
    "KEY_MD5",
    "KEY_SIZE",
    "SLOTS",
    "TMP_SUFFIX",
    "CryptoResult",
    "DecryptOptions",
    "EncryptOptions",
    "FileResult",
    "KeyStream",
    "cache_dir",
    "check_key",
    "decrypt",
    "detect_format",
    "encrypt",
    "split_enc_name",
    "xor_stream",
]
