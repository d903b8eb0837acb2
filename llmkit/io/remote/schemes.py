"""The URL schemes llmkit reads and writes, and the one rule for recognising them in a path (a leaf module:
``llmkit.errors`` shows paths with it, so it imports nothing of llmkit)."""

from __future__ import annotations

SCHEMES = ("hf", "s3", "https", "http")


def unfolded(text: str) -> str | None:
    """``text`` as a ``scheme://rest`` URL when it names a remote location (``hf://...``, or the ``hf:/...`` a
    ``Path`` makes of one), else None."""
    for scheme in SCHEMES:
        for prefix in (f"{scheme}://", f"{scheme}:/"):
            if text.startswith(prefix) and len(text) > len(prefix):
                return f"{scheme}://{text[len(prefix) :].strip('/')}"
    return None
