"""Demo step: checksum and verify earlier outputs; compare the re-sharded model with the base by tensors.

Independent references: ``hashlib`` over the file bytes, GNU ``md5sum -c`` on the table llmkit wrote
(when installed), and sha256 of the reference state dict's numpy bytes.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from llmkit.demo import DemoContext, demo_step
from llmkit.errors import CheckFailed

if TYPE_CHECKING:
    from llmkit.verify import ChecksumResult


@demo_step(45, "checksum + verify (files and tensors)")
def _verify(ctx: DemoContext) -> str:
    work = ctx.workdir / "verify"
    work.mkdir(parents=True, exist_ok=True)
    folder = ctx.workdir / "layouts" / "bin-sharded"
    result, table, checked_by = _checksum_is_hashlib(folder, work)
    shard = _verify_catches_a_flipped_byte(folder, work, table, len(result.files))
    compared = _resharded_is_the_base(ctx)
    return (
        f"{len(result.files)} files: md5 = {checked_by}; verify ok, flipped byte caught in {shard.name}; "
        f"resharded = base in all {compared} tensors (bytes and sha256)"
    )


def _checksum_is_hashlib(folder: Path, work: Path) -> tuple[ChecksumResult, Path, str]:
    """1. llmkit checksum FOLDER: every digest equals hashlib's; the table it writes passes ``md5sum -c``.

    Returns the result, the table written in ``work`` and who checked it."""
    from llmkit.verify import ChecksumOptions, ChecksumResult, checksum

    result = checksum(ChecksumOptions((folder,), "md5", jobs=2))
    if not isinstance(result, ChecksumResult):
        raise CheckFailed(f"checksum of a folder without --tensors gave {type(result).__name__}, not file digests")
    for f in result.files:
        with open(f.path, "rb") as fh:
            want = hashlib.md5(fh.read()).hexdigest()
        if f.digest != want:
            raise CheckFailed(f"checksum of {f.path} is {f.digest}, hashlib says {want}")
    table = work / "bin-sharded.md5"
    table.write_text("".join(line + "\n" for line in result.lines()))
    checked_by = "hashlib"
    if shutil.which("md5sum"):
        run = subprocess.run(["md5sum", "-c", "--strict", "--quiet", str(table)], capture_output=True, text=True)
        if run.returncode != 0:
            raise CheckFailed(f"md5sum -c rejects the table llmkit wrote: {run.stdout or run.stderr}")
        checked_by = "hashlib and md5sum -c"
    return result, table, checked_by


def _verify_catches_a_flipped_byte(folder: Path, work: Path, table: Path, files: int) -> Path:
    """2. llmkit verify against that table: all ``files`` ok; a copy with one flipped byte is caught.

    Returns the damaged shard."""
    from llmkit.verify import VerifyOptions, verify_files

    report = verify_files(VerifyOptions((folder,), table=table, jobs=2))
    if not report.ok or report.counts()["ok"] != files:
        raise CheckFailed(f"verify of an unchanged folder failed: {report.counts()}")
    damaged = work / "damaged"
    if damaged.exists():
        shutil.rmtree(damaged)
    shutil.copytree(folder, damaged)
    shard = sorted(damaged.glob("pytorch_model-*.bin"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (damaged / "bin-sharded.md5").write_text(table.read_text().replace(str(folder), str(damaged)))
    bad = verify_files(VerifyOptions((damaged,), table=damaged / "bin-sharded.md5", jobs=1))
    failed = [f.path for f in bad.files if f.status == "mismatch"]
    if bad.ok or failed != [str(shard)]:
        raise CheckFailed(f"verify did not single out the damaged shard: {failed}")
    return shard


def _resharded_is_the_base(ctx: DemoContext) -> int:
    """3. The re-sharded safetensors model (step 40) vs the base: other bytes, same tensors (and the
    reference's sha256 per tensor). Returns the tensors compared."""
    from llmkit.verify import compare_sources, tensor_table

    resharded = ctx.workdir / "resharded"
    cmp = compare_sources(resharded, ctx.base)
    if not cmp.identical:
        raise CheckFailed(f"re-sharded model differs from the base: {cmp.differing[:3]} {cmp.only_a[:3]}")
    digests = {t.name: t.digest for t in tensor_table(resharded, "sha256", jobs=2).tensors}
    for name, tensor in ctx.reference.items():
        want = hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()
        if digests.get(name) != want:
            raise CheckFailed(f"per-tensor sha256 of {name} does not match the reference tensor")
    return cmp.compared
