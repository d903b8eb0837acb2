"""One pass from the published inputs to the final model (``llmkit.chain``, ``llmkit.recipes.fusion``).

- Library chains: a job's plan read as the next job's source gives the same bytes as the commands run one
  after the other through folders on disk, writes nothing but the final output (``keep`` writes the inner
  ones from the same pass, with the same bytes), judges inner taps before the final rename, and plans
  every stage before the first tensor is read.
- Recipes: every recipe and output flag, fused (the default) against the same recipe with fusion switched
  off (each step through disk, as before), on tiny models served by the local test hub: the same final
  bytes, and no intermediate model in the work folder at any time during the run.
"""

# ruff: noqa: F811  (fixtures imported from hub_server / test_download are taken as test arguments)
from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
from pathlib import Path

import pytest
import torch
from hub_server import hub  # noqa: F401
from test_download import hf_env  # noqa: F401
from test_recipes import files_of, techgpt, write_table  # noqa: F401

from llmkit import lora as L
from llmkit import recover as R
from llmkit.chain import run_chain
from llmkit.convert import ToMetaOptions, to_meta
from llmkit.convert.ckpt import to_ckpt
from llmkit.convert.ckpt_options import ToCkptOptions
from llmkit.errors import CheckFailed, InputError
from llmkit.lora import MergeOptions
from llmkit.recipes import RECIPES
from llmkit.recover import MakeDiffOptions, RecoverOptions


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) by relative name."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny fp16 Meta base, a tuned model's fp16 diff against it, and two peft adapters for it."""
    from llmkit.tiny import save_tiny_model
    from llmkit.tiny_lora import save_chinese_alpaca_like, save_chinese_llama_like

    root = tmp_path_factory.mktemp("chain-inputs")
    save_tiny_model(root / "meta", "meta", dtype=torch.float16)
    save_tiny_model(root / "tuned", "safetensors", seed=1, dtype=torch.float16)
    R.run(MakeDiffOptions(root / "meta", root / "tuned", root / "diff", dtype="fp16"))
    save_chinese_llama_like(root / "lora-a")
    save_chinese_alpaca_like(root / "lora-b")
    return root


def test_recover_merge_to_ckpt_in_one_pass_equals_the_commands_through_disk(inputs, tmp_path):
    base, diff, lora = inputs / "meta", inputs / "diff", inputs / "lora-a"
    R.run(RecoverOptions(base, diff, tmp_path / "s1"))
    L.run(MergeOptions(tmp_path / "s1", (lora,), tmp_path / "s2"))
    to_ckpt(ToCkptOptions(tmp_path / "s2", tmp_path / "s.ckpt"))
    work = tmp_path / "work"
    results = run_chain(
        [
            lambda: R.run(RecoverOptions(base, diff, work / "recovered", dry_run=True)),
            lambda: L.run(MergeOptions(work / "recovered", (lora,), work / "merged", dry_run=True)),
            lambda: to_ckpt(ToCkptOptions(work / "merged", work / "zhixi.ckpt")),
        ]
    )
    assert tree(work / "zhixi.ckpt") == tree(tmp_path / "s.ckpt")
    assert sorted(p.name for p in work.iterdir()) == ["zhixi.ckpt"]  # nothing else was written
    from llmkit.io import open_source

    sizes = []
    for p in (base, diff, lora):
        with open_source(p) as src:
            sizes.append(src.total_bytes)
    # what the chain reads from disk: its inputs once (less the rows the adapter's saved embeddings replace)
    assert sizes[1] + sizes[2] < results[-1].plan.input_bytes <= sum(sizes)
    assert results[0].output == str(work / "recovered") and results[0].files == []


def test_two_adapters_in_order_then_to_meta_and_keep_writes_the_inner_models_from_the_same_pass(inputs, tmp_path):
    base, a, b = inputs / "meta", inputs / "lora-a", inputs / "lora-b"
    L.run(MergeOptions(base, (a, b), tmp_path / "s-merged"))
    to_meta(ToMetaOptions(tmp_path / "s-merged", tmp_path / "s-pth"))
    work = tmp_path / "work"
    run_chain(
        [
            lambda: L.run(MergeOptions(base, (a, b), work / "merged", dry_run=True)),
            lambda: to_meta(ToMetaOptions(work / "merged", work / "pth")),
        ],
        keep={str(work / "merged")},
    )
    assert tree(work / "pth") == tree(tmp_path / "s-pth")
    assert tree(work / "merged") == tree(tmp_path / "s-merged")  # config, tokenizer and weights alike


def test_an_inner_tap_that_fails_keeps_nothing(inputs, tmp_path):
    work = tmp_path / "work"
    with pytest.raises(CheckFailed, match="sum of all output values"):
        run_chain(
            [
                lambda: R.run(
                    RecoverOptions(inputs / "meta", inputs / "diff", work / "r", dry_run=True, check_sum=1.0)
                ),
                lambda: to_ckpt(ToCkptOptions(work / "r", work / "out.ckpt")),
            ],
            keep={str(work / "r")},
        )
    assert not work.exists() or not list(work.iterdir())


def test_every_stage_is_checked_before_the_first_tensor_is_read(inputs, tmp_path, monkeypatch):
    read: list[str] = []
    from llmkit.chain import PlanSource

    original = PlanSource.produce
    monkeypatch.setattr(PlanSource, "produce", lambda self, name: read.append(name) or original(self, name))
    work = tmp_path / "work"
    with pytest.raises(InputError, match="adapter"):
        run_chain(
            [
                lambda: R.run(RecoverOptions(inputs / "meta", inputs / "diff", work / "r", dry_run=True)),
                lambda: L.run(MergeOptions(work / "r", (inputs / "diff",), work / "m", dry_run=True)),  # not a LoRA
                lambda: to_ckpt(ToCkptOptions(work / "m", work / "out.ckpt")),
            ]
        )
    assert read == [] and not work.exists()
    # the final output may not overwrite an input of an inner stage
    with pytest.raises(InputError):
        run_chain(
            [
                lambda: R.run(RecoverOptions(inputs / "meta", inputs / "diff", work / "r", dry_run=True)),
                lambda: to_meta(ToMetaOptions(work / "r", inputs / "diff" / "out", force=True)),
            ]
        )
    assert read == []


def test_a_dry_run_of_the_last_stage_reports_the_whole_chain(inputs, tmp_path):
    work = tmp_path / "work"
    results = run_chain(
        [
            lambda: R.run(RecoverOptions(inputs / "meta", inputs / "diff", work / "r", dry_run=True)),
            lambda: to_ckpt(ToCkptOptions(work / "r", work / "out.ckpt", dry_run=True)),
        ]
    )
    report = results[-1].plan
    meta = sum(p.stat().st_size for p in (inputs / "meta").glob("*.pth"))
    assert report.input_bytes >= meta  # the Meta shards and the diff, not the never-written recovered model
    assert report.needed_disk_bytes == report.output_bytes + report.disk_margin_bytes
    assert not work.exists()


# ------------------------------------------------------------------ recipes: fused against step by step


class Watch:
    """Lists the work folder every few milliseconds while a recipe runs: every name ever seen at its top."""

    def __init__(self, folder: Path):
        self.folder, self.seen, self._stop = folder, set(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            with contextlib.suppress(OSError):
                self.seen.update(p.name for p in self.folder.iterdir())

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def published(tmp_path, tiny_factory, lora_work, hub, hf_env, monkeypatch, techgpt):
    """Every recipe's downloads on the test hub (tiny stand-ins) with their tables; the tiny Meta folder."""
    meta = tiny_factory("meta").path
    tuned = tiny_factory("safetensors", seed=1, dtype=torch.float16).path
    tables = Path(__import__("os").environ["LLMKIT_CHECKSUMS"])
    for name, dtype in (("zhixi-13b-diff", "fp32"), ("zhixi-13b-diff-fp16", "fp16")):
        diff = tmp_path / name
        R.run(MakeDiffOptions(meta, tuned, diff, dtype=dtype, fmt="bin"))
        hub.add_repo(f"zjunlp/{name}", files_of(diff))
        write_table(tables, name, {n: diff / n for n in files_of(diff) if n.endswith(".bin")})
    hub.add_repo("zjunlp/zhixi-13b-lora", files_of(lora_work / "cute"))
    write_table(tables, "zhixi-13b-lora", {n: lora_work / "cute" / n for n in files_of(lora_work / "cute")})
    for adapter in ("llama", "alpaca"):
        for size in ("7b", "13b"):
            hub.add_repo(f"ziqingyang/chinese-{adapter}-lora-{size}", files_of(lora_work / adapter))
    hub.add_repo("XuYipei/kw-cutegpt-13b-base", files_of(tiny_factory("safetensors").path))
    hub.add_repo("Abbey4799/kw-cutegpt-13b-ift-lora", files_of(lora_work / "cute"))
    for v in ("atom", "alpaca"):
        hub.add_repo(f"neukg/TechGPT-2.0-{v}-hf", files_of(tiny_factory("safetensors", seed=3).path))
    from llmkit.registry.tables import _tables_in

    _tables_in.cache_clear()  # tables are read once per process; these in-process runs share one
    for name in RECIPES:  # the tiny Meta folder (dim 64) stands in for LLaMA-7B/13B
        monkeypatch.setitem(RECIPES, name, dataclasses.replace(RECIPES[name], llama_dim=None))
    _, key = techgpt
    return meta, key


CASES = [
    (name, flags)
    for name in RECIPES
    for flags in (
        [[], ["--to-ckpt"], ["--to-meta"], ["--to-gguf"]]
        + (
            [["--with-lora"], ["--with-lora", "--to-ckpt"], ["--with-lora", "--to-meta"], ["--with-lora", "--to-gguf"]]
            if "zhixi" in name
            else []
        )
    )
]


def _run(run_cli, name, flags, work, meta, key, hub):
    args = ["recipe", "run", name, "--workdir", work, "--endpoint", hub.url, "--json", *flags]
    args += ["--key", key] if name == "techgpt-1.0" else []
    args += ["--llama-dir", meta] if RECIPES[name].needs == ("llama_dir",) else []
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    return r.json()


@pytest.mark.parametrize("name,flags", CASES, ids=[f"{n}{''.join(f)}" for n, f in CASES])
def test_a_fused_recipe_writes_what_the_step_by_step_one_writes_and_no_intermediate(
    run_cli, published, hub, tmp_path, monkeypatch, name, flags
):
    meta, key = published
    # (recipes whose sum check cannot hold for a tiny model run without it; the check itself: test above)
    for rname in ("zhixi-13b",):
        steps = tuple(
            dataclasses.replace(s, args={k: v for k, v in s.args.items() if k != "check_sum"})
            for s in RECIPES[rname].steps
        )
        monkeypatch.setitem(RECIPES, rname, dataclasses.replace(RECIPES[rname], steps=steps))
    fused_work = tmp_path / "fused"
    fused_work.mkdir()
    with Watch(fused_work) as watch:
        fused = _run(run_cli, name, flags, fused_work, meta, key, hub)
    import llmkit.recipes.runner as runner

    monkeypatch.setattr(runner, "fuse", lambda steps, keep_intermediate=False: steps)
    plain = _run(run_cli, name, flags, tmp_path / "plain", meta, key, hub)
    finals = [Path(p).name for p in fused["final"]]
    assert finals and set(finals) <= {Path(p).name for p in plain["final"]}
    for f in finals:
        if (fused_work / f).is_file():  # a .ckpt, a .gguf
            assert (fused_work / f).read_bytes() == (tmp_path / "plain" / f).read_bytes(), f
        else:
            assert tree(fused_work / f) == tree(tmp_path / "plain" / f), f
    written = {Path(s["output"]).name for s in plain["steps"] if s["output"]}
    downloads = {Path(s["output"]).name for s in fused["steps"] if s["job"] in ("download", "decrypt")}
    assert written - set(finals) - downloads or flags == [] or name.startswith("techgpt")  # there were some
    # at any moment, only the downloads, the final outputs (their staged and lock names) and the manifest
    allowed = set(finals) | downloads | {"llmkit-recipe.json"}
    seen = {re.sub(r"^\.(.*?)\.llmkit-[\w-]+$", r"\1", n) for n in watch.seen}
    assert seen <= allowed, seen - allowed


def test_a_dry_run_counts_the_downloads_and_the_final_ckpt_only(run_cli, published, hub, tmp_path):
    meta, _ = published
    work = tmp_path / "work"
    args = ["recipe", "run", "zhixi-13b", "--workdir", work, "--llama-dir", meta, "--endpoint", hub.url]
    r = run_cli(*args, "--with-lora", "--to-ckpt", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    res = r.json()
    assert [s["id"] for s in res["steps"]][-1] == "recover+merge-lora+to-ckpt"
    assert " | " in res["steps"][-1]["command"] and res["steps"][-1]["job"] == "chain"
    diff = sum(f.size for f in hub.repos["zjunlp/zhixi-13b-diff"].files.values())
    lora = sum(f.size for f in hub.repos["zjunlp/zhixi-13b-lora"].files.values())
    ckpt = max(diff, lora, sum(p.stat().st_size for p in meta.glob("consolidated.*.pth")))  # about the model
    assert res["needed_disk_bytes"] == diff + lora + ckpt
    assert not work.exists()
    # --keep-intermediate: the Hugging Face copy of LLaMA, the recovered and the merged model too
    kept = run_cli(*args, "--with-lora", "--to-ckpt", "--dry-run", "--json", "--keep-intermediate").json()
    assert kept["steps"][-1]["id"] == "from-meta+recover+merge-lora+to-ckpt"
    assert kept["needed_disk_bytes"] == diff + lora + 4 * ckpt


def test_a_flag_with_no_step_is_refused(run_cli, tmp_path):
    r = run_cli("recipe", "show", "techgpt-1.0", "--with-lora")
    assert r.exit_code == 2 and "recipe techgpt-1.0 has no --with-lora step" in r.stderr
    r = run_cli("recipe", "show", "cutegpt-13b", "--with-lora", "--json")  # CuteGPT always merges its LoRA
    assert r.exit_code == 0 and "merge-lora" in r.json()["commands"][-1]
