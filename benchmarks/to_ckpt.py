"""Benchmark ``llmkit to-ckpt`` against the I/O floor and MindFormers' convert_weight.py approach.

    flock /tmp/llmkit-bench.lock .venv/bin/python benchmarks/to_ckpt.py --layers 2,6 \
        [--repeat 3] [--no-upstream] [--enc-modes AES-GCM,AES-CBC,SM4-CBC] [--keep DIR] [--json]

Generates, for each layer count, an fp16 Hugging Face LLaMA folder with LLaMA-7B layer shapes (hidden
4096, intermediate 11008, vocab 32000, 32 heads): safetensors shards of at most 1 GiB with an index, in
``LlamaForCausalLM.state_dict()`` order, written one tensor at a time by llmkit's own writer, plus
config.json. Then alternates, ``--repeat`` times, with the inputs evicted from the page cache before
each run (every contender in a fresh process, wall time after imports, peak RSS from VmHWM):

- ``floor`` (``io_floor.py``): read every shard, write as many bytes as the output, fsync;
- ``llmkit``: ``to_ckpt`` (fp16 kept, MindFormers names, one fsynced ``.ckpt``), streaming;
- ``llmkit+<mode>``, one arm per ``--enc-modes`` entry (default ``AES-GCM``; ``""`` adds none): the
  same ``to_ckpt`` with ``enc_key="env:VAR"`` (a random 16-byte key made for this run, hex in the
  child's environment) and ``enc_mode=<mode>``, measured as the ``llmkit`` arm: the writer thread
  encrypts in MindSpore's 64 MiB blocks as it streams, so the target is a time within 1.3x of ``llmkit``
  and the same peak RSS (no block is held). Once per layer count and mode, in a child process, the
  encrypted file is read back with ``CkptFile(path, CkptKey(key, None, ...))`` and every tensor's bytes
  (names, order, dtypes, shapes too) compared with the unencrypted file's, one tensor at a time; its
  whole decrypted stream is also compared with the unencrypted file byte for byte;
- ``upstream``: as MindFormers' llama ``convert_weight.py``: ``LlamaForCausalLM.from_pretrained`` in
  fp32, the whole state dict renamed (names from ``llmkit.io.mindspore.mindformers``), a list of fp16
  ``mindspore.Tensor`` built and ``mindspore.save_checkpoint`` called (not fsynced; that favours
  upstream; its file is fsynced and evicted after the clock stops). Skipped with a note when
  mindspore cannot be imported. Once per layer count its file is compared byte for byte with llmkit's.

Prints medians, llmkit/floor and the peak RSS per layer count: llmkit's is flat in depth, upstream's
grows with it; then, per encryption mode, its median, its ratio to the unencrypted ``llmkit`` median
(and the median of the per-round ratios), its peak RSS and whether it decrypts to the same tensors.
``--json`` prints the rows as JSON instead of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from io_floor import drop_cache, measure_floor

HIDDEN, INTERMEDIATE, VOCAB, HEADS = 4096, 11008, 32000, 32
SHARD_SIZE = 1 << 30
ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
TARGET = 1.3  # the bound: encrypted to-ckpt within 1.3x of unencrypted

GENERATE = r"""
import sys
from pathlib import Path
import torch
from llmkit.io.core.spec import TensorSpec; from llmkit.io.core.sink import open_sink
from llmkit.tiny import tiny_config
folder, layers, hidden, inter, vocab, heads, shard = Path(sys.argv[1]), *map(int, sys.argv[2:8])
specs = [("model.embed_tokens.weight", (vocab, hidden))]
for i in range(layers):  # LlamaForCausalLM.state_dict() order
    p = f"model.layers.{i}."
    specs += [(p + f"self_attn.{n}_proj.weight", (hidden, hidden)) for n in "qkvo"]
    specs += [(p + "mlp.gate_proj.weight", (inter, hidden)), (p + "mlp.up_proj.weight", (inter, hidden)),
              (p + "mlp.down_proj.weight", (hidden, inter)), (p + "input_layernorm.weight", (hidden,)),
              (p + "post_attention_layernorm.weight", (hidden,))]
specs += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
g = torch.Generator().manual_seed(layers)
with open_sink("safetensors", folder, [TensorSpec(n, torch.float16, s) for n, s in specs], shard_size=shard) as w:
    for n, s in specs:
        w.write(n, (torch.randn(s, generator=g) * 0.02).half())
tiny_config(vocab, layers=layers, hidden=hidden, heads=heads, intermediate=inter,
            dtype=torch.float16).save_pretrained(folder)
print("{}")
"""

PRELUDE = r"""
import json, sys, time
from pathlib import Path

def report(start):
    peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": peak}))
"""

LLMKIT = (
    PRELUDE
    + r"""
from llmkit.convert.ckpt import ToCkptOptions, to_ckpt
start = time.perf_counter()
to_ckpt(ToCkptOptions(Path(sys.argv[1]), Path(sys.argv[2])))
report(start)
"""
)

KEY_VAR = "LLMKIT_BENCH_CKPT_KEY"  # the child reads the key as enc_key="env:LLMKIT_BENCH_CKPT_KEY"
ENC_MODES = ("AES-GCM", "AES-CBC", "SM4-CBC")

LLMKIT_ENC = (
    PRELUDE
    + r"""
from llmkit.convert.ckpt import ToCkptOptions, to_ckpt
start = time.perf_counter()
to_ckpt(ToCkptOptions(Path(sys.argv[1]), Path(sys.argv[2]), enc_key="env:LLMKIT_BENCH_CKPT_KEY",
                      enc_mode=sys.argv[3]))
report(start)
"""
)

# argv: ENCRYPTED PLAIN MODE. Reads both one tensor at a time; prints {"same", "problems", "stream_same", ...}.
VERIFY = r"""
import json, os, sys, time
from pathlib import Path
import torch
from llmkit.io.mindspore.keys import CkptKey
from llmkit.io.mindspore.crypto import DecryptedFile
from llmkit.io.mindspore.reader import CkptFile
enc_path, plain_path, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
key = CkptKey(bytes.fromhex(os.environ["LLMKIT_BENCH_CKPT_KEY"]), None, "bench")
start = time.perf_counter()
enc, plain = CkptFile(enc_path, key), CkptFile(plain_path)
problems = []
if enc.encryption != mode:
    problems.append(f"encryption {enc.encryption!r}, expected {mode!r}")
if list(enc.infos) != list(plain.infos):
    problems.append(f"tensor names/order differ: {len(enc.infos)} vs {len(plain.infos)} tensors")
for name, info in plain.infos.items():
    other = enc.infos.get(name)
    if other is None:
        continue
    if (other.dtype, tuple(other.shape)) != (info.dtype, tuple(info.shape)):
        problems.append(f"{name}: {other.dtype} {list(other.shape)} vs {info.dtype} {list(info.shape)}")
        continue
    a, b = enc.get(name), plain.get(name)
    if not torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)):
        problems.append(f"{name}: bytes differ")
    del a, b
tensors = len(plain.infos)
enc.close(); plain.close()
tensor_seconds = time.perf_counter() - start
# the whole decrypted stream against the unencrypted file, 64 MiB at a time
fd, pfd = os.open(enc_path, os.O_RDONLY), os.open(plain_path, os.O_RDONLY)
try:
    d = DecryptedFile(fd, enc_path, key)
    stream_same = d.size == os.fstat(pfd).st_size
    pos, chunk = 0, 64 << 20
    while stream_same and pos < d.size:
        stream_same = d.pread(chunk, pos) == os.pread(pfd, chunk, pos)
        pos += chunk
    blocks = len(d.blocks)
finally:
    os.close(fd); os.close(pfd)
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"same": not problems, "tensors": tensors, "problems": problems[:5], "stream_same": stream_same,
                  "blocks": blocks, "tensor_seconds": round(tensor_seconds, 2), "peak_rss": peak}))
"""

UPSTREAM = (
    PRELUDE
    + r"""
try:
    import mindspore
except Exception as e:  # no wheel for this platform, or a broken install
    print(json.dumps({"skip": f"mindspore not importable: {e!r}"}))
    sys.exit(0)
import numpy, torch, transformers
from llmkit.io.mindspore.mindformers import hf_to_mindformers
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
start = time.perf_counter()
with torch.inference_mode():
    model = transformers.LlamaForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
    ckpt = [{"name": hf_to_mindformers(n) or n, "data": mindspore.Tensor(t.numpy().astype(numpy.float16))}
            for n, t in model.state_dict().items()]
    mindspore.save_checkpoint(ckpt, sys.argv[2])
report(start)
"""
)


def run(script: str, *args: str | Path, key: bytes | None = None) -> dict:
    """Run ``script`` in a fresh interpreter; its last stdout line is a JSON report. ``key``: put in the
    child's environment as hex (``env:KEY_VAR``), never on its command line."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    env.pop(KEY_VAR, None)
    if key is not None:
        env[KEY_VAR] = key.hex()
    r = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], check=False, capture_output=True, text=True, env=env
    )
    if r.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def generate(folder: Path, layers: int) -> list[Path]:
    """The HF folder for ``layers`` layers (reused when already there); returns its weight files."""
    if not (folder / "config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        run(GENERATE, folder, layers, HIDDEN, INTERMEDIATE, VOCAB, HEADS, SHARD_SIZE)
    return sorted(folder.glob("*.safetensors"))


def same_bytes(a: Path, b: Path) -> tuple[bool, str]:
    """(identical, what ``cmp`` says) for two files."""
    r = subprocess.run(["cmp", str(a), str(b)], check=False, capture_output=True, text=True)
    return r.returncode == 0, (r.stdout + r.stderr).strip() or f"{a.stat().st_size} bytes each"


def summary(runs: list[dict]) -> dict:
    """Median wall time and the largest peak RSS of repeated runs."""
    return {
        "seconds": statistics.median(r["seconds"] for r in runs),
        "peak_rss": max(r["peak_rss"] for r in runs),
        "all_seconds": [round(r["seconds"], 2) for r in runs],
    }


def bench(work: Path, models: Path, layers: int, repeat: int, upstream: bool, enc_modes: list[str]) -> dict:
    """Alternate llmkit, floor, llmkit+<mode> for each of ``enc_modes`` and upstream ``repeat`` times on
    one generated model."""
    src = models / f"hf-{layers}l"
    inputs = generate(src, layers)
    out, up_out, enc_out = work / "llmkit.ckpt", work / "upstream.ckpt", work / "llmkit-enc.ckpt"
    key = os.urandom(16)  # AES-128 / SM4: one key for every mode
    floors: list[dict] = []
    mines: list[dict] = []
    ups: list[dict] = []
    encs: dict[str, list[dict]] = {m: [] for m in enc_modes}
    row: dict = {"layers": layers, "input_bytes": sum(p.stat().st_size for p in inputs)}
    if enc_modes:
        row["enc"] = {}
    for i in range(repeat):
        out.unlink(missing_ok=True)
        drop_cache(inputs)
        mines.append(run(LLMKIT, src, out))
        drop_cache([out])
        row["output_bytes"] = out.stat().st_size
        floors.append(measure_floor(inputs, row["output_bytes"], work / "floor.out"))
        for mode in enc_modes:
            enc_out.unlink(missing_ok=True)
            drop_cache(inputs)
            encs[mode].append(run(LLMKIT_ENC, src, enc_out, mode, key=key))
            drop_cache([enc_out])
            e = row["enc"].setdefault(mode, {})
            e["output_bytes"] = enc_out.stat().st_size
            if i == 0:  # the unencrypted file of this round is still there
                e["verify"] = run(VERIFY, enc_out, out, mode, key=key)
                drop_cache([enc_out, out])
            enc_out.unlink()
        if upstream:
            up_out.unlink(missing_ok=True)
            drop_cache(inputs)
            r = run(UPSTREAM, src, up_out)
            if "skip" in r:
                print(f"  upstream skipped: {r['skip']}", file=sys.stderr, flush=True)
                row["upstream_skipped"] = r["skip"]
                upstream = False
                continue
            ups.append(r)
            drop_cache([up_out])  # flush its dirty pages now, not during the next run
            if i == 0:
                row["identical"], row["cmp"] = same_bytes(out, up_out)
    out.unlink(missing_ok=True)
    up_out.unlink(missing_ok=True)
    enc_out.unlink(missing_ok=True)
    row["floor"], row["llmkit"] = summary(floors), summary(mines)
    for mode, runs in encs.items():
        e = row["enc"][mode]
        e.update(summary(runs))
        e["vs_llmkit"] = e["seconds"] / row["llmkit"]["seconds"]
        e["paired_vs_llmkit"] = statistics.median(r["seconds"] / m["seconds"] for r, m in zip(runs, mines, strict=True))
        e["rss_vs_llmkit_mib"] = (e["peak_rss"] - row["llmkit"]["peak_rss"]) / MIB
    if ups:
        row["upstream"] = summary(ups)
    return row


def table(rows: list[dict]) -> None:
    """The human-readable report."""
    print(
        f"\nHF LLaMA-7B layer shapes (hidden {HIDDEN}, intermediate {INTERMEDIATE}, vocab {VOCAB}), fp16 "
        f"safetensors -> fp16 .ckpt with MindFormers names; inputs evicted before each run; medians\n"
    )
    print(
        f"{'layers':>6} {'inputs GB':>9} {'floor s':>8} {'llmkit s':>9} {'/floor':>7} {'upstream s':>11} "
        f"{'llmkit RSS MiB':>15} {'upstream RSS MiB':>17}  identical bytes"
    )
    for r in rows:
        up = r.get("upstream")
        ident = ("yes" if r["identical"] else "no") if "identical" in r else "-"
        print(
            f"{r['layers']:>6} {r['input_bytes'] / 1e9:>9.2f} {r['floor']['seconds']:>8.2f} "
            f"{r['llmkit']['seconds']:>9.2f} {r['llmkit']['seconds'] / r['floor']['seconds']:>6.2f}x "
            f"{up['seconds'] if up else float('nan'):>11.2f} {r['llmkit']['peak_rss'] / MIB:>15.0f} "
            f"{up['peak_rss'] / MIB if up else float('nan'):>17.0f}  {ident}"
        )
    for r in rows:
        print(
            f"  {r['layers']} layer(s): floor runs {r['floor']['all_seconds']} s, llmkit runs "
            f"{r['llmkit']['all_seconds']} s"
            + (f", upstream runs {r['upstream']['all_seconds']} s" if "upstream" in r else "")
        )
        if "identical" in r:
            print(f"    identical bytes: {'yes' if r['identical'] else 'no'} ({r['cmp']})")
        if "upstream_skipped" in r:
            print(f"    upstream skipped: {r['upstream_skipped']}")
        for mode, e in r.get("enc", {}).items():
            print(f"    llmkit+{mode} runs {e['all_seconds']} s")
    if not any(r.get("enc") for r in rows):
        return
    print(f"\nencrypted to-ckpt (random 16-byte key; target: within {TARGET}x of unencrypted llmkit, same RSS)\n")
    print(
        f"{'layers':>6} {'arm':>16} {'median s':>9} {'/llmkit':>8} {'paired':>7} {'/floor':>7} {'RSS MiB':>8} "
        f"{'vs llmkit':>10} {'output GB':>10}  decrypts to the same tensors"
    )
    for r in rows:
        print(
            f"{r['layers']:>6} {'llmkit':>16} {r['llmkit']['seconds']:>9.2f} {1:>7.2f}x {1:>6.2f}x "
            f"{r['llmkit']['seconds'] / r['floor']['seconds']:>6.2f}x {r['llmkit']['peak_rss'] / MIB:>8.0f} "
            f"{'':>10} {r['output_bytes'] / 1e9:>10.3f}  -"
        )
        for mode, e in r.get("enc", {}).items():
            v = e.get("verify", {})
            same = "yes" if v.get("same") and v.get("stream_same") else "no"
            print(
                f"{'':>6} {'llmkit+' + mode:>16} {e['seconds']:>9.2f} {e['vs_llmkit']:>7.2f}x "
                f"{e['paired_vs_llmkit']:>6.2f}x {e['seconds'] / r['floor']['seconds']:>6.2f}x "
                f"{e['peak_rss'] / MIB:>8.0f} {e['rss_vs_llmkit_mib']:>+10.0f} {e['output_bytes'] / 1e9:>10.3f}  "
                f"{same}" + ("" if e["vs_llmkit"] <= TARGET else f"  (over {TARGET}x)")
            )
    for r in rows:
        for mode, e in r.get("enc", {}).items():
            v = e.get("verify", {})
            print(
                f"  {r['layers']} layer(s) {mode}: decrypts to the same tensors: "
                f"{'yes' if v.get('same') else 'no'} ({v.get('tensors')} tensors, one at a time; "
                f"{v.get('blocks')} blocks; whole decrypted stream == unencrypted file: "
                f"{'yes' if v.get('stream_same') else 'no'}; checker peak RSS {v.get('peak_rss', 0) / MIB:.0f} MiB)"
                + (f"; problems: {v['problems']}" if v.get("problems") else "")
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="2,6", help="layer counts (comma-separated)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per contender and size (median reported)")
    ap.add_argument("--no-upstream", action="store_true", help="time llmkit and the floor only")
    ap.add_argument(
        "--enc-modes",
        default="AES-GCM",
        help=f'encrypted arms, comma-separated, of {", ".join(ENC_MODES)} ("" for none)',
    )
    ap.add_argument("--keep", type=Path, default=None, help="generate the models in DIR and keep them (reused)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the temp folder goes (default: $TMPDIR)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    enc_modes = list(dict.fromkeys(m.strip() for m in args.enc_modes.split(",") if m.strip()))
    for m in enc_modes:
        if m not in ENC_MODES:
            ap.error(f"--enc-modes: {m!r} is not one of {', '.join(ENC_MODES)}")
    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-ckpt-", dir=args.workdir))
    models = args.keep or work
    models.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    upstream = not args.no_upstream
    try:
        for layers in sorted({int(x) for x in args.layers.split(",")}):
            rows.append(bench(work, models, layers, args.repeat, upstream, enc_modes))
            upstream = upstream and "upstream_skipped" not in rows[-1]
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        table(rows)


if __name__ == "__main__":
    main()
