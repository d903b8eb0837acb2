"""Every tensor job on a whole LLaMA-7B (32 layers, 6.7 B parameters, 13.5 GB fp16) beside its I/O floor.

    flock /tmp/llmkit-bench.lock .venv/bin/python benchmarks/full_depth.py [--layers 32] \
        [--only recover,to-ckpt] [--repeat 1] [--workdir DIR --keep]

At full depth the inputs no longer fit in the page cache beside the output, which the 2/6-layer runs of
the other scripts never show. Generated once into ``--workdir`` (a temp folder by default, removed at the
end; with ``--keep`` kept, and reused by a later run with the same folder and ``--layers``), LLaMA-7B
shapes (hidden 4096, intermediate 11008, vocab 32000, 32 heads):

- ``base``: fp16 Hugging Face safetensors (1 GiB shards), by ``to_ckpt.py``'s generator (seed 1);
- ``diff``: a second such model (seed 2), used as an fp16 weight diff;
- ``adapter-qv`` and ``adapter-chinese``: ``merge_lora.generate_adapter`` (r=8 on q/v; r=8 on the 7
  linears + 49953-row embed_tokens/lm_head);
- ``meta``: ``consolidated.00.pth`` + ``params.json``, made from the base by llmkit's own ``to_meta``.

Jobs (``--only``): ``recover`` (fp16 base + fp16 diff -> fp16 safetensors, ``recover(dtype="fp16")``),
``merge-qv``, ``merge-chinese`` (``merge_lora``, fp16 kept), ``to-ckpt`` (one fp16 ``.ckpt``),
``from-meta`` (the meta folder -> safetensors), ``to-meta`` (the base -> one Meta shard), ``chain`` (the
Meta folder + the diff -> recover -> merge-lora qv -> one ``.ckpt``, one pass: ``llmkit.chain``, nothing but
the ``.ckpt`` written) and ``pipe`` (the same as three ``llmkit`` commands joined by tensor pipes: ``-o -``
into ``-``, timed with their start-up). recover runs
with no integrity check: ``--check-sum`` and ``--reference`` are off by default, and the published MD5
tables name ``pytorch_model-*.bin`` files, never the safetensors written here, so nothing random weights
cannot pass is checked. Per job, ``--repeat`` times (default once), alternating:

- ``llmkit``: the library call in a fresh process (``--child``; imports before the clock), after every
  generated file was evicted from the page cache (``io_floor.drop_cache``) and the previous output's
  dirty pages flushed (``os.sync()``). Recorded: wall seconds, peak RSS (VmHWM), and the process's own
  ``/proc/self/io`` ``read_bytes`` / ``write_bytes`` over the call (bytes that really came from or went
  to the disk, read-ahead included), beside the inputs' and the output's sizes: reading more than the
  inputs means pages were evicted before use and read again;
- ``floor`` (``io_floor.measure_floor``): read every input once, write the output's bytes, fsync.

Each output is deleted right after its run (before the floor), so the disk holds the models and one
output at a time; the free space is checked before anything is generated. Prints one JSON line per
job (``job``, ``llmkit``, ``floor``, ``ratio``, ``rss``, ``read_bytes``, ``input_bytes``,
``write_bytes``, ``output_bytes``, ...) as it finishes, then a table. ``run.py --full`` runs this and
renders the "Full depth" section of docs/benchmarks.md.
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
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import to_ckpt
from io_floor import drop_cache, measure_floor

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HIDDEN, INTERMEDIATE, VOCAB, HEADS = to_ckpt.HIDDEN, to_ckpt.INTERMEDIATE, to_ckpt.VOCAB, to_ckpt.HEADS
CHINESE_VOCAB, RANK = 49953, 8
GB = 1e9

# job -> (what it does, the generated models it reads, in the order its call takes them)
JOBS: dict[str, tuple[str, tuple[str, ...]]] = {
    "recover": ("recover fp16 base + fp16 diff -> fp16", ("base", "diff")),
    "merge-qv": ("merge-lora (qv) -> fp16", ("base", "adapter-qv")),
    "merge-chinese": ("merge-lora (chinese) -> fp16", ("base", "adapter-chinese")),
    "to-ckpt": ("to-ckpt fp16 -> one .ckpt", ("base",)),
    "from-meta": ("from-meta (1 shard) -> fp16", ("meta",)),
    "to-meta": ("to-meta -> 1 shard", ("base",)),
    "chain": ("Meta + fp16 diff + LoRA (qv) -> .ckpt, one pass", ("meta", "diff", "adapter-qv")),
    "pipe": ("the same through tensor pipes (3 commands)", ("meta", "diff", "adapter-qv")),
    "to-gguf-f16": ("to-gguf f16 -> one .gguf", ("gguf-src",)),
    "to-gguf-q8_0": ("to-gguf q8_0 -> one .gguf", ("gguf-src",)),
}
CKPT_OUT = {"to-ckpt", "chain", "pipe"}  # jobs whose output is one .ckpt file
GGUF_OUT = {"to-gguf-f16": "f16", "to-gguf-q8_0": "q8_0"}  # one .gguf file, beside llama.cpp's converter
FLOOR_TARGET, PIPE_TARGET = 1.2, 1.3  # llmkit / floor: three processes and their start-up may take 1.3x
TARGETS = {"pipe": PIPE_TARGET, "to-gguf-q8_0": 2.0}  # q8_0: quantizing is compute, 2x the I/O floor
SEEDS = {"base": 1, "diff": 2}
SEED_AT = "torch.Generator().manual_seed(layers)"  # to_ckpt.GENERATE seeds by depth; here by model


# ------------------------------------------------------------------------------------------ the child


def child(job: str, out: Path, ins: list[Path]) -> None:
    """One job's library call, timed from after its imports; prints one JSON line."""
    call: Callable[[], object]
    if job == "recover":
        from llmkit.recover import recover

        call = partial(recover, ins[0], ins[1], out, dtype="fp16")
    elif job.startswith("merge-"):
        from llmkit.lora import merge_lora

        call = partial(merge_lora, ins[0], [ins[1]], out)
    elif job == "to-ckpt":
        from llmkit.convert.ckpt import ToCkptOptions
        from llmkit.convert.ckpt import to_ckpt as run_to_ckpt

        call = partial(run_to_ckpt, ToCkptOptions(ins[0], out))
    elif job == "from-meta":
        from llmkit.convert import FromMetaOptions, from_meta

        call = partial(from_meta, FromMetaOptions(ins[0], out))
    elif job == "chain":
        call = partial(one_pass, out, ins)
    elif job == "pipe":
        return piped(out, ins)
    elif job in GGUF_OUT:
        from llmkit.convert.gguf import ToGGUFOptions, to_gguf

        call = partial(to_gguf, ToGGUFOptions(ins[0], out, outtype=GGUF_OUT[job]))
    else:
        from llmkit.convert import ToMetaOptions, to_meta

        call = partial(to_meta, ToMetaOptions(ins[0], out, shards=1))
    before = proc_io()
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
    after = proc_io()
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "io": {k: after[k] - before[k] for k in after}}))


def one_pass(out: Path, ins: list[Path]) -> None:
    """recover (the Meta base + the fp16 diff) -> merge-lora -> to-ckpt as one chain (``llmkit.chain``):
    the inner outputs are named but never written."""
    from llmkit.chain import run_chain
    from llmkit.convert.ckpt import ToCkptOptions
    from llmkit.convert.ckpt import to_ckpt as run_to_ckpt
    from llmkit.lora import MergeOptions
    from llmkit.lora import run as merge
    from llmkit.recover import RecoverOptions
    from llmkit.recover import run as recover

    recovered, merged = out.with_name("inner-recovered"), out.with_name("inner-merged")
    run_chain(
        [
            partial(recover, RecoverOptions(ins[0], ins[1], recovered, dtype="fp16", dry_run=True)),
            partial(merge, MergeOptions(recovered, (ins[2],), merged, dry_run=True)),
            partial(run_to_ckpt, ToCkptOptions(merged, out)),
        ]
    )


def piped(out: Path, ins: list[Path]) -> None:
    """The same chain as three commands joined by tensor pipes, under ``set -o pipefail``; timed with their
    start-up. Peak RSS: the largest of the three; disk bytes: their block counts (getrusage)."""
    import resource
    import shlex

    llmkit = shlex.quote(str(Path(sys.executable).with_name("llmkit")))
    meta, diff, lora, target = (shlex.quote(str(p)) for p in (*ins, out))
    script = (
        f"{llmkit} recover --base {meta} --diff {diff} --dtype fp16 -o - --quiet"
        f" | {llmkit} merge-lora --base - --lora {lora} -o - --quiet"
        f" | {llmkit} to-ckpt - -o {target} --quiet"
    )
    start = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", script], check=True)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    io = {"read_bytes": usage.ru_inblock * 512, "write_bytes": usage.ru_oublock * 512}
    print(json.dumps({"seconds": seconds, "peak_rss": usage.ru_maxrss * 1024, "io": io}))


def proc_io() -> dict[str, int]:
    """This process's I/O counters (all its threads): rchar, wchar, read_bytes, write_bytes, ..."""
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def run_child(job: str, out: Path, ins: list[Path]) -> dict:
    return json.loads(python(job, __file__, "--child", job, str(out), *map(str, ins)).strip().splitlines()[-1])


def python(what: str, *args: str) -> str:
    """``python ARGS`` in a fresh process with this checkout's llmkit: its stdout (a failure raises
    RuntimeError with the end of its stderr; the child's output never reaches this script's stdout)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed ({r.returncode}): {r.stderr.strip()[-1500:]}")
    return r.stdout


# ------------------------------------------------------------------------------------------ the models


def model_bytes(layers: int, vocab: int = VOCAB) -> int:
    """fp16 bytes of a LLaMA-7B-shaped model: embed_tokens and lm_head of ``vocab`` rows, ``layers`` layers."""
    layer = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTERMEDIATE + 2 * HIDDEN
    return 2 * (2 * vocab * HIDDEN + layers * layer + HIDDEN)


def adapter_bytes(layers: int, kind: str) -> int:
    shapes = [(HIDDEN, HIDDEN)] * 2 if kind == "qv" else [(HIDDEN, HIDDEN)] * 4 + [(HIDDEN, INTERMEDIATE)] * 3
    lora = layers * sum(RANK * (a + b) for a, b in shapes) * 2
    return lora + (2 * CHINESE_VOCAB * HIDDEN * 2 if kind == "chinese" else 0)


def planned_bytes(name: str, layers: int) -> int:
    if name.startswith("adapter-"):
        return adapter_bytes(layers, name.split("-", 1)[1])
    return 0 if name == "gguf-src" else model_bytes(layers)  # gguf-src: the base's files, hard-linked


def output_bytes(job: str, layers: int) -> int:
    return model_bytes(layers, CHINESE_VOCAB if job == "merge-chinese" else VOCAB)


def needed(jobs: list[str]) -> list[str]:
    """The generated models these jobs read, in generation order (meta is made from the base)."""
    names = {n for job in jobs for n in JOBS[job][1]}
    if "meta" in names or "gguf-src" in names:
        names.add("base")
    return [n for n in ("base", "diff", "adapter-qv", "adapter-chinese", "meta", "gguf-src") if n in names]


def check_disk(work: Path, todo: list[str], jobs: list[str], layers: int) -> None:
    """Refuse before generating when the models still to make plus the largest output do not fit."""
    parts = [(n, planned_bytes(n, layers)) for n in todo]
    # one output at a time; a to-gguf job's beside the peer converter's (compared, then both removed)
    largest = max(output_bytes(j, layers) * (2 if j in GGUF_OUT else 1) for j in jobs)
    parts.append(("the largest output, one at a time", largest))
    need = int(sum(b for _, b in parts) * 1.02) + 512 * 2**20  # shard headers, config files, slack
    free = shutil.disk_usage(work).free
    if free < need:
        detail = " + ".join(f"{n} {b / GB:.1f} GB" for n, b in parts)
        raise SystemExit(
            f"not enough disk in {work}: {free / GB:.1f} GB free, need about {need / GB:.1f} GB ({detail}). "
            "Free some space, point --workdir at a larger disk, or pick fewer jobs with --only."
        )


def generate(name: str, folder: Path, layers: int, base: Path) -> None:
    """Make one model in ``folder`` (in a subprocess: the parent stays small)."""
    shutil.rmtree(folder, ignore_errors=True)
    if name == "meta":
        run_child("to-meta", folder, [base])
        return
    if name == "gguf-src":  # the base with a LLaMA-sized SentencePiece tokenizer: what a GGUF header needs
        folder.mkdir(parents=True)
        for p in files(base):
            if p.name != "config.json":
                os.link(p, folder / p.name)
        config = json.loads((base / "config.json").read_text())  # a checkpoint's config names its class
        (folder / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}, indent=2))
        code = (
            f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); from pathlib import Path; "
            f"from gguf_peers import write_sentencepiece_tokenizer; write_sentencepiece_tokenizer(Path(sys.argv[1]), {VOCAB})"
        )
        python("generating the tokenizer", "-c", code, str(folder))
        return
    if name.startswith("adapter-"):
        code = (
            f"import sys; sys.path.insert(0, {str(BENCH)!r}); from pathlib import Path; "
            f"from merge_lora import generate_adapter; generate_adapter(Path(sys.argv[1]), {layers}, {name[8:]!r})"
        )
        python(f"generating {name}", "-c", code, str(folder))
        return
    if SEED_AT not in to_ckpt.GENERATE:
        raise SystemExit(f"to_ckpt.GENERATE no longer seeds with {SEED_AT!r}: update full_depth.py")
    code = to_ckpt.GENERATE.replace(SEED_AT, "torch.Generator().manual_seed(int(sys.argv[8]))")
    args = (layers, HIDDEN, INTERMEDIATE, VOCAB, HEADS, to_ckpt.SHARD_SIZE, SEEDS[name])
    python(f"generating {name}", "-c", code, str(folder), *map(str, args))


def prepare(work: Path, jobs: list[str], layers: int, made: list[Path]) -> dict[str, Path]:
    """The models the jobs need (reused when a kept run made them); the folders this run makes are added
    to ``made`` as they are started (so a failed one is cleaned up too)."""
    folders = {n: work / f"{n}-{layers}l" for n in needed(jobs)}
    todo = [n for n, f in folders.items() if not done_mark(f).is_file()]
    check_disk(work, todo, jobs, layers)
    for n in todo:
        t = time.perf_counter()
        made.append(folders[n])
        generate(n, folders[n], layers, folders["base"])
        done_mark(folders[n]).write_text("")
        size = sum(p.stat().st_size for p in files(folders[n]))
        log(f"generated {n}: {layers} layers, {size / GB:.2f} GB in {time.perf_counter() - t:.0f} s")
    return folders


def done_mark(folder: Path) -> Path:
    return folder.with_name(folder.name + ".done")


def files(path: Path) -> list[Path]:
    """A file, or every regular file under a folder."""
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ one job


# from-meta of one 4096-wide shard also checks it against LLaMA-7B's published MD5 (a thread hashing the
# whole file while the conversion streams): its floor is the larger of the I/O floor and the MD5 of its
# inputs alone (evicted first, one core), as for a verified decrypt.
HASHED = {"from-meta"}
MD5_ALONE = r"""
import hashlib, sys, time
start = time.perf_counter()
for p in sys.argv[1:]:
    h = hashlib.md5()
    with open(p, "rb", buffering=0) as f:
        buf = bytearray(8 << 20)
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
print(time.perf_counter() - start)
"""


def bench_job(job: str, work: Path, models: dict[str, Path], layers: int, repeat: int) -> dict:
    """``repeat`` llmkit runs, each followed by a floor run, every one from an evicted page cache."""
    ins = [models[n] for n in JOBS[job][1]]
    inputs = [p for folder in ins for p in files(folder)]
    generated = [p for folder in models.values() for p in files(folder)]
    out = work / (f"out-{job}.ckpt" if job in CKPT_OUT else f"out-{job}.gguf" if job in GGUF_OUT else f"out-{job}")
    mine, floors, wb_floors, hashes, peers = [], [], [], [], []
    out_bytes = 0
    for _ in range(repeat):
        remove(out)
        os.sync()  # the previous output's dirty pages go now, not during this run
        drop_cache(generated)
        mine.append(run_child(job, out, ins))
        out_bytes = sum(p.stat().st_size for p in files(out))
        if job in GGUF_OUT:
            peers.append(run_converter(ins[0], GGUF_OUT[job], work / "peer.gguf", generated))
            peers[-1]["identical"] = sha256_of(out) == sha256_of(work / "peer.gguf")
            remove(work / "peer.gguf")
        remove(out)
        os.sync()
        floors.append(measure_floor(inputs, out_bytes, work / "floor.out"))
        wb_floors.append(measure_floor(inputs, out_bytes, work / "floor.out", writeback=True))
        if job in HASHED:
            drop_cache(inputs)
            hashes.append(float(python("md5 of the inputs", "-c", MD5_ALONE, *map(str, inputs))))
        log(f"{job}: llmkit {mine[-1]['seconds']:.1f} s, floor {floors[-1]['seconds']:.1f} s")
    s, io_floor = statistics.median(r["seconds"] for r in mine), statistics.median(r["seconds"] for r in floors)
    md5_floor = statistics.median(hashes) if hashes else None
    f = max(io_floor, md5_floor or 0.0)
    return {
        "job": job,
        "label": JOBS[job][0],
        "layers": layers,
        "llmkit": s,
        "floor": f,
        "io_floor": io_floor,
        "writeback_floor": statistics.median(r["seconds"] for r in wb_floors),
        "md5_floor": md5_floor,
        "ratio": s / f,
        "target": TARGETS.get(job, FLOOR_TARGET),
        "rss": max(r["peak_rss"] for r in mine),
        "read_bytes": max(r["io"]["read_bytes"] for r in mine),
        "input_bytes": sum(p.stat().st_size for p in inputs),
        "write_bytes": max(r["io"]["write_bytes"] for r in mine),
        "output_bytes": out_bytes,
        "floor_rss": max(r["peak_rss"] for r in floors),
        "llmkit_runs": [round(r["seconds"], 2) for r in mine],
        "floor_runs": [round(r["seconds"], 2) for r in floors],
        "io": mine[-1]["io"],
        **(
            {
                "peer": statistics.median(p["seconds"] for p in peers),
                "peer_rss": max(p["peak_rss"] for p in peers),
                "peer_identical": all(p["identical"] for p in peers),
            }
            if peers
            else {}
        ),
    }


PEER = r"""
import resource, subprocess, sys, time
start = time.perf_counter()
r = subprocess.run([sys.executable, *sys.argv[1:]], capture_output=True, text=True)
seconds = time.perf_counter() - start
if r.returncode:
    sys.exit(r.stderr[-1500:])
print(seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def run_converter(model: Path, outtype: str, out: Path, generated: list[Path]) -> dict:
    """llama.cpp's ``convert_hf_to_gguf.py`` (the copy llama-cpp-python vendors) on the same folder, from an
    evicted page cache: wall seconds (its start-up included) and peak RSS."""
    sys.path.insert(0, str(ROOT / "tests"))
    from gguf_peers import converter_dir

    script = converter_dir() / "convert_hf_to_gguf.py"
    os.sync()
    drop_cache(generated)
    words = python(
        "convert_hf_to_gguf.py", "-c", PEER, str(script), str(model), "--outtype", outtype, "--outfile", str(out)
    )
    seconds, rss = words.split()
    log(f"convert_hf_to_gguf.py --outtype {outtype}: {float(seconds):.1f} s")
    return {"seconds": float(seconds), "peak_rss": int(rss)}


def sha256_of(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 << 20)
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


def table(rows: list[dict]) -> None:
    print(
        f"\n{'job':<36} {'llmkit s':>9} {'floor s':>8} {'ratio':>6} {'RSS MiB':>8} "
        f"{'read GB / inputs':>17} {'written GB / output':>20}"
    )
    for r in rows:
        if "error" in r:
            print(f"{JOBS[r['job']][0]:<36} failed: {r['error'][:200]}")
            continue
        print(
            f"{r['label']:<36} {r['llmkit']:>9.1f} {r['floor']:>8.1f} {r['ratio']:>5.2f}x {r['rss'] / 2**20:>8.0f} "
            f"{r['read_bytes'] / GB:>8.2f} / {r['input_bytes'] / GB:<6.2f} "
            f"{r['write_bytes'] / GB:>10.2f} / {r['output_bytes'] / GB:<6.2f}"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), [Path(p) for p in sys.argv[4:]])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32, help="layers of LLaMA-7B shape (2 for a quick check)")
    ap.add_argument("--only", default="", help=f"comma-separated jobs, of {', '.join(JOBS)} (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="llmkit and floor runs per job (medians reported)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the models are generated (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated models (reused by a later run)")
    args = ap.parse_args()
    jobs = [j.strip() for j in args.only.split(",") if j.strip()] or list(JOBS)
    for j in jobs:
        if j not in JOBS:
            ap.error(f"--only: {j!r} is not one of {', '.join(JOBS)}")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="llmkit-bench-full-"))
    work.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    rows: list[dict] = []
    try:
        try:
            models = prepare(work, jobs, args.layers, made)
        except RuntimeError as e:
            raise SystemExit(str(e)) from None
        for job in jobs:
            try:
                rows.append(bench_job(job, work, models, args.layers, args.repeat))
            except RuntimeError as e:
                rows.append({"job": job, "label": JOBS[job][0], "layers": args.layers, "error": str(e)})
                log(f"!! {job}: {e}")
            print(json.dumps(rows[-1]), flush=True)
    finally:
        outs = [work / f"out-{j}" for j in JOBS] + [work / f"out-{j}.ckpt" for j in CKPT_OUT]
        outs += [work / f"out-{j}.gguf" for j in GGUF_OUT] + [work / "floor.out", work / "peer.gguf"]
        for p in outs:
            if p.exists():
                remove(p)
        if not args.keep:
            for folder in made:
                if folder.exists():
                    remove(folder)
                done_mark(folder).unlink(missing_ok=True)
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"models kept in {work}")
    table(rows)
    if any("error" in r for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
