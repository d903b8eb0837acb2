"""The benchmark suite's shared settings and its report: ``docs/benchmarks.md`` (table, machine, notes) and
``docs/benchmarks.svg`` (time and peak memory per job, hand-written SVG). ``run.py`` runs the jobs."""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
LOCK = Path("/tmp/llmkit-bench.lock")
MIB = 1 << 20
FLOOR_TARGET = 1.2  # the bound: llmkit within 1.2x of the I/O floor
FLAT_MIB = 64  # llmkit's RSS may grow by at most this much from the smaller depth to the larger one
JOBS = ("decrypt", "verify", "recover", "merge-lora", "to-ckpt", "from-meta")

# Sizes: two depths per job. Layer counts for the model jobs; bytes for decrypt (one file) and verify
# (two files, so --jobs 2 has work for both cores).
# merge-lora: peft runs beside llmkit for the ``peft_every_depth`` adapters at every depth, for the
# ``peft_smallest_depth`` ones at the smallest only: peft on the Chinese-LLaMA adapter resizes the
# vocabulary with transformers' default mean resizing, a 4096 x 4096 covariance of the fp16 embedding on
# the CPU: ~5 min on 2 cores whatever the depth (and llmkit does not do it), so once is enough.
FULL = {
    "decrypt": ["512MiB", "1GiB"],
    "verify": ["256MiB", "512MiB"],
    "verify_files": 2,
    "layers": [2, 6],
    "repeat": 3,
    "merge_adapters": "qv,chinese",
    "peft_every_depth": {"qv"},
    "peft_smallest_depth": {"chinese"},
}
QUICK = {
    "decrypt": ["16MiB", "32MiB"],
    "verify": ["8MiB", "16MiB"],
    "verify_files": 2,
    "layers": [1, 2],
    "repeat": 1,
    "merge_adapters": "qv,chinese",
    "peft_every_depth": {"qv"},
    "peft_smallest_depth": set(),
}

UPSTREAM = {
    "decrypt": "TechGPT-1.0 utils/decrypt.py loop (pure-Python XOR, whole file in RAM)",
    "verify": "GNU md5sum -c",
    "recover": "KnowLM tools/weight_diff.py recover (two fp32 models via from_pretrained, save_pretrained)",
    "merge-lora": "peft: from_pretrained, resize_token_embeddings, PeftModel.merge_and_unload, save_pretrained",
    "to-ckpt": "MindFormers convert_weight.py (from_pretrained fp32, mindspore.save_checkpoint)",
    "from-meta": None,
}
FLOOR = {
    "decrypt": "`cp` + `sync FILE` of the encrypted file (warm page cache; decrypt.py's like-for-like number)",
    "verify": None,
    "recover": "io_floor.py: read base + diff shards (evicted from the page cache), write the output's bytes, fsync",
    "merge-lora": "io_floor.py: read base + adapter (evicted), write the output's bytes, fsync",
    "to-ckpt": "io_floor.py: read the safetensors shards (evicted), write the .ckpt's bytes, fsync",
    "from-meta": "io_floor.py: read both consolidated.*.pth (evicted), write the output's bytes, fsync",
}


SCRIPT = {
    "decrypt": "decrypt.py",
    "verify": "verify.py",
    "recover": "recover.py",
    "merge-lora": "merge_lora.py",
    "to-ckpt": "to_ckpt.py",
    "from-meta": "meta_convert.py",
}


def missing(r: dict, what: str) -> str:
    """Why a row has no ``what`` (upstream_s, floor_s, llmkit_rss, upstream_rss): a few words for the chart."""
    base = r["job"].split(" ")[0]
    script = SCRIPT.get(base, "its script")
    if what == "upstream_s":
        return f"no upstream arm in {script}" if UPSTREAM.get(base) is None else "not run at this depth"
    if what == "upstream_rss" and r["upstream_s"] is None:
        return missing(r, "upstream_s")
    return f"not measured by {script}"


# ------------------------------------------------------------------------------------------ the machine


def machine() -> dict:
    cpu = "unknown"
    flags = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    with open("/proc/meminfo") as f:
        mem = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
    tmp = tempfile.gettempdir()
    du = shutil.disk_usage(tmp)
    df = subprocess.run(["df", "-PT", tmp], capture_output=True, text=True, check=False).stdout.splitlines()
    fs = df[-1].split()[1] if len(df) > 1 else "?"

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "vm": " hypervisor " in flags,
        "ram_bytes": mem,
        "tmp": tmp,
        "tmp_fs": fs,
        "disk_free_bytes": du.free,
        "disk_total_bytes": du.total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "peft": version("peft"),
        "mindspore": version("mindspore"),
        "numpy": version("numpy"),
        "commit": commit + (" + local changes" if dirty else ""),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


# ------------------------------------------------------------------------------------------ the docs


def fmt_s(v: float | None) -> str:
    return "n/a" if v is None else (f"{v:.1f}" if v >= 100 else f"{v:.2f}")


def fmt_mib(v: int | None) -> str:
    return "n/a" if v is None else f"{v / MIB:,.0f}"


def job_notes(job: str, rows: list[dict], cfg: dict) -> list[str]:
    """What the job's numbers are (from the scripts' docstrings) and what its script does not measure."""
    base = job.split(" ")[0]
    g = [r for r in rows if r["job"] == job]
    notes = []
    if base == "decrypt":
        notes.append(
            "`benchmarks/decrypt.py --published`: a stored zip64 `pytorch_model.bin` encrypted by "
            "`llmkit encrypt`, with a checksum table listing the md5 of the `.enc` and of the plaintext, so "
            "every timed run hashes the output with MD5 and must report it verified. llmkit: "
            "`llmkit.crypto.decrypt` in-process (median); the CLI wall time incl. start-up was "
            + ", ".join(f"{fmt_s(r['extra'].get('cli_s'))} s" for r in g)
            + ". Peak RSS is the CLI process's. Floor: `cp` + `sync FILE` on a warm page cache (decrypt.py "
            "measures no cold-cache floor). Upstream: "
            + UPSTREAM["decrypt"]
            + (
                "; its output was compared with llmkit's: "
                + ", ".join(
                    f"{r['depth']}: {'identical' if r['same_output'] else 'DIFFERENT'}"
                    for r in g
                    if r["same_output"] is not None
                )
                if any(r["same_output"] is not None for r in g)
                else ""
            )
            + ". decrypt.py does not print the upstream loop's peak RSS (it holds the whole file, plus a "
            "copy per re-slice), so that column is n/a."
        )
    elif base == "verify":
        notes.append(
            f"`benchmarks/verify.py --files {cfg['verify_files']} --json`: random files, the table written by "
            "`md5sum`, page cache warm (one untimed pass), best of the runs. llmkit: `verify_files(jobs=2)` "
            "in-process; the CLI (`llmkit verify --jobs 2`, wall time incl. start-up) took "
            + ", ".join(f"{fmt_s(r['extra'].get('cli_jobs2_s'))} s" for r in g)
            + " (`import llmkit.cli` alone: "
            + ", ".join(f"{fmt_s(r['extra'].get('startup_s'))} s" for r in g)
            + "). Upstream: `md5sum -c` (one core, C), which is also the one-core hash floor. verify.py "
            "measures no I/O floor and no peak RSS, so those columns are n/a (verify writes nothing; its "
            "floor is reading the files, and MD5 on this CPU is slower than that)."
        )
    elif base == "recover":
        notes.append(
            "`benchmarks/recover.py`: fp16 `.bin` base + fp32 `.bin` diff (ZhiXi layout) -> fp32 safetensors, "
            "fsynced; every contender in a fresh process with its inputs evicted; medians. Upstream: "
            + UPSTREAM["recover"]
            + " (not fsynced, which favours it); recover.py runs it at one layer count "
            "(`--upstream-layers`), the smaller, because it holds two fp32 models"
            + (
                "; outputs identical tensor by tensor: "
                + ", ".join(
                    f"{r['depth']}: {'yes' if r['same_output'] else 'NO'}" for r in g if r["same_output"] is not None
                )
                if any(r["same_output"] is not None for r in g)
                else ""
            )
            + "."
        )
    elif base == "merge-lora":
        kind = job.split("(")[1].rstrip(")")
        what = (
            "r=8 alpha=16 on q_proj/v_proj (CuteGPT style)"
            if kind == "qv"
            else "r=8 alpha=32 on the 7 linear layers + full embed_tokens/lm_head of 49953 rows (Chinese-LLaMA style, "
            "vocabulary resized 32000 -> 49953)"
        )
        nomean = [r["extra"].get("peft_nomean_s") for r in g if r["extra"].get("peft_nomean_s")]
        notes.append(
            f"`benchmarks/merge_lora.py --adapters {kind}`: fp16 base, adapter {what}. llmkit and floor from "
            "`--floor N` (inputs evicted, medians, to fsynced files); upstream from the peft run (one run, "
            "page cache not evicted, timed to durable files: its output fsynced after save_pretrained), "
            + (
                "outputs identical tensor by tensor: "
                + ", ".join(
                    f"{r['depth']}: {'yes' if r['same_output'] else 'NO'}" for r in g if r["same_output"] is not None
                )
                + ". "
                if any(r["same_output"] is not None for r in g)
                else ""
            )
            + "inputs GB: the base model (the adapter is not counted). llmkit RSS: the largest of its runs (the `--floor` lines print GB with 2 decimals)."
            + (
                " peft with `mean_resizing=False` took "
                + ", ".join(f"{fmt_s(v)} s" for v in nomean)
                + " (transformers' default mean resizing samples the new rows from a 4096x4096 covariance "
                "of the fp16 embedding, computed on the CPU)."
                if nomean
                else ""
            )
            + (
                " peft ran at the smallest depth only: its time there is mostly that resizing, which "
                "does not depend on the depth."
                if kind in cfg["peft_smallest_depth"]
                else ""
            )
        )
    elif base == "to-ckpt":
        notes.append(
            "`benchmarks/to_ckpt.py --json`: fp16 HF safetensors (1 GiB shards) -> one fsynced fp16 `.ckpt` "
            "with MindFormers names; inputs evicted before each run; medians. Upstream: "
            + UPSTREAM["to-ckpt"]
            + " (not fsynced, which favours it)"
            + (
                "; its file is byte-identical to llmkit's: "
                + ", ".join(
                    f"{r['depth']}: {'yes' if r['same_output'] else 'NO'}" for r in g if r["same_output"] is not None
                )
                if any(r["same_output"] is not None for r in g)
                else ""
            )
            + "."
        )
        for r in g:
            if r["extra"].get("upstream_skipped"):
                notes.append(f"upstream skipped at {r['depth']}: {r['extra']['upstream_skipped']}")
    elif base == "from-meta":
        notes.append(
            "`benchmarks/meta_convert.py`: fp16 `consolidated.00/01.pth` (every parallel weight split over 2 "
            "shards, as Meta's 13B) -> fsynced safetensors; inputs evicted; medians. No upstream arm in "
            "meta_convert.py (transformers' `convert_llama_weights_to_hf.py` would be the one), and it prints "
            "peak RSS in GB with 2 decimals (10 MB resolution)."
        )
    return notes


def over_floor_note(r: dict, rows: list[dict]) -> str:
    """Why a row is above FLOOR_TARGET x the floor, where the benchmark's own notes explain it; else the
    numbers (and, across depths, what one more unit of depth cost llmkit and the floor)."""
    base = r["job"].split(" ")[0]
    if base == "decrypt" and r["hash_floor_s"]:
        rate = r["input_bytes"] / 2**30 / r["hash_floor_s"] if r["input_bytes"] else None
        return (
            f"{r['job']} {r['depth']}: the floor here is `cp` + `sync`, but a verified decrypt must MD5 every "
            f"byte it writes, and MD5 is one sequential stream on one core, slower than the disk on this CPU "
            f"(docs/decrypt.md: a verified decrypt cannot run faster than MD5 alone). decrypt.py measures that "
            f"hash floor: MD5 of the file alone (hashlib, warm cache) took {fmt_s(r['hash_floor_s'])} s"
            + (f" ({rate:.2f} GiB/s)" if rate else "")
            + f", so llmkit is {r['llmkit_s'] / r['hash_floor_s']:.2f}x the hash floor and {r['ratio']:.2f}x "
            f"`cp` + `sync`."
        )
    text = (
        f"{r['job']} {r['depth']}: {r['ratio']:.2f}x the I/O floor; the benchmark's notes do not explain it "
        f"(llmkit runs {r['extra'].get('llmkit_runs')} s, floor {fmt_s(r['floor_s'])} s)."
    )
    g = sorted(
        (x for x in rows if x["job"] == r["job"] and x["llmkit_s"] and x["floor_s"]), key=lambda x: x["depth_key"]
    )
    if len(g) > 1 and g[-1]["depth_key"] > g[0]["depth_key"]:
        lo, hi = g[0], g[-1]
        unit = hi["depth_key"] - lo["depth_key"]
        dl, df = (hi["llmkit_s"] - lo["llmkit_s"]) / unit, (hi["floor_s"] - lo["floor_s"]) / unit
        per = "layer" if "layer" in hi["depth"] else "GiB"
        if df > 0:
            text += (
                f" From {lo['depth']} to {hi['depth']}, each added {per} cost llmkit {dl:.2f} s and the floor "
                f"{df:.2f} s ({dl / df:.2f}x)"
                + (
                    f": the gap grows with depth (per-{per} work that the I/O does not hide)."
                    if dl > df * FLOOR_TARGET
                    else "."
                )
            )
    return text


def markdown(
    rows: list[dict],
    info: dict,
    cfg: dict,
    wall: float,
    failures: list[str],
    cmd: str,
    lock_wait: float,
    full: dict | None = None,
) -> str:
    """The whole page; ``full``: a saved ``run.py --full`` run (docs/benchmarks-full.json), its section
    placed after the results."""
    jobs = list(dict.fromkeys(r["job"] for r in rows))
    notes: list[tuple[str, str]] = []  # (label, text)
    job_ref: dict[str, str] = {}
    for job in jobs:
        label = re.sub(r"[^a-z0-9]+", "-", job.lower()).strip("-")
        job_ref[job] = label
        notes.append((label, " ".join(job_notes(job, rows, cfg))))
    over = []
    lines = [
        "# Benchmarks",
        "",
        (
            "Every llmkit job on generated models with LLaMA-7B layer shapes (hidden 4096, intermediate 11008, vocab "
            "32000, 32 heads; decrypt and verify on generated files), each beside its upstream approach and the I/O "
            "floor: reading the inputs and writing the output with fsync, no compute at all (`benchmarks/io_floor.py`). "
            f"Two depths per job show that llmkit's peak memory does not grow with the model. Targets: llmkit at most "
            f"{FLOOR_TARGET}x the floor, peak RSS flat in depth (grows by at most {FLAT_MIB} MiB)."
        ),
        "",
        (
            "Generated by `benchmarks/run.py` (do not edit by hand). To reproduce, on a quiet machine, from the "
            "repository root:"
        ),
        "",
        "```",
        cmd,
        "```",
        "",
        (
            "run.py takes `flock /tmp/llmkit-bench.lock` for each benchmark script itself (so do not wrap it in "
            "`flock`); `--only decrypt,recover` runs some jobs, `--quick` the smallest sizes (a smoke test), `--json` "
            "prints the rows. Each script can also be run alone: the command line is in its docstring."
        ),
        "",
        "## Machine",
        "",
        f"- CPU: {info['cpu']}, {info['cores']} cores" + (" (virtual machine)" if info["vm"] else ""),
        (
            f"- RAM: {info['ram_bytes'] / 2**30:.1f} GiB; temp folder {info['tmp']} on {info['tmp_fs']}, "
            f"{info['disk_free_bytes'] / 1e9:.0f} GB free of {info['disk_total_bytes'] / 1e9:.0f} GB"
        ),
        (
            f"- Linux {info['kernel']}; Python {info['python']}, torch {info['torch']}, numpy {info['numpy']}, "
            f"transformers {info['transformers']}, peft {info['peft']}, mindspore {info['mindspore']}"
        ),
        f"- llmkit {info['commit']}; run {info['date']}; the whole run took {fmt_duration(wall - lock_wait)}"
        + (
            f" (plus {fmt_duration(lock_wait)} waiting for the lock while other benchmarks ran)"
            if lock_wait > 5
            else ""
        ),
        "",
        "## Results",
        "",
        (
            "Times in seconds (medians of the runs, except verify: best of), peak RSS in MiB (VmHWM of the process). "
            "*llmkit / floor* is the target; *upstream / llmkit* is how many times faster llmkit is. *RSS growth* is "
            "llmkit's peak RSS at the larger depth minus at the smaller one."
        ),
        "",
        (
            "| job | depth | inputs GB | llmkit s | floor s | llmkit / floor | upstream s | upstream / llmkit | "
            "llmkit RSS MiB | upstream RSS MiB | RSS growth MiB |"
        ),
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    seen_job = set()
    for r in rows:
        name = r["job"] + (f" [^{job_ref[r['job']]}]" if r["job"] not in seen_job else "")
        seen_job.add(r["job"])
        ratio = "n/a"
        if r["ratio"] is not None:
            ratio = f"{r['ratio']:.2f}"
            if r["ratio"] > FLOOR_TARGET:
                over.append(r)
                ratio = f"**{ratio}** [^over-{len(over)}]"
        growth = ""
        if r["rss_growth_mib"] is not None:
            g = r["rss_growth_mib"]
            growth = f"{g:+.0f} " + ("✓" if g <= FLAT_MIB else "✗")
        elif r["llmkit_rss"] is None:
            growth = "n/a"
        lines.append(
            " | ".join(
                [
                    f"| {name}",
                    r["depth"],
                    f"{r['input_bytes'] / 1e9:.2f}" if r["input_bytes"] else "",
                    fmt_s(r["llmkit_s"]),
                    fmt_s(r["floor_s"]),
                    ratio,
                    fmt_s(r["upstream_s"]),
                    f"{r['speedup']:.1f}x" if r["speedup"] else "n/a",
                    fmt_mib(r["llmkit_rss"]),
                    fmt_mib(r["upstream_rss"]),
                    growth,
                ]
            )
            + " |"
        )
    lines += ["", "![time and peak memory per job: llmkit, upstream and the I/O floor](benchmarks.svg)", ""]
    if full is not None:
        lines += full_depth_section(full)
    lines += ["## What each job measures", ""]
    for job in jobs:
        base = job.split(" ")[0]
        up = UPSTREAM.get(base)
        fl = FLOOR.get(base)
        lines.append(
            f"- **{job}**: upstream: {up or 'none (no upstream arm in its script)'}; floor: "
            f"{fl or 'not measured by its script'}."
        )
    lines += [
        "",
        (
            "Why llmkit can be under 1x the floor: the floor (`io_floor.py`) reads every input and only then "
            "writes and fsyncs the output, one after the other; llmkit writes as it reads, so the kernel's "
            "writeback of its output overlaps its reads."
        ),
        "",
    ]
    if failures:
        lines += ["## Failures", ""] + [f"- {f}" for f in failures] + [""]
    lines += ["## Notes", ""]
    for label, text in notes:
        lines.append(f"[^{label}]: {text}")
        lines.append("")
    for i, r in enumerate(over, 1):
        lines.append(f"[^over-{i}]: {over_floor_note(r, rows)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------ full depth

FULL_HEADING = "## Full depth"
FULL_RSS_TARGET = 1 << 30  # the bound at full depth: peak RSS within 1 GiB


def full_depth_method(full: dict) -> str:
    """The method paragraph of the full-depth section: the models, the runs, the floor, the columns."""
    layers, info = full["layers"], full["machine"]
    model = next((r["input_bytes"] for r in full["rows"] if r["job"] == "to-ckpt" and "error" not in r), None)
    runs = "One run" if full.get("repeat", 1) == 1 else f"Medians of {full['repeat']} runs"
    return (
        ("The whole model, not a few layers: " if layers >= 32 else "")
        + f"{layers} layers of LLaMA-7B shapes"
        + (f" ({model / 1e9:.1f} GB fp16)" if model else "")
        + f" on {info['ram_bytes'] / 2**30:.0f} GiB of RAM, random weights generated once by "
        "`benchmarks/full_depth.py`: the base and the weight diff are fp16 safetensors (1 GiB shards, two "
        "seeds), the adapters those of merge_lora.py (qv: r=8 on q/v; chinese: r=8 on the 7 linears + "
        "embed_tokens/lm_head of 49953 rows), the Meta input one `consolidated.00.pth` made from the base by "
        "llmkit's to-meta; recover runs with no integrity check (random weights have no published sum). "
        f"{runs} per job, llmkit and its floor alternating, each in a fresh process after every generated "
        "file was evicted from the page cache (fsync, then `posix_fadvise(DONTNEED)`) and the previous "
        "output's dirty pages written out (`sync`). The floor (`io_floor.py`): read every input once, then "
        "write as many bytes as the job's output to one file and fsync; no compute. *Read from disk* and "
        "*written* are the llmkit process's own `/proc/self/io` `read_bytes` and `write_bytes` over the call "
        "(bytes that came from or went to the disk, read-ahead included), beside the inputs' and the "
        "output's sizes: more read than the inputs means pages were evicted before use and read again; "
        "less, that the job needs only part of an input (the chinese adapter replaces the base's "
        f"embed_tokens and lm_head). Targets: at most {FLOOR_TARGET}x the floor, peak RSS (VmHWM) within "
        f"{FULL_RSS_TARGET / 2**30:g} GiB."
    )


def full_depth_section(full: dict) -> list[str]:
    """The "Full depth" section from a saved ``run.py --full`` run: method, command, table."""
    info, rows = full["machine"], full["rows"]
    lines = [
        f"{FULL_HEADING} ({full['layers']} layers)",
        "",
        full_depth_method(full),
        "",
        (
            f"llmkit {info['commit']}; run {info['date']}; took {fmt_duration(full['wall_seconds'])}, "
            "making any models not kept from an earlier run included. Generated by:"
        ),
        "",
        "```",
        full["command"],
        "```",
        "",
    ]
    earlier = full.get("earlier")
    if earlier:
        lines += [
            f"Rows of {', '.join(earlier['jobs'])}: from an earlier run (llmkit {earlier['commit']}, "
            f"{earlier['date']}): `{earlier['command']}`.",
            "",
        ]
    lines += [
        (
            "| job | llmkit s | floor s | llmkit / floor | peak RSS MiB | read GB from disk / inputs GB | "
            "written GB / output GB |"
        ),
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error'].splitlines()[0][:160]} | | | | | |")
            continue
        ratio = f"{r['ratio']:.2f}"
        rss = fmt_mib(r["rss"])
        cells = [
            r["label"],
            fmt_s(r["llmkit"]),
            fmt_s(r["floor"]),
            f"**{ratio}**" if r["ratio"] > r.get("target", FLOOR_TARGET) else ratio,
            f"**{rss}**" if r["rss"] > FULL_RSS_TARGET else rss,
            f"{r['read_bytes'] / 1e9:.2f} / {r['input_bytes'] / 1e9:.2f}",
            f"{r['write_bytes'] / 1e9:.2f} / {r['output_bytes'] / 1e9:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    wb = [r for r in rows if r.get("writeback_floor")]
    if wb:
        lines.append(
            "- The floor written back window by window as llmkit writes (`io_floor.py` with `FLOOR_WRITEBACK=1`: "
            "`sync_file_range` per 64 MiB, then dropped from the page cache), llmkit / that floor: "
            + ", ".join(
                f"{r['label']} {fmt_s(r['writeback_floor'])} s ({r['llmkit'] / r['writeback_floor']:.2f}x)" for r in wb
            )
            + ". On this disk the kernel's own write-back of a plain `write` + `fsync` comes in bursts at its "
            "dirty thresholds, which is why llmkit can beat the plain floor."
        )
    for r in rows:
        if r.get("md5_floor"):
            lines.append(
                f"- {r['label']}: the floor is the larger of the I/O floor ({fmt_s(r['io_floor'])} s) and the MD5 of "
                f"its inputs alone ({fmt_s(r['md5_floor'])} s, evicted first, one core): a one-shard 4096-wide Meta "
                "model is checked against LLaMA-7B's published MD5 while it converts (a thread hashes the whole "
                "file), and MD5 on this CPU is slower than the disk."
            )
    if any(r["job"] in ("chain", "pipe") for r in rows):
        lines.append(
            "- The one-pass rows run recover, merge-lora and to-ckpt at once (nothing but the `.ckpt` written): the "
            "chain's peak RSS is the three jobs' working sets in one process, the pipes' the largest of the three "
            "processes; the 1 GiB bound is one job's. The tensor-pipe form's target is 1.3x (three processes and "
            "their start-up)."
        )
    peers = [r for r in rows if "peer" in r]
    if peers:
        lines.append(
            "- to-gguf beside llama.cpp's `convert_hf_to_gguf.py` (the copy llama-cpp-python vendors) on the same "
            "folder, from an evicted page cache, its start-up included: "
            + ", ".join(
                f"{r['label']}: converter {fmt_s(r['peer'])} s, RSS {fmt_mib(r['peer_rss'])} MiB (llmkit "
                f"{fmt_s(r['llmkit'])} s, {fmt_mib(r['rss'])} MiB); "
                + ("the two files byte-identical (sha256)" if r["peer_identical"] else "**the files differ**")
                for r in peers
            )
            + ". The q8_0 target is 2x the I/O floor: quantizing is computing, not I/O."
        )
    if wb or peers or any(r.get("md5_floor") for r in rows) or any(r["job"] in ("chain", "pipe") for r in rows):
        lines.append("")
    if full.get("failures"):
        lines += [f"- failed: {f}" for f in full["failures"]] + [""]
    return lines


def splice_full_section(page: str, full: dict) -> str:
    """``page`` (docs/benchmarks.md as written before) with its full-depth section replaced by ``full``'s,
    or added before "What each job measures" (at the end when the page has no such heading)."""
    section = "\n".join(full_depth_section(full)) + "\n"
    found = re.search(rf"^{FULL_HEADING}\b.*?(?=^## |\Z)", page, flags=re.M | re.S)
    if found:
        return page[: found.start()] + section + page[found.end() :]
    at = page.find("\n## What each job measures")
    if at < 0:
        return page.rstrip() + "\n\n" + section
    return page[: at + 1] + section + page[at + 1 :]


def fmt_duration(s: float) -> str:
    return f"{int(s // 60)} min {int(s % 60):02d} s"


# ------------------------------------------------------------------------------------------ the chart

COLORS = {"llmkit": "#2b6cb0", "upstream": "#dd6b20", "floor": "#a0aec0"}


def _log_axis(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v and v > 0]
    if not vals:
        return 0.0, 1.0
    lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
    return lo, max(hi, lo + 1)


def svg_chart(rows: list[dict]) -> str:
    """Two panels of horizontal bars on log axes, one group per job and depth: time (llmkit, upstream,
    floor) and peak RSS (llmkit, upstream); every bar labelled with its value."""
    label_w, panel_w, gap, right = 190, 330, 60, 60
    bar_h, bar_gap, group_gap = 10, 2, 10
    top = 100
    width = label_w + 2 * panel_w + gap + right
    series_t = ("llmkit", "upstream", "floor")
    series_m = ("llmkit", "upstream")
    group_h = len(series_t) * (bar_h + bar_gap) + group_gap
    height = top + len(rows) * group_h + 40
    t_lo, t_hi = _log_axis([r[k] for r in rows for k in ("llmkit_s", "upstream_s", "floor_s")])
    m_lo, m_hi = _log_axis([(r[k] or 0) / MIB for r in rows for k in ("llmkit_rss", "upstream_rss")])
    x_t, x_m = label_w, label_w + panel_w + gap
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="11">'
        ),
        f'<rect width="{width}" height="{height}" fill="white"/>',
        (
            f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15" font-weight="bold">'
            "llmkit vs upstream: time and peak memory per job (log scales)</text>"
        ),
    ]

    def bar_len(v: float, lo: float, hi: float) -> float:
        return max(1.0, (math.log10(v) - lo) / (hi - lo) * panel_w)

    for x0, lo, hi, title, _unit in (
        (x_t, t_lo, t_hi, "wall time, seconds", "s"),
        (x_m, m_lo, m_hi, "peak RSS, MiB", "MiB"),
    ):
        out.append(
            f'<text x="{x0 + panel_w / 2}" y="{top - 32}" text-anchor="middle" font-size="13" '
            f'font-weight="bold">{title}</text>'
        )
        for e in range(int(lo), int(hi) + 1):
            x = x0 + (e - lo) / (hi - lo) * panel_w
            v = 10**e
            text = f"{v:g}" if v < 1e5 else f"1e{e}"
            out.append(f'<line x1="{x:.1f}" y1="{top - 8}" x2="{x:.1f}" y2="{height - 36}" stroke="#e2e8f0"/>')
            out.append(f'<text x="{x:.1f}" y="{top - 12}" text-anchor="middle" fill="#4a5568">{text}</text>')
            out.append(f'<text x="{x:.1f}" y="{height - 24}" text-anchor="middle" fill="#4a5568">{text}</text>')
    prev_job = None
    for i, r in enumerate(rows):
        y = top + i * group_h
        if prev_job is not None and r["job"] != prev_job:
            out.append(
                f'<line x1="8" y1="{y - group_gap / 2:.1f}" x2="{width - 8}" y2="{y - group_gap / 2:.1f}" '
                'stroke="#a0aec0" stroke-dasharray="3,3"/>'
            )
        prev_job = r["job"]
        mid = y + (len(series_t) * (bar_h + bar_gap)) / 2
        out.append(
            f'<text x="{label_w - 10}" y="{mid - 2:.1f}" text-anchor="end" font-weight="bold">{escape(r["job"])}</text>'
        )
        out.append(
            f'<text x="{label_w - 10}" y="{mid + 11:.1f}" text-anchor="end" fill="#4a5568">{escape(r["depth"])}</text>'
        )
        for panel, series, lo, hi, x0 in (("t", series_t, t_lo, t_hi, x_t), ("m", series_m, m_lo, m_hi, x_m)):
            for j, s in enumerate(series):
                yy = y + j * (bar_h + bar_gap)
                if panel == "t":
                    v = r[{"llmkit": "llmkit_s", "upstream": "upstream_s", "floor": "floor_s"}[s]]
                    text = None if v is None else f"{v:.2f} s" if v < 100 else f"{v:.0f} s"
                else:
                    raw = r[{"llmkit": "llmkit_rss", "upstream": "upstream_rss"}[s]]
                    v = None if raw is None else raw / MIB
                    text = None if v is None else f"{v:,.0f} MiB"
                if v is None or v <= 0:
                    field = {
                        "t": {"llmkit": "llmkit_s", "upstream": "upstream_s", "floor": "floor_s"},
                        "m": {"llmkit": "llmkit_rss", "upstream": "upstream_rss"},
                    }[panel][s]
                    out.append(
                        f'<text x="{x0 + 3}" y="{yy + bar_h - 1}" fill="#718096" font-size="9">'
                        f"{s}: {escape(missing(r, field))}</text>"
                    )
                    continue
                w = bar_len(v, lo, hi)
                out.append(
                    f'<rect x="{x0}" y="{yy}" width="{w:.1f}" height="{bar_h}" fill="{COLORS[s]}">'
                    f"<title>{escape(r['job'])} {escape(r['depth'])} {s}: {escape(text or '')}</title></rect>"
                )
                out.append(
                    f'<text x="{x0 + w + 3:.1f}" y="{yy + bar_h - 1}" font-size="9" fill="#1a202c">'
                    f"{escape(text or '')}</text>"
                )
    lx = label_w
    for s in series_t:
        label = {"llmkit": "llmkit", "upstream": "upstream approach", "floor": "I/O floor (read + write + fsync)"}[s]
        out.append(f'<rect x="{lx}" y="32" width="12" height="12" fill="{COLORS[s]}"/>')
        out.append(f'<text x="{lx + 16}" y="42">{label}</text>')
        lx += 16 + 7 * len(label) + 24
    out.append("</svg>")
    return "\n".join(out) + "\n"
