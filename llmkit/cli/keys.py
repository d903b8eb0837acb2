"""Key options shared by the commands that read or write encrypted MindSpore checkpoints.

A key is never a plain command-line value (shell history, ``ps``): KEY is the path of a file holding the
raw key bytes, or ``env:VAR`` naming an environment variable that holds the key as hex.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from llmkit.cli.helptext import INPUTS, OUTPUT


class EncMode(str, Enum):
    aes_gcm = "AES-GCM"
    aes_cbc = "AES-CBC"
    sm4_cbc = "SM4-CBC"


KEY_FORMS = ("KEY is a file holding the raw key bytes (16, 24 or 32 for AES; 16 for SM4) or env:VAR naming an "
             "environment variable that holds it as hex; never the key itself.")
MODES = "|".join(m.value for m in EncMode)
EncKeyOpt = Annotated[Optional[str], typer.Option(
    "--enc-key", metavar="KEY", rich_help_panel=OUTPUT, help="Encrypt the .ckpt as mindspore.save_checkpoint(enc_key=...) does. " + KEY_FORMS,
    show_default=False)]
INTEGRITY = ("AES-GCM is recommended: it authenticates every block, so a changed byte is an error; AES-CBC and "
             "SM4-CBC have no integrity check (a changed byte decrypts to wrong values, which only a CRC trailer "
             "can catch).")
EncModeOpt = Annotated[EncMode, typer.Option("--enc-mode", metavar=MODES, rich_help_panel=OUTPUT,
                                             help="Cipher for --enc-key (MindSpore's enc_mode). " + INTEGRITY)]
DecKeyOpt = Annotated[Optional[str], typer.Option(
    "--dec-key", metavar="KEY", rich_help_panel=INPUTS, help="Key of an encrypted .ckpt (what load_checkpoint(dec_key=...) takes). " + KEY_FORMS,
    show_default=False)]
DecModeOpt = Annotated[Optional[EncMode], typer.Option(
    "--dec-mode", metavar=MODES, rich_help_panel=INPUTS,
    help="Cipher of the encrypted .ckpt (default: read from the file). Reads of AES-CBC and SM4-CBC "
                       "files warn that their values cannot be verified (they have no integrity check; AES-GCM "
                       "does); a CRC trailer, if present, is checked.", show_default=False)]
