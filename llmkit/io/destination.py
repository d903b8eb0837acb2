"""Where outputs may go: checks every writing command makes before it writes (torch-free).

llmkit never writes into, beside or around its inputs, so an input is never modified and a later
run never reads its own output as input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from llmkit.errors import InputError


def ensure_output_is_new(out_dir: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output folder that is, is inside, or contains an input folder, or is an input file's folder.

    Symlinks are resolved (without failing on loops): llmkit never writes into, beside or around its
    inputs, so a later run never reads its own output as input.
    """
    out = Path(os.path.realpath(out_dir))
    for p in inputs:
        src = Path(os.path.realpath(p))
        if src.is_dir():
            if out == src or src in out.parents:
                where = f"is an input folder ({p})" if out == src else f"is inside the input folder {p}"
                raise InputError(f"the output folder {where}", path=out_dir,
                                 hint="choose an -o outside the inputs; llmkit never writes into its inputs")
            if out in src.parents:
                raise InputError(f"the output folder contains the input folder {p}", path=out_dir,
                                 hint="choose an -o that is not a parent of an input")
        elif out == src.parent or out == src:
            raise InputError(f"the output folder is the folder of the input {p}", path=out_dir,
                             hint="choose another -o; llmkit never writes beside or over its inputs")
