"""Run every benchmark on generated LLaMA-7B-shaped models and write ``docs/benchmarks.md`` + ``docs/benchmarks.svg``.

    .venv/bin/python benchmarks/run.py                  # everything, ~35 min on 2 cores; writes the docs
    .venv/bin/python benchmarks/run.py --quick          # smallest sizes, a smoke test (docs not written)
    .venv/bin/python benchmarks/run.py --only recover,to-ckpt --json
    .venv/bin/python benchmarks/run.py --full           # whole LLaMA-7B (32 layers), ~15 min, ~55 GB of disk

Jobs: ``decrypt``, ``verify``, ``recover``, ``merge-lora``, ``to-ckpt``, ``from-meta``. Each runs the
benchmark script of ``benchmarks/`` in a subprocess under ``flock /tmp/llmkit-bench.lock`` (the
scripts' convention: one benchmark on the machine at a time; do not wrap this script in ``flock``
itself), at two depths (layer counts, or GB for decrypt and verify) so that the peak RSS can be seen
not to grow with the model, and collects what each script reports: llmkit's time and peak RSS, the
I/O floor (``io_floor.py``: read the inputs, write the output's bytes, fsync), the upstream approach
beside it, and notes where a script does not measure something (nothing is made up here).

The table has, per job and depth: llmkit seconds, floor seconds, llmkit/floor, upstream seconds,
upstream/llmkit, both peak RSS, and the llmkit RSS growth from the smaller depth to the larger one.

``--full`` runs only ``full_depth.py`` instead (every tensor job on a whole LLaMA-7B beside its floor,
with the bytes read from and written to the disk), saves its rows in ``docs/benchmarks-full.json`` and
refreshes the "Full depth" section of ``docs/benchmarks.md`` alone; ``--only`` then picks its jobs
(``full_depth.py --help``). A run without ``--full`` keeps that section (read back from the JSON file).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_report import (
    BENCH,
    FULL,
    JOBS,
    LOCK,
    MIB,
    QUICK,
    ROOT,
    fmt_duration,
    fmt_mib,
    fmt_s,
    machine,
    markdown,
    splice_full_section,
    svg_chart,
)

FULL_JSON = "benchmarks-full.json"  # beside benchmarks.md: the last --full run, rendered into every page


class BenchError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------ running

LOCK_MARK = "llmkit-run: lock acquired"
LOCK_WAIT: list[float] = []  # seconds spent waiting for the lock, per script run


def run_script(script: str, args: list[str], *, check: bool = True) -> tuple[str, str, float]:
    """``flock LOCK python benchmarks/SCRIPT ARGS``: (stdout, stderr, seconds from taking the lock to the
    end). stderr is echoed live (the scripts' progress); the time spent waiting for the lock (other
    benchmarks on the machine) is kept in ``LOCK_WAIT``. A failed script raises BenchError unless not
    ``check`` (the caller reads what it printed)."""
    # A shell under flock marks the moment the lock is held, then becomes the benchmark (exec).
    cmd = [
        "flock",
        str(LOCK),
        "sh",
        "-c",
        f'echo "{LOCK_MARK}" >&2; exec "$@"',
        "sh",
        sys.executable,
        str(BENCH / script),
        *args,
    ]
    print(f"$ flock {LOCK} {shlex.join([sys.executable, str(BENCH / script), *args])}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    locked = [start]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    err: list[str] = []

    def pump() -> None:
        assert p.stderr is not None
        for line in p.stderr:
            if line.strip() == LOCK_MARK:
                locked[0] = time.perf_counter()
                if locked[0] - start > 1:
                    print(f"  waited {locked[0] - start:.0f} s for {LOCK}", file=sys.stderr, flush=True)
                continue
            err.append(line)
            sys.stderr.write(f"    [{script}] {line}")
            sys.stderr.flush()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    assert p.stdout is not None
    out = p.stdout.read()
    p.wait()
    t.join()
    seconds = time.perf_counter() - locked[0]
    LOCK_WAIT.append(locked[0] - start)
    if p.returncode != 0 and check:
        raise BenchError(f"{script} {' '.join(args)} failed ({p.returncode}):\n{''.join(err)[-2000:]}\n{out[-1000:]}")
    print(f"  {script} done in {seconds:.0f} s", file=sys.stderr, flush=True)
    return out, "".join(err), seconds


def row(job: str, depth: str, depth_key: float, **kw) -> dict:
    r = {
        "job": job,
        "depth": depth,
        "depth_key": depth_key,
        "input_bytes": None,
        "llmkit_s": None,
        "floor_s": None,
        "upstream_s": None,
        "llmkit_rss": None,
        "upstream_rss": None,
        "hash_floor_s": None,
        "same_output": None,
        "notes": [],
        "extra": {},
    }
    r.update(kw)
    return r


def layers_label(n: int) -> str:
    return f"{n} layer" + ("" if n == 1 else "s")


def size_label(text: str) -> tuple[str, float]:
    from llmkit.units import parse_size

    n = parse_size(text)
    return (f"{n / 2**30:g} GiB" if n >= 2**30 else f"{n / 2**20:g} MiB"), n / 2**30


# ------------------------------------------------------------------------------------------ the jobs

DECRYPT_LINE = re.compile(
    r"^(?P<name>\S.*?)\s+(?P<med>\d+\.\d+)\s+(?P<best>\d+\.\d+)\s+(?P<rate>\d+\.\d+)"
    r"\s{3}(?P<runs>[\d. ]+)$"
)


def job_decrypt(cfg: dict) -> list[dict]:
    rows = []
    for size in cfg["decrypt"]:
        out, _, wall = run_script("decrypt.py", ["--published", "--size", size, "--repeat", str(cfg["repeat"])])
        med: dict[str, float] = {}
        for line in out.splitlines():
            m = DECRYPT_LINE.match(line.rstrip())
            if m:
                med[m["name"].strip()] = float(m["med"])
        rss = re.search(r"llmkit CLI peak RSS: (\d+) MiB", out)
        same = re.search(r"llmkit output == upstream output: (\w+)", out)
        up_key = next((k for k in med if k.startswith("upstream loop")), None)
        label, key = size_label(size)
        r = row(
            "decrypt",
            label,
            key,
            input_bytes=int(key * 2**30),
            llmkit_s=med.get("llmkit.crypto.decrypt (library)"),
            floor_s=med.get("cp + sync"),
            upstream_s=med.get(up_key) if up_key else None,
            llmkit_rss=int(rss[1]) * MIB if rss else None,
            hash_floor_s=med.get("md5 of the file (hashlib, warm cache)"),
            same_output=(same[1] == "True") if same else None,
            extra={
                "cli_s": med.get("llmkit decrypt (CLI, wall)"),
                "startup_s": med.get("llmkit start-up (--version)"),
                "cp_s": med.get("cp"),
                "script_wall_s": wall,
                "upstream_extrapolated": bool(up_key and "extrapolated" in up_key),
            },
        )
        rows.append(r)
    return rows


def job_verify(cfg: dict) -> list[dict]:
    rows = []
    files = cfg["verify_files"]
    for size in cfg["verify"]:
        out, _, wall = run_script(
            "verify.py", ["--files", str(files), "--size", size, "--repeat", str(cfg["repeat"]), "--json"]
        )
        data = json.loads(out[out.index("{") :])
        s = data["seconds"]
        total = data["files"] * data["bytes_per_file"]
        label = f"{files} x {size_label(size)[0]}"
        rows.append(
            row(
                "verify",
                label,
                total / 2**30,
                input_bytes=total,
                llmkit_s=s.get("in-process run_verify jobs=2"),
                upstream_s=s.get("md5sum -c"),
                hash_floor_s=s.get("md5sum -c"),
                extra={
                    "cli_jobs2_s": s.get("llmkit verify --jobs 2"),
                    "cli_jobs1_s": s.get("llmkit verify --jobs 1"),
                    "inproc_jobs1_s": s.get("in-process run_verify jobs=1"),
                    "startup_s": s.get("llmkit start-up (import llmkit.cli)"),
                    "script_wall_s": wall,
                },
            )
        )
    return rows


def job_recover(cfg: dict) -> list[dict]:
    layers = cfg["layers"]
    _, err, wall = run_script(
        "recover.py",
        [
            "--llmkit-layers",
            ",".join(map(str, layers)),
            "--upstream-layers",
            str(min(layers)),
            "--repeat",
            str(cfg["repeat"]),
        ],
    )
    rows = []
    for line in err.splitlines():
        if not line.startswith('{"layers"'):
            continue
        d = json.loads(line)
        up = d.get("upstream")
        rows.append(
            row(
                "recover",
                layers_label(d["layers"]),
                d["layers"],
                input_bytes=d["input_bytes"],
                llmkit_s=d["llmkit"]["seconds"],
                floor_s=d["floor"]["seconds"],
                upstream_s=up["seconds"] if up else None,
                llmkit_rss=d["llmkit"]["peak_rss"],
                upstream_rss=up["peak_rss"] if up else None,
                same_output=d.get("identical"),
                extra={
                    "read_s": d["read"]["seconds"],
                    "llmkit_runs": d["llmkit"]["all_seconds"],
                    "floor_runs": d["floor"]["all_seconds"],
                    "output_bytes": d["output_bytes"],
                    "comparison": d.get("comparison"),
                    "script_wall_s": wall,
                },
            )
        )
    return rows


FLOOR_LINE = re.compile(
    r"^(?P<kind>\w+)\s+llmkit\s+median\s+(?P<med>[\d.]+) s = (?P<ratio>[\d.]+)x the I/O floor "
    r"\((?P<floor>[\d.]+) s\); peak RSS (?P<rss>[\d.]+) GB; runs \[(?P<runs>[^\]]*)\]"
)
PEFT_LINE = re.compile(r"^(?P<kind>\w+) (?P<tool>llmkit|peft|peft-nomean): (?P<d>\{.*\})$")
IDENT_LINE = re.compile(r"^(?P<kind>\w+)\s+llmkit .* outputs: (?P<same>\d+)/(?P<n>\d+) tensors identical")


def job_merge_lora(cfg: dict) -> list[dict]:
    rows = []
    kinds = cfg["merge_adapters"].split(",")
    for layers in cfg["layers"]:
        with_peft = [
            k
            for k in kinds
            if k in cfg["peft_every_depth"] or (k in cfg["peft_smallest_depth"] and layers == min(cfg["layers"]))
        ]
        work = Path(tempfile.mkdtemp(prefix="llmkit-bench-run-lora-"))
        try:
            common = ["--layers", str(layers), "--adapters", cfg["merge_adapters"], "--workdir", str(work)]
            out, err, wall = run_script("merge_lora.py", [*common, "--floor", str(cfg["repeat"])])
            floor = {m["kind"]: m for m in map(FLOOR_LINE.match, out.splitlines()) if m}
            gen = re.search(r"generated base: .*?, ([\d.]+) GB fp16", err)
            base_bytes = int(float(gen[1]) * 1e9) if gen else None
            peft: dict[str, dict[str, dict]] = {}
            ident: dict[str, tuple[int, int]] = {}
            if with_peft:
                out2, err2, wall2 = run_script(
                    "merge_lora.py",
                    ["--layers", str(layers), "--adapters", ",".join(with_peft), "--workdir", str(work)],
                )
                wall += wall2
                for m in map(PEFT_LINE.match, err2.splitlines()):
                    if m:
                        peft.setdefault(m["kind"], {})[m["tool"]] = ast.literal_eval(m["d"])
                for m in map(IDENT_LINE.match, out2.splitlines()):
                    if m:
                        ident[m["kind"]] = (int(m["same"]), int(m["n"]))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        for kind in kinds:
            f = floor.get(kind)
            p = peft.get(kind, {})
            # llmkit's RSS: every llmkit run seen (the floor runs print GB with 2 decimals, the peft
            # comparison run prints bytes); the largest.
            rss = [int(float(f["rss"]) * 1e9)] if f else []
            if "llmkit" in p:
                rss.append(p["llmkit"]["peak_rss_bytes"])
            up = p.get("peft")
            r = row(
                f"merge-lora ({kind})",
                layers_label(layers),
                layers,
                input_bytes=base_bytes,
                llmkit_s=float(f["med"]) if f else None,
                floor_s=float(f["floor"]) if f else None,
                upstream_s=up["durable_seconds"] if up else None,
                llmkit_rss=max(rss) if rss else None,
                upstream_rss=up["peak_rss_bytes"] if up else None,
                same_output=(ident[kind][0] == ident[kind][1]) if kind in ident else None,
                extra={
                    "llmkit_runs": f["runs"] if f else None,
                    "script_wall_s": wall,
                    "peft_nomean_s": p.get("peft-nomean", {}).get("durable_seconds"),
                    "peft_nomean_rss": p.get("peft-nomean", {}).get("peak_rss_bytes"),
                    "llmkit_unevicted_s": p.get("llmkit", {}).get("durable_seconds"),
                },
            )
            rows.append(r)
    return rows


def job_to_ckpt(cfg: dict, enc_modes: str = "") -> list[dict]:
    args = ["--layers", ",".join(map(str, cfg["layers"])), "--repeat", str(cfg["repeat"]), "--json"]
    help_text = subprocess.run(
        [sys.executable, str(BENCH / "to_ckpt.py"), "--help"], capture_output=True, text=True, check=False
    ).stdout
    if "--enc-modes" in help_text:  # added while this was written; older copies have no encrypted arm
        args += ["--enc-modes", enc_modes]
    out, _, wall = run_script("to_ckpt.py", args)
    data = json.loads(out[out.index("[") :])
    rows = []
    for d in data:
        up = d.get("upstream")
        r = row(
            "to-ckpt",
            layers_label(d["layers"]),
            d["layers"],
            input_bytes=d["input_bytes"],
            llmkit_s=d["llmkit"]["seconds"],
            floor_s=d["floor"]["seconds"],
            upstream_s=up["seconds"] if up else None,
            llmkit_rss=d["llmkit"]["peak_rss"],
            upstream_rss=up["peak_rss"] if up else None,
            same_output=d.get("identical"),
            extra={
                "llmkit_runs": d["llmkit"]["all_seconds"],
                "floor_runs": d["floor"]["all_seconds"],
                "upstream_skipped": d.get("upstream_skipped"),
                "script_wall_s": wall,
            },
        )
        if d.get("upstream_skipped"):
            r["notes"].append(f"upstream skipped: {d['upstream_skipped']}")
        rows.append(r)
        for mode, e in (d.get("enc") or {}).items():
            v = e.get("verify", {})
            rows.append(
                row(
                    f"to-ckpt ({mode})",
                    layers_label(d["layers"]),
                    d["layers"],
                    input_bytes=d["input_bytes"],
                    llmkit_s=e["seconds"],
                    floor_s=d["floor"]["seconds"],
                    llmkit_rss=e["peak_rss"],
                    same_output=bool(v.get("same") and v.get("stream_same")),
                    extra={"vs_llmkit": e.get("vs_llmkit"), "llmkit_runs": e.get("all_seconds")},
                )
            )
    return rows


META_LINE = re.compile(
    r"^(?P<layers>\d+) layer\(s\): inputs (?P<gb>[\d.]+) GB; floor (?P<floor>[\d.]+) s; "
    r"from-meta (?P<med>[\d.]+) s = [\d.]+x floor; peak RSS (?P<rss>[\d.]+) GB; runs \[(?P<runs>[^\]]*)\]"
)


def job_from_meta(cfg: dict) -> list[dict]:
    out, _, wall = run_script(
        "meta_convert.py", ["--layers", ",".join(map(str, cfg["layers"])), "--repeat", str(cfg["repeat"])]
    )
    rows = []
    for m in map(META_LINE.match, out.splitlines()):
        if m:
            rows.append(
                row(
                    "from-meta",
                    layers_label(int(m["layers"])),
                    int(m["layers"]),
                    input_bytes=int(float(m["gb"]) * 1e9),
                    llmkit_s=float(m["med"]),
                    floor_s=float(m["floor"]),
                    llmkit_rss=int(float(m["rss"]) * 1e9),
                    extra={"llmkit_runs": m["runs"], "script_wall_s": wall, "rss_resolution": "10 MB"},
                )
            )
    return rows


def run_full(args: argparse.Namespace, only: list[str]) -> None:
    """``--full``: full_depth.py under the lock; its rows into FULL_JSON and the page's full-depth section
    (written for a run of every job, or with ``--docs``)."""
    import full_depth

    for j in only:
        if j not in full_depth.JOBS:
            raise SystemExit(f"--only with --full: {j!r} is not one of {', '.join(full_depth.JOBS)}")
    layers = args.full_layers or (2 if args.quick else 32)
    fargs = ["--layers", str(layers)] + (["--only", ",".join(only)] if only else [])
    fargs += ["--repeat", str(args.repeat)] if args.repeat is not None else []
    fargs += ["--workdir", str(args.full_workdir), "--keep"] if args.full_workdir is not None else []
    out, err, wall = run_script("full_depth.py", fargs, check=False)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith('{"job"')]
    if not rows:
        raise SystemExit(f"full_depth.py reported no results:\n{err[-2000:]}")
    cmd = ".venv/bin/python benchmarks/run.py --full" + (f" --full-layers {layers}" if layers != 32 else "")
    cmd += (f" --only {','.join(only)}" if only else "") + (f" --repeat {args.repeat}" if args.repeat else "")
    full = {
        "command": cmd,
        "machine": machine(),
        "layers": layers,
        "repeat": args.repeat or 1,
        "wall_seconds": wall,
        "lock_wait_seconds": sum(LOCK_WAIT),
        "failures": [f"{r['job']}: {r['error'].splitlines()[0]}" for r in rows if "error" in r],
        "rows": rows,
    }
    saved = saved_full(args.out_dir)
    if only and saved and saved.get("layers") == layers:  # the other jobs' rows stay, from their own run
        full = merged_full(saved, full, list(full_depth.JOBS))
    table = "\n".join(line for line in out.splitlines() if not line.startswith("{")).strip()
    print(json.dumps(full, indent=2) if args.json else table)
    if args.docs if args.docs is not None else (not args.quick and not only):
        page = args.out_dir / "benchmarks.md"
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / FULL_JSON).write_text(json.dumps(full, indent=2) + "\n")
        page.write_text(splice_full_section(page.read_text() if page.exists() else "# Benchmarks\n", full))
        print(f"wrote {args.out_dir / FULL_JSON} and the full-depth section of {page}", file=sys.stderr)
    if full["failures"]:
        sys.exit(1)


def merged_full(saved: dict, new: dict, order: list[str]) -> dict:
    """``new`` (a ``--full --only`` run) with ``saved``'s rows of the jobs it did not run, in job order; the
    earlier run's commit, date and command are kept beside those rows (``earlier``)."""
    ran = {r["job"] for r in new["rows"]}
    kept = [r for r in saved["rows"] if r["job"] not in ran]
    if not kept:
        return new
    rows = sorted(kept + new["rows"], key=lambda r: order.index(r["job"]) if r["job"] in order else len(order))
    earlier = {
        "jobs": [r["job"] for r in kept],
        "commit": saved["machine"].get("commit"),
        "date": saved["machine"].get("date"),
        "command": saved["command"],
    }
    return {**new, "rows": rows, "earlier": earlier, "failures": new["failures"]}


def saved_full(out_dir: Path) -> dict | None:
    """The last ``--full`` run saved beside the page, if any."""
    path = out_dir / FULL_JSON
    return json.loads(path.read_text()) if path.is_file() else None


# ------------------------------------------------------------------------------------------ derived numbers


def derive(rows: list[dict]) -> None:
    """Ratios and the RSS growth with depth (on the largest depth of each job)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        r["ratio"] = r["llmkit_s"] / r["floor_s"] if r["llmkit_s"] and r["floor_s"] else None
        r["speedup"] = r["upstream_s"] / r["llmkit_s"] if r["llmkit_s"] and r["upstream_s"] else None
        r["rss_growth_mib"] = None
        groups.setdefault(r["job"], []).append(r)
    for g in groups.values():
        g.sort(key=lambda r: r["depth_key"])
        have = [r for r in g if r["llmkit_rss"] is not None]
        if len(have) > 1:
            have[-1]["rss_growth_mib"] = (have[-1]["llmkit_rss"] - have[0]["llmkit_rss"]) / MIB
            have[-1]["extra"]["rss_growth_from"] = have[0]["depth"]


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help=f"comma-separated jobs, of {', '.join(JOBS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="smallest sizes and one run each: a smoke test")
    ap.add_argument("--repeat", type=int, default=None, help="runs per contender (default 3, --quick 1)")
    ap.add_argument("--json", action="store_true", help="print the collected rows as JSON")
    ap.add_argument(
        "--docs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/benchmarks.md and docs/benchmarks.svg (default: only for a full run of all jobs)",
    )
    ap.add_argument("--out-dir", type=Path, default=ROOT / "docs", help="where the .md and .svg go")
    ap.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="run nothing: re-write the docs from the output of an earlier --json run",
    )
    ap.add_argument(
        "--to-ckpt-enc-modes",
        default="",
        help="also time encrypted to-ckpt arms, e.g. AES-GCM (passed to to_ckpt.py --enc-modes)",
    )
    ap.add_argument(
        "--full",
        action="store_true",
        help="only the full-depth runs (full_depth.py): refresh docs/benchmarks-full.json and that section",
    )
    ap.add_argument("--full-layers", type=int, default=None, help="layers for --full (default 32, --quick 2)")
    ap.add_argument(
        "--full-workdir", type=Path, default=None, help="--full: generate the models in DIR and keep them (reused)"
    )
    args = ap.parse_args()
    if args.full:
        run_full(args, [j.strip() for j in args.only.split(",") if j.strip()])
        return
    only = [j.strip() for j in args.only.split(",") if j.strip()] or list(JOBS)
    for j in only:
        if j not in JOBS:
            ap.error(f"--only: {j!r} is not one of {', '.join(JOBS)}")
    cfg = dict(QUICK if args.quick else FULL)
    if args.repeat is not None:
        cfg["repeat"] = args.repeat
    write_docs = args.docs if args.docs is not None else (not args.quick and len(only) == len(JOBS))
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "benchmarks.md").write_text(
            markdown(
                saved["rows"],
                saved["machine"],
                cfg,
                saved["wall_seconds"],
                saved["failures"],
                saved["command"],
                saved["lock_wait_seconds"],
                saved_full(args.out_dir),
            )
        )
        (args.out_dir / "benchmarks.svg").write_text(svg_chart(saved["rows"]))
        print(f"wrote {args.out_dir / 'benchmarks.md'} and {args.out_dir / 'benchmarks.svg'}", file=sys.stderr)
        return
    free = shutil.disk_usage(tempfile.gettempdir()).free
    need = 2e9 if args.quick else 20e9  # recover at 6 layers: 8.9 GB of inputs + 5.9 GB of output
    if free < need:
        raise SystemExit(f"only {free / 1e9:.1f} GB free in {tempfile.gettempdir()}; need about {need / 1e9:.0f} GB")
    runners = {
        "decrypt": job_decrypt,
        "verify": job_verify,
        "recover": job_recover,
        "merge-lora": job_merge_lora,
        "to-ckpt": lambda c: job_to_ckpt(c, args.to_ckpt_enc_modes),
        "from-meta": job_from_meta,
    }
    rows: list[dict] = []
    failures: list[str] = []
    start = time.perf_counter()
    info = machine()
    for job in JOBS:
        if job not in only:
            continue
        print(f"== {job}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            got = runners[job](cfg)
            if not got:
                raise BenchError(f"{job}: no results parsed from the script's output")
            rows += got
        except BenchError as e:
            failures.append(f"{job}: {str(e).splitlines()[0]}")
            print(f"!! {job} failed: {e}", file=sys.stderr, flush=True)
        print(f"== {job}: {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    wall = time.perf_counter() - start
    lock_wait = sum(LOCK_WAIT)
    cmd = (
        ".venv/bin/python benchmarks/run.py"
        + (" --quick" if args.quick else "")
        + (f" --only {','.join(only)}" if len(only) != len(JOBS) else "")
        + (f" --repeat {args.repeat}" if args.repeat is not None else "")
    )
    order = {job: i for i, job in enumerate(dict.fromkeys(r["job"] for r in rows))}
    rows.sort(key=lambda r: (order[r["job"]], r["depth_key"]))
    derive(rows)
    if args.json:
        print(
            json.dumps(
                {
                    "command": cmd,
                    "machine": info,
                    "wall_seconds": wall,
                    "lock_wait_seconds": lock_wait,
                    "failures": failures,
                    "rows": rows,
                },
                indent=2,
                default=sorted,
            )
        )
    else:
        for r in rows:
            print(
                f"{r['job']:<22} {r['depth']:<14} llmkit {fmt_s(r['llmkit_s']):>7} s  floor {fmt_s(r['floor_s']):>7} s"
                f"  ratio {r['ratio'] if r['ratio'] is None else round(r['ratio'], 2)!s:>5}  upstream "
                f"{fmt_s(r['upstream_s']):>7} s  RSS {fmt_mib(r['llmkit_rss']):>6} / {fmt_mib(r['upstream_rss']):>6} MiB"
                + (f"  growth {r['rss_growth_mib']:+.0f} MiB" if r["rss_growth_mib"] is not None else "")
            )
        print(
            f"total {fmt_duration(wall)}, of which {fmt_duration(lock_wait)} waiting for the lock"
            + (f"; failures: {failures}" if failures else "")
        )
    if write_docs:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        page = markdown(rows, info, cfg, wall, failures, cmd, lock_wait, saved_full(args.out_dir))
        (args.out_dir / "benchmarks.md").write_text(page)
        (args.out_dir / "benchmarks.svg").write_text(svg_chart(rows))
        print(f"wrote {args.out_dir / 'benchmarks.md'} and {args.out_dir / 'benchmarks.svg'}", file=sys.stderr)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
