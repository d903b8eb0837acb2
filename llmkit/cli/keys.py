"""Key options shared by the commands that read or write encrypted MindSpore checkpoints.

A key is never a plain command-line value (shell history, ``ps``): KEY is the path of a file holding the
raw key bytes, or ``env:VAR`` naming an environment variable that holds the key as hex.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Annotated, Any

import typer

from llmkit.cli.helptext import INPUTS, OUTPUT


class EncMode(str, Enum):
    aes_gcm = "AES-GCM"
    aes_cbc = "AES-CBC"
    sm4_cbc = "SM4-CBC"


_PAIRS = "llmkit.key-pairs"
_GIVEN = ("COMMANDLINE", "ENVIRONMENT")  # ParameterSource names: typed, not defaulted


def _pair_check(kind: str) -> Callable[[typer.Context, typer.CallbackParam, Any], Any]:
    """A callback for ``--KIND-key`` and ``--KIND-mode``: whichever of the two click processes second sees both,
    and a mode typed without a key is a usage error (no output would be encrypted or decrypted by it)."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        seen = ctx.meta.setdefault(_PAIRS, {}).setdefault(kind, {})
        role = "key" if param.name and param.name.endswith("key") else "mode"
        source = ctx.get_parameter_source(param.name) if param.name else None
        seen[role] = (param, value, getattr(source, "name", None) in _GIVEN)
        if len(seen) == 2:
            mode_param, mode, mode_given = seen["mode"]
            key = seen["key"][1]
            if mode_given and key is None:
                shown = getattr(mode, "value", mode)
                what = "encrypts nothing" if kind == "enc" else "decrypts nothing"
                raise typer.BadParameter(
                    f"{shown} without --{kind}-key {what}; pass --{kind}-key KEY, or drop --{kind}-mode",
                    ctx=ctx,
                    param=mode_param,
                )
        return value

    return check


KEY_FORMS = (
    "KEY is a file holding the raw key bytes (16, 24 or 32 for AES; 16 for SM4) or env:VAR naming an "
    "environment variable that holds it as hex; never the key itself."
)
MODES = "|".join(m.value for m in EncMode)
INTEGRITY = (
    "AES-GCM is recommended: it authenticates every block, so a changed byte is an error; AES-CBC and "
    "SM4-CBC have no integrity check (a changed byte decrypts to wrong values, which only a CRC trailer "
    "can catch)."
)


def _key_option(kind: str, panel: str, help: str) -> Any:
    """``--enc-key`` / ``--dec-key``: a KEY (:data:`KEY_FORMS`), checked with its ``--KIND-mode``."""
    return typer.Option(
        f"--{kind}-key",
        metavar="KEY",
        rich_help_panel=panel,
        callback=_pair_check(kind),
        help=f"{help} {KEY_FORMS}",
        show_default=False,
    )


def _mode_option(kind: str, panel: str, help: str, **kwargs: Any) -> Any:
    """``--enc-mode`` / ``--dec-mode``: one of :class:`EncMode`, which needs its ``--KIND-key``."""
    return typer.Option(
        f"--{kind}-mode", metavar=MODES, rich_help_panel=panel, callback=_pair_check(kind), help=help, **kwargs
    )


EncKeyOpt = Annotated[
    str | None, _key_option("enc", OUTPUT, "Encrypt the .ckpt as mindspore.save_checkpoint(enc_key=...) does.")
]
EncModeOpt = Annotated[
    EncMode, _mode_option("enc", OUTPUT, "Cipher for --enc-key, which it needs (MindSpore's enc_mode). " + INTEGRITY)
]
DecKeyOpt = Annotated[
    str | None, _key_option("dec", INPUTS, "Key of an encrypted .ckpt (what load_checkpoint(dec_key=...) takes).")
]
DecModeOpt = Annotated[
    EncMode | None,
    _mode_option(
        "dec",
        INPUTS,
        "Cipher of the encrypted .ckpt, with --dec-key (default: read from the file). Reads of AES-CBC and SM4-CBC "
        "files warn that their values cannot be verified (they have no integrity check; AES-GCM "
        "does); a CRC trailer, if present, is checked.",
        show_default=False,
    ),
]


def mode_value(mode: EncMode | None) -> str | None:
    """The cipher name a ``--dec-mode`` / ``--enc-mode`` value stands for (None when not given)."""
    return mode.value if mode else None
