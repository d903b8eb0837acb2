"""``--ray`` on fused chains: a recipe's one-pass step (``llmkit.recipes.fusion``) run as Ray tasks on a real
local cluster on 127.0.0.1 (tests/ray_cluster.py), byte for byte the one-process chain.

Each task runs the whole chain again from the chain step's frozen options: the inner stages plan and are
read as sources, the last stage writes the task's file or byte range; the inner stages' integrity sums are
taken from the tasks' per-tensor parts in the one-process order, so an inner ``--check-sum`` reads the same
value (to the last digit printed) as without Ray. The driver runs as a subprocess, as a user runs it.
"""

# ruff: noqa: F811  (fixtures imported from ray_cluster / hub_server / test_download are taken as test arguments)

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hub_server import hub  # noqa: F401 (the fixture)
from ray_cluster import PY, cluster, llmkit_cli, ray_env, same_folder  # noqa: F401 (cluster: the fixture)

DRIVER = """
import json, sys
from pathlib import Path
from llmkit.cluster import on_ray
from llmkit.errors import CheckFailed
from llmkit.recipes.fusion import ChainOptions, run_chain_step

spec = json.loads(sys.argv[1])
options = ChainOptions(tuple(spec["stages"]), Path(spec["output"]))
with on_ray(spec["ray"]):
    try:
        result = run_chain_step(options)
    except CheckFailed as e:
        print(json.dumps({"failed": str(e)}))
        raise SystemExit(1)
print(json.dumps({"checks": [[c.name, c.status, c.detail] for c in result.checks], "outputs": result.outputs}))
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny fp16 Meta base, a tuned model's fp16 diff against it, and a peft adapter for it."""
    from llmkit import recover as R
    from llmkit.recover import MakeDiffOptions
    from llmkit.tiny import save_tiny_model
    from llmkit.tiny_lora import save_chinese_llama_like

    root = tmp_path_factory.mktemp("ray-chain-inputs")
    save_tiny_model(root / "meta", "meta", dtype=torch.float16)
    save_tiny_model(root / "tuned", "safetensors", seed=1, dtype=torch.float16)
    R.run(MakeDiffOptions(root / "meta", root / "tuned", root / "diff", dtype="fp16"))
    save_chinese_llama_like(root / "lora")
    return root


def _chain(inputs: Path, work: Path, *, last: str, check_sum: float | None = None) -> dict:
    """recover (with ``check_sum``) -> merge-lora -> ``last`` (to-ckpt: one .ckpt; merge-lora: its folder)."""
    recover = {"base": str(inputs / "meta"), "diff": str(inputs / "diff"), "output": str(work / "recovered")}
    if check_sum is not None:
        recover["check_sum"] = check_sum
    merged = work / ("merged" if last == "to-ckpt" else "model")
    stages = [
        {"id": "recover", "job": "recover", "args": recover},
        {
            "id": "merge-lora",
            "job": "merge-lora",
            "args": {
                "base": "{stage:recover}",
                "adapters": [str(inputs / "lora")],
                "output": str(merged),
                "shard_size": 40_000,
            },
        },
    ]
    if last == "to-ckpt":
        stages.append(
            {
                "id": "to-ckpt",
                "job": "to-ckpt",
                "args": {"source": "{stage:merge-lora}", "output": str(work / "m.ckpt")},
            }
        )
    return {"stages": stages, "output": stages[-1]["args"]["output"]}


def _drive(spec: dict, ray: str | None, env: dict[str, str] | None = None) -> tuple[int, dict]:
    r = subprocess.run(
        [PY, "-c", DRIVER, json.dumps({**spec, "ray": ray})],
        env=env or ray_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


def _sum_check(result: dict) -> list[str]:
    return [c for c in result["checks"] if c[0].startswith("recover: ")]


@pytest.mark.slow
def test_a_chain_ending_in_a_ckpt_runs_as_byte_ranges_with_the_inner_sum_of_one_process(cluster, inputs, tmp_path):
    """recover -> merge-lora -> to-ckpt: the .ckpt written by range tasks, nothing else written; recover's
    --check-sum (an inner stage's tap) computed from the tasks' parts prints the one-process sum."""
    from llmkit.io import open_source

    with open_source(inputs / "tuned") as src:
        expected = sum(float(src.get(k).double().sum()) for k in src.keys())
    one_spec = _chain(inputs, tmp_path / "one", last="to-ckpt", check_sum=expected)
    ray_spec = _chain(inputs, tmp_path / "ray", last="to-ckpt", check_sum=expected)
    code, one = _drive(one_spec, None)
    assert code == 0, one
    code, on_ray = _drive(ray_spec, cluster)
    assert code == 0, on_ray
    assert (tmp_path / "ray" / "m.ckpt").read_bytes() == (tmp_path / "one" / "m.ckpt").read_bytes()
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["m.ckpt"]  # no inner output, no stage left
    assert _sum_check(on_ray) == _sum_check(one) and _sum_check(one)  # same status, same printed sums
    assert all(c[1] == "ok" for c in _sum_check(on_ray)), _sum_check(on_ray)


@pytest.mark.slow
def test_an_inner_sum_that_fails_on_ray_fails_as_in_one_process_and_keeps_nothing(cluster, inputs, tmp_path):
    out = {}
    for tag, ray in (("one", None), ("ray", cluster)):
        code, out[tag] = _drive(_chain(inputs, tmp_path / tag, last="to-ckpt", check_sum=1.0), ray)
        assert code == 1 and "sum of all output values" in out[tag]["failed"]
        assert not (tmp_path / tag).exists() or not list((tmp_path / tag).iterdir())
    # the same sum, to the digit, in the same message
    assert out["ray"]["failed"].replace("/ray/", "/one/") == out["one"]["failed"]


@pytest.mark.slow
def test_a_chain_ending_in_a_folder_runs_one_task_per_file_and_survives_a_killed_worker(cluster, inputs, tmp_path):
    """recover -> merge-lora into a folder of several files; piece 0's worker is killed mid-file (the test
    hook holds it) and Ray's retry writes the same bytes."""
    code, one = _drive(_chain(inputs, tmp_path / "one", last="merge-lora"), None)
    assert code == 0, one
    hold = tmp_path / "hold"
    hold.mkdir()
    spec = {**_chain(inputs, tmp_path / "ray", last="merge-lora"), "ray": cluster}
    proc = subprocess.Popen(
        [PY, "-c", DRIVER, json.dumps(spec)],
        env=ray_env(LLMKIT_TEST_HOLD_PIECE=str(hold)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    mark = hold / "piece-0.pid"
    deadline = time.monotonic() + 180
    while not mark.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    worker = int(mark.read_text())
    assert worker != proc.pid
    os.kill(worker, signal.SIGKILL)
    _out, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert len(list((tmp_path / "ray" / "model").glob("*.safetensors"))) > 2
    same_folder(tmp_path / "one" / "model", tmp_path / "ray" / "model")
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["model"]


@pytest.mark.slow
def test_a_recipe_on_ray_fuses_its_tensor_steps_and_writes_the_one_process_bytes(cluster, tmp_path, hub_recipe):
    """llmkit recipe run cutegpt-13b --to-ckpt --ray: the downloads in this process (local copies, not
    streams), merge-lora + to-ckpt as one chain of range tasks; the .ckpt equals the one without --ray."""
    env, endpoint = hub_recipe
    outs = {}
    for tag, extra in (("one", []), ("ray", ["--ray", cluster])):
        work = tmp_path / tag
        args = ["recipe", "run", "cutegpt-13b", "--workdir", work, "--endpoint", endpoint, "--to-ckpt", "--json"]
        r = llmkit_cli(*args, *extra, env=env)
        assert r.returncode == 0, r.stderr
        outs[tag] = json.loads(r.stdout)
    texts = [n["text"] if isinstance(n, dict) else str(n) for n in outs["ray"]["notices"]]
    assert f"ray: tensor steps run as Ray tasks on {cluster} (2 CPUs on 1 node(s))" in " ".join(texts), texts
    ran = {s["id"]: s for s in outs["ray"]["steps"]}
    assert any(s["job"] == "chain" for s in ran.values()), ran
    assert any(s["job"] == "download" for s in ran.values())  # under --ray the hub inputs are local copies
    one_final, ray_final = Path(outs["one"]["final"][-1]), Path(outs["ray"]["final"][-1])
    assert ray_final.name == one_final.name and ray_final.read_bytes() == one_final.read_bytes()
    assert outs["ray"]["removed"]  # the downloads were intermediates: deleted at the end


@pytest.mark.slow
def test_a_recipe_step_ray_cannot_split_runs_in_this_process_and_says_why(cluster, tmp_path, hub_recipe):
    """--to-meta: merge-lora + to-meta writes Meta .pth files, which Ray does not split; under recipe run
    --ray that chain runs in the llmkit process, with a notice, and writes the one-process bytes."""
    env, endpoint = hub_recipe
    outs = {}
    for tag, extra in (("one", []), ("ray", ["--ray", cluster])):
        args = ["recipe", "run", "cutegpt-13b", "--workdir", tmp_path / tag, "--endpoint", endpoint, "--to-meta"]
        r = llmkit_cli(*args, "--json", *extra, env=env)
        assert r.returncode == 0, r.stderr
        outs[tag] = json.loads(r.stdout)
    texts = [n["text"] if isinstance(n, dict) else str(n) for n in outs["ray"]["notices"]]
    assert any(t.startswith("ray: to-meta runs in this process: ") for t in texts), texts
    one, ray = Path(outs["one"]["final"][-1]), Path(outs["ray"]["final"][-1])
    assert sorted(p.name for p in ray.iterdir()) == sorted(p.name for p in one.iterdir())
    for f in one.iterdir():
        assert (ray / f.name).read_bytes() == f.read_bytes(), f.name


@pytest.mark.slow
def test_a_recipe_refuses_an_input_url_with_ray(cluster, tmp_path):
    r = llmkit_cli(
        "recipe", "run", "cutegpt-13b", "--workdir", tmp_path / "w", "--ray", cluster,
        "--input", "kw-cutegpt-13b-base=hf://XuYipei/kw-cutegpt-13b-base",
    )  # fmt: skip
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2 and "--input kw-cutegpt-13b-base=URL streams that input" in r.stderr, r.stderr
    assert not (tmp_path / "w").exists()


def test_a_recipe_on_ray_checks_the_cluster_before_the_first_download(tmp_path):
    from ray_cluster import free_port

    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    hub = f"http://127.0.0.1:{free_port()}"  # nor there: were the hub listed first, this test would fail
    r = llmkit_cli("recipe", "run", "cutegpt-13b", "--workdir", tmp_path / "w", "--endpoint", hub, "--ray", address)
    assert r.returncode == 2, r.stderr
    assert f"no Ray cluster answers at {address}" in r.stderr, r.stderr
    assert not (tmp_path / "w").exists()  # nothing was downloaded


@pytest.fixture
def hub_recipe(hub, tmp_path, monkeypatch):
    """The test hub (127.0.0.1) serving CuteGPT's base and LoRA as tiny stand-ins; the environment a
    subprocess needs to download from it (its own HF_HOME)."""
    from llmkit.tiny import save_tiny_model
    from llmkit.tiny_lora import save_cutegpt_like

    base, lora = tmp_path / "src-base", tmp_path / "src-lora"
    save_tiny_model(base, "safetensors")
    save_cutegpt_like(lora)
    for repo, folder in (("XuYipei/kw-cutegpt-13b-base", base), ("Abbey4799/kw-cutegpt-13b-ift-lora", lora)):
        hub.add_repo(repo, {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()})
    env = ray_env(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("HF_ENDPOINT", None)
    return env, hub.url


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
