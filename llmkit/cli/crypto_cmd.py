"""``llmkit decrypt`` / ``llmkit encrypt``: the TechGPT and BELLE XOR formats (SPEC.md section 1)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from llmkit.cli.helptext import CHECKS, INPUTS, examples
from llmkit.cli.options import (
    ForceOpt,
    choice_option,
    dry_run_option,
    jobs_option,
    output_option,
    reads_remote,
    with_output,
)
from llmkit.cli.output import Output
from llmkit.errors import InputError
from llmkit.units import human_bytes

if TYPE_CHECKING:  # llmkit.crypto (numpy) is imported when a crypto command runs, not at CLI start-up
    from llmkit.crypto import CryptoResult

DECRYPT_EXAMPLES = examples(
    "# TechGPT-1.0: every .enc file of the download, verified against the published MD5s",
    "llmkit decrypt techgpt-7b --key LLaMA/7B/consolidated.00.pth -o TechGPT-7B",
    "# straight from the hub (no local copy of the .enc files; each verified as it streams)",
    "llmkit decrypt hf://neukg/TechGPT-7B --key LLaMA/7B/consolidated.00.pth -o TechGPT-7B",
    "# one file from stdin to stdout (use set -o pipefail: a failure exits non-zero)",
    "llmkit decrypt - --format techgpt --key LLaMA/7B/consolidated.00.pth -o - < config.json.enc | md5sum",
)
ENCRYPT_EXAMPLES = examples(
    "# publish a model as TechGPT-1.0 did (decrypt gives it back)",
    "llmkit encrypt my-model --key LLaMA/7B/consolidated.00.pth -o my-model-enc",
    "# BELLE's format: a sha256 header, so that decrypt can verify the result",
    "llmkit encrypt my-model --key LLaMA/7B/consolidated.00.pth -o my-model-enc --format belle",
)


class DecryptFormat(str, Enum):
    auto = "auto"
    techgpt = "techgpt"
    belle = "belle"


class EncryptFormat(str, Enum):
    techgpt = "techgpt"
    belle = "belle"


KeyOpt = Annotated[
    Path,
    typer.Option(
        "--key",
        "-k",
        metavar="FILE",
        rich_help_panel=INPUTS,
        help="The key: Meta's original LLaMA-1 7B consolidated.00.pth (13,476,939,516 bytes; also for "
        "13B models). Checked by size and md5 (cached after the first run).",
    ),
]
NoKeyCheckOpt = Annotated[
    bool,
    typer.Option(
        "--no-key-check",
        rich_help_panel=CHECKS,
        help="Do not check that the key is LLaMA-1 7B consolidated.00.pth (for weights encrypted "
        "with another key on purpose). The other checks still run: decrypt's content check "
        "(garbage from a wrong key stops before anything is written; a truncated file fails), "
        "BELLE's sha256 header and decrypt's published MD5 tables (see --no-table-check).",
    ),
]
NoContentCheckOpt = Annotated[
    bool,
    typer.Option(
        "--no-content-check",
        rich_help_panel=CHECKS,
        help="Do not check that the decrypted bytes are a whole file of the kind their name says "
        "(JSON, safetensors, torch zip, SentencePiece; for stdin, the kind the first bytes "
        "look like). For decrypting files that are not model files.",
    ),
]
NoTableCheckOpt = Annotated[
    bool,
    typer.Option(
        "--no-table-check",
        rich_help_panel=CHECKS,
        help="Do not fail when a file's name is in a published MD5 table (TechGPT-1.0's model card, LLaMA's "
        "checklist) but its md5 differs, e.g. another model's files under the same names: the mismatch is then "
        "a warning. An input that is the published .enc file but decrypts to another md5 still fails (a wrong "
        "key).",
    ),
]
JobsOpt = Annotated[
    int,
    jobs_option(
        "Files processed in parallel (each ~16 MB of buffers). Default 1: one file "
        "already streams at disk speed (its reading, XOR, hashing and writing run on "
        "their own threads); raise it only for several files on fast SSDs.",
        min=1,
        max=16,
    ),
]


def _render(result: CryptoResult) -> Callable[[Console], None]:
    def render(console: Console) -> None:
        if result.dry_run:
            _render_plan(console, result)
            return
        verb = "decrypted" if result.command == "decrypt" else "encrypted"
        for f in result.files:
            fetched = f", {f.fetched:,} fetched" if f.fetched is not None else ""
            console.print(
                f"{verb}  {f.input} -> {f.output}  ({f.format}, {f.bytes:,} bytes{fetched}, {f.seconds:.2f} s)",
                markup=False,
            )
            for c in f.checks:
                mark = {"ok": "ok", "mismatch": "MISMATCH"}.get(c.status, c.status)
                console.print(f"    {mark:<8} {c.name}: {c.detail}", markup=False)
        rate = result.bytes / result.seconds if result.seconds > 0 else 0.0
        console.print(
            f"{len(result.files)} file(s), {human_bytes(result.bytes)} in {result.seconds:.2f} s "
            f"({human_bytes(int(rate))}/s); key check: {result.key_check}",
            markup=False,
        )

    return render


def _render_plan(console: Console, result: CryptoResult) -> None:
    """A dry run: each file, the bytes it would decrypt and fetch, the totals; nothing was read or written."""
    for f in result.files:
        fetched = f", {f.fetched:,} to fetch" if f.fetched is not None else ""
        console.print(f"would decrypt  {f.input} -> {f.output}  ({f.format}, {f.bytes:,} bytes{fetched})", markup=False)
    remote = [f.fetched for f in result.files if f.fetched is not None]
    fetch = f"; {human_bytes(sum(remote))} to fetch ({len(remote)} remote file(s))" if remote else ""
    console.print(
        f"{len(result.files)} file(s), {human_bytes(result.bytes)} to write{fetch}; key check: {result.key_check}; "
        "dry run: nothing fetched or written",
        markup=False,
    )


def _report(out: Output, result: CryptoResult, *, to_stderr: bool) -> None:
    out.notices(result)  # the ignored files (log lines), then the warnings
    if to_stderr:  # stdout carries the data
        if not out.quiet:
            _render(result)(out.err)
    else:
        out.result(result, _render(result))


@with_output
@reads_remote
def decrypt_command(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="INPUT",
            help=".enc files, folders (every *.enc in them; other files are ignored), hf://OWNER/NAME[@REV][/PATH] "
            "or s3://BUCKET/PREFIX (streamed, no local copy; a name from llmkit models that is no local path: its "
            "hub repo), "
            "or - for stdin.",
            show_default=False,
        ),
    ],
    key: KeyOpt,
    output: Annotated[
        Path,
        output_option("Output folder (created if needed; not an input folder nor the key's folder), or - for stdout."),
    ],
    fmt: Annotated[
        DecryptFormat,
        choice_option(
            "--format",
            DecryptFormat,
            "auto: BELLE when the file starts with the sha256 in its name, else TechGPT. Required for stdin.",
            panel=INPUTS,
        ),
    ] = DecryptFormat.auto,
    no_key_check: NoKeyCheckOpt = False,
    no_content_check: NoContentCheckOpt = False,
    no_table_check: NoTableCheckOpt = False,
    jobs: JobsOpt = 1,
    force: ForceOpt = False,
    dry_run: Annotated[
        bool,
        dry_run_option(
            "Run every check (names, formats, sizes, free space, existing outputs, the key) and list the files "
            "and the bytes to decrypt and, for a URL, to fetch; write nothing, fetch nothing but a BELLE file's "
            "32-byte header."
        ),
    ] = False,
    *,
    out: Output,
) -> None:
    """Decrypt XOR-encrypted weights (TechGPT-1.0, BELLE, point-alpaca).

    Exact and at disk speed. Output names drop the .<hex>.enc suffix. The decrypted bytes must be a
    whole file of the kind the name says; BELLE files are verified against their sha256 header,
    TechGPT-1.0 files against the MD5s published in its model card (a mismatch fails; --no-table-check
    makes it a warning). The files of one run get their final names together, only when every file
    passed; a failure leaves none of them. When the output is stdout, a failure exits non-zero (use
    set -o pipefail). A URL is streamed without a local copy, each file checked against the digest its
    store publishes before the output is kept.
    """
    from llmkit.crypto import DecryptOptions, decrypt

    to_stdout = str(output) == "-"
    if to_stdout and out.json_mode:
        raise InputError("--json prints to stdout, which -o - uses for the data", hint="drop --json or use -o DIR")
    options = DecryptOptions(
        inputs=tuple(inputs),
        key=key,
        output=None if to_stdout else output,
        format=fmt.value,
        key_check=not no_key_check,
        content_check=not no_content_check,
        table_check=not no_table_check,
        jobs=jobs,
        force=force,
        dry_run=dry_run,
    )
    result = decrypt(
        options, stream=sys.stdout.buffer if to_stdout else None, stdin=sys.stdin.buffer, progress=out.progress
    )
    _report(out, result, to_stderr=to_stdout)


@with_output
def encrypt_command(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="INPUT",
            help="Files or folders (every file in them except *.enc, README*, LICENSE* and hidden files).",
            show_default=False,
        ),
    ],
    key: KeyOpt,
    output: Annotated[
        Path, output_option("Output folder (created if needed; not an input folder nor the key's folder).")
    ],
    fmt: Annotated[
        EncryptFormat,
        choice_option(
            "--format",
            EncryptFormat,
            "techgpt: no header, named <name>.<sha256 of empty>.enc (as TechGPT-1.0); belle: "
            "32-byte sha256 header, named <name>.<sha256>.enc (verifiable).",
        ),
    ] = EncryptFormat.techgpt,
    no_key_check: NoKeyCheckOpt = False,
    jobs: JobsOpt = 1,
    force: ForceOpt = False,
    *,
    out: Output,
) -> None:
    """XOR-encrypt files as TechGPT / BELLE publish them.

    Byte for byte what the upstream tools write; the inverse of decrypt.
    """
    from llmkit.crypto import EncryptOptions, encrypt

    if str(output) == "-":
        raise InputError("encrypt writes files into a folder", hint="pass -o DIR")
    options = EncryptOptions(
        inputs=tuple(inputs),
        key=key,
        output=output,
        format=fmt.value,
        key_check=not no_key_check,
        jobs=jobs,
        force=force,
    )
    result = encrypt(options, progress=out.progress)
    _report(out, result, to_stderr=False)
