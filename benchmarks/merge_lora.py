"""Benchmark: ``llmkit merge-lora`` vs peft's load -> merge_and_unload -> save_pretrained.

Generates a fp16 model with LLaMA-7B layer shapes (hidden 4096, FFN 11008, 32 heads, vocab 32000) and a few
layers, and two adapters with real-world shapes:

- ``qv``: CuteGPT-style, r=8 alpha=16 on q_proj/v_proj;
- ``chinese``: Chinese-LLaMA-style, r=8 alpha=32 on the 7 linear layers, plus full ``embed_tokens`` and
  ``lm_head`` of 49953 rows (modules_to_save), so the vocabulary is resized 32000 -> 49953.

Each pipeline runs in a fresh subprocess; wall time (imports excluded) until the call returns and until
every output file is fsynced (llmkit fsyncs its shards itself, peft does not), and peak RSS (``VmHWM``) are
reported, and the llmkit and peft outputs are compared tensor by tensor (they must be bit-identical). For
the resized case peft also runs with ``mean_resizing=False`` (transformers' default mean resizing computes a
4096 x 4096 covariance and samples the new rows, which dominates its time).

    flock /tmp/llmkit-bench.lock .venv/bin/python benchmarks/merge_lora.py --layers 4

``--floor N`` times llmkit N times against the I/O floor (``io_floor.py``: read the base and the adapter,
write the output's bytes, fsync), inputs evicted from the page cache before each run, and skips peft;
``--compare-root DIR`` times another llmkit checkout the same way (before/after a change).

Memory: peft holds the whole model (about 2.1 GB for 4 layers, plus the resized vocabulary and the
adapter's saved modules); llmkit holds a few tensors. Keep ``--layers`` small enough for the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from io_floor import drop_cache, measure_floor

HIDDEN, FFN, HEADS, VOCAB, CHINESE_VOCAB = 4096, 11008, 32, 32000, 49953
LINEAR = {
    "self_attn.q_proj": (HIDDEN, HIDDEN),
    "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN),
    "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (FFN, HIDDEN),
    "mlp.up_proj": (FFN, HIDDEN),
    "mlp.down_proj": (HIDDEN, FFN),
}


def generate_base(folder: Path, layers: int) -> None:
    """A random fp16 LLaMA-7B-shaped model with ``layers`` layers, one tensor in memory at a time."""
    from transformers import LlamaConfig

    from llmkit.io import ShardedWriter, TensorSpec

    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        for name, shape in LINEAR.items():
            shapes[f"model.layers.{i}.{name}.weight"] = shape
        shapes[f"model.layers.{i}.input_layernorm.weight"] = (HIDDEN,)
        shapes[f"model.layers.{i}.post_attention_layernorm.weight"] = (HIDDEN,)
    shapes["model.norm.weight"] = (HIDDEN,)
    shapes["lm_head.weight"] = (VOCAB, HIDDEN)
    gen = torch.Generator().manual_seed(0)
    specs = [TensorSpec(n, torch.float16, s) for n, s in shapes.items()]
    with ShardedWriter(folder, specs, shard_size=2_000_000_000) as w:
        for name, shape in shapes.items():
            t = torch.randn(shape, generator=gen) * 0.02 + (1.0 if len(shape) == 1 else 0.0)
            w.write(name, t.to(torch.float16))
    LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        rms_norm_eps=1e-6,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        torch_dtype=torch.float16,
    ).save_pretrained(folder)


def generate_adapter(folder: Path, layers: int, kind: str) -> None:
    """A peft-format adapter (keys, config) with random non-zero A and B, written with safetensors."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(1 if kind == "qv" else 2)
    targets = ["q_proj", "v_proj"] if kind == "qv" else [n.split(".")[-1] for n in LINEAR]
    r, alpha = 8, (16 if kind == "qv" else 32)
    state: dict[str, torch.Tensor] = {}
    for i in range(layers):
        for name, (out_f, in_f) in LINEAR.items():
            if name.split(".")[-1] not in targets:
                continue
            key = f"base_model.model.model.layers.{i}.{name}"
            state[f"{key}.lora_A.weight"] = (torch.randn(r, in_f, generator=gen) * 0.01).half()
            state[f"{key}.lora_B.weight"] = (torch.randn(out_f, r, generator=gen) * 0.01).half()
    modules_to_save = None
    if kind == "chinese":
        modules_to_save = ["embed_tokens", "lm_head"]
        state["base_model.model.model.embed_tokens.weight"] = (
            torch.randn(CHINESE_VOCAB, HIDDEN, generator=gen) * 0.02
        ).half()
        state["base_model.model.lm_head.weight"] = (torch.randn(CHINESE_VOCAB, HIDDEN, generator=gen) * 0.02).half()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    LoraConfig(
        r=r, lora_alpha=alpha, target_modules=targets, modules_to_save=modules_to_save, lora_dropout=0.0
    ).save_pretrained(folder)


# ------------------------------------------------------------------ the two pipelines (run in subprocesses)


def run_llmkit(base: Path, adapter: Path, out: Path) -> None:
    from llmkit.lora import merge_lora

    merge_lora(base, [adapter], out, force=True)


def run_peft(base: Path, adapter: Path, out: Path, mean_resizing: bool = True) -> None:
    import warnings

    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.simplefilter("ignore")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float16)
    rows = json.loads((adapter / "adapter_config.json").read_text()).get("modules_to_save")
    if rows:  # the Chinese-LLaMA-Alpaca recipe: resize to the adapter's vocabulary first
        model.resize_token_embeddings(CHINESE_VOCAB, mean_resizing=mean_resizing)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.save_pretrained(out)


def child(which: str, base: Path, adapter: Path, out: Path) -> None:
    start = time.perf_counter()
    if which == "llmkit":
        run_llmkit(base, adapter, out)
    else:
        run_peft(base, adapter, out, mean_resizing=which != "peft-nomean")
    seconds = time.perf_counter() - start
    # Same durability for both: llmkit fsyncs its shards, peft's save_pretrained does not.
    for f in out.iterdir():
        fd = os.open(f, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    durable = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries the parent's ru_maxrss across fork + exec.
    with open("/proc/self/status") as status:
        hwm_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    print(json.dumps({"seconds": seconds, "durable_seconds": durable, "peak_rss_bytes": hwm_kb * 1024}))


def measure(which: str, base: Path, adapter: Path, out: Path, root: Path | None = None) -> dict:
    if out.exists():
        shutil.rmtree(out)
    os.sync()  # start each run with no dirty pages left by the previous one
    env = dict(os.environ, PYTHONPATH=str(root)) if root is not None else None
    proc = subprocess.run(
        [sys.executable, __file__, "--child", which, str(base), str(adapter), str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{which} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def floor_rows(work: Path, base: Path, adapter: Path, kind: str, runs: int, compare_root: Path | None) -> None:
    """llmkit (and ``compare_root``'s llmkit) against the I/O floor, alternating, inputs evicted each time."""
    import statistics

    inputs = sorted(p for folder in (base, adapter) for p in folder.iterdir() if p.is_file())
    out = work / f"out-{kind}-floor"
    times: dict[str, list[float]] = {"floor": [], "llmkit": [], "compare": []}
    rss: dict[str, int] = {}
    for _ in range(runs):
        for name, root in (("llmkit", None), ("compare", compare_root)):
            if name == "compare" and root is None:
                continue
            drop_cache(inputs)
            r = measure("llmkit", base, adapter, out, root=root)
            times[name].append(r["durable_seconds"])
            rss[name] = max(rss.get(name, 0), r["peak_rss_bytes"])
        out_bytes = sum(f.stat().st_size for f in out.iterdir())
        times["floor"].append(measure_floor(inputs, out_bytes, work / "floor.out")["seconds"])
        shutil.rmtree(out)
    floor = statistics.median(times["floor"])
    for name in ("llmkit", "compare"):
        if times[name]:
            med = statistics.median(times[name])
            print(
                f"{kind:<8} {name:<8} median {med:6.2f} s = {med / floor:.2f}x the I/O floor ({floor:.2f} s); "
                f"peak RSS {rss[name] / 1e9:.2f} GB; runs {[round(t, 2) for t in times[name]]}"
            )


def same_tensors(a: Path, b: Path) -> tuple[int, int]:
    """(tensors compared, tensors that differ), reading one pair at a time."""
    from llmkit.io import open_source

    with open_source(a) as sa, open_source(b) as sb:
        assert set(sa.keys()) == set(sb.keys()), set(sa.keys()) ^ set(sb.keys())
        differ = sum(not torch.equal(sa.get(k), sb.get(k)) for k in sa.keys())
        return len(sa.keys()), differ


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--adapters", default="qv,chinese", help="comma list of qv, chinese")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--floor", type=int, default=0, help="runs of llmkit against the I/O floor (skips peft)")
    p.add_argument("--compare-root", type=Path, default=None, help="another llmkit checkout, with --floor")
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="llmkit-bench-lora-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        base = work / "base"
        if not (base / "config.json").is_file():
            t = time.perf_counter()
            generate_base(base, args.layers)
            print(
                f"generated base: {args.layers} layers of LLaMA-7B shape, "
                f"{sum(f.stat().st_size for f in base.glob('*.safetensors')) / 1e9:.2f} GB fp16 "
                f"({time.perf_counter() - t:.1f} s)",
                file=sys.stderr,
            )
        rows = []
        for kind in args.adapters.split(","):
            adapter = work / f"adapter-{kind}"
            generate_adapter(adapter, args.layers, kind)
            if args.floor:
                floor_rows(work, base, adapter, kind, args.floor, args.compare_root)
                continue
            tools = ("llmkit", "peft") + (("peft-nomean",) if kind == "chinese" else ())
            results = {}
            for w in tools:
                results[w] = measure(w, base, adapter, work / f"out-{kind}-{w}")
                print(f"{kind} {w}: {results[w]}", file=sys.stderr)
            compared, differ = same_tensors(work / f"out-{kind}-llmkit", work / f"out-{kind}-peft")
            rows.append((kind, results, compared, differ))
            for w in tools:
                shutil.rmtree(work / f"out-{kind}-{w}")
        if args.floor:
            return
        print(f"{'adapter':<8} {'tool':<12} {'seconds':>8} {'+fsync':>8} {'peak RSS':>10}")
        for kind, results, compared, differ in rows:
            for w, r in results.items():
                print(
                    f"{kind:<8} {w:<12} {r['seconds']:>8.2f} {r['durable_seconds']:>8.2f} "
                    f"{r['peak_rss_bytes'] / 1e9:>7.2f} GB"
                )
            speed = results["peft"]["durable_seconds"] / results["llmkit"]["durable_seconds"]
            print(
                f"{kind:<8} llmkit {speed:.1f}x faster than peft (to durable files); llmkit vs peft outputs: "
                f"{compared - differ}/{compared} tensors identical"
            )
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
