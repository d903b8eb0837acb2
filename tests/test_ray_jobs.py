"""``--ray ADDRESS`` for the folder jobs besides recover and merge-lora (tests/test_ray.py): make-diff,
from-meta, from-ckpt and from-gguf write the same bytes as Ray tasks as in one process.

The cluster is tests/ray_cluster.py's (a 2-CPU head on 127.0.0.1 only); llmkit runs as a subprocess, with and
without --ray, and the two output folders are compared byte for byte. The inputs: Hugging Face folders and a
Meta checkpoint written with safetensors / torch.save (tests/common.py), a MindSpore ``.ckpt`` and a GGUF
written by llmkit's to-ckpt and to-gguf in this process (their bytes are held to their peers elsewhere).
"""

# ruff: noqa: F811  (the cluster fixture, imported from ray_cluster, is taken as a test argument)

from __future__ import annotations

import pytest
from common import tiny_state, tuned_state, write_hf, write_meta
from ray_cluster import cluster, one_and_ray, same_folder  # noqa: F401 (cluster: the fixture)

SHARD = "60KB"  # several files: several tasks


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from llmkit.convert.ckpt import ToCkptOptions, to_ckpt
    from llmkit.convert.gguf import ToGGUFOptions, to_gguf

    root = tmp_path_factory.mktemp("rayjobs")
    base = write_hf(root / "base", tiny_state(0))
    to_ckpt(ToCkptOptions(base, root / "model.ckpt"))
    to_gguf(ToGGUFOptions(base, root / "model.gguf"))
    return {
        "base": base,
        "target": write_hf(root / "target", tuned_state(tiny_state(0))),
        "meta": write_meta(root / "meta", tiny_state(1)),
        "ckpt": root / "model.ckpt",
        "gguf": root / "model.gguf",
    }


JOBS = {
    "make-diff": lambda i: ["make-diff", "--base", i["base"], "--target", i["target"]],
    "from-meta": lambda i: ["from-meta", i["meta"]],
    "from-ckpt": lambda i: ["from-ckpt", i["ckpt"], "--config", i["base"]],
    "from-gguf": lambda i: ["from-gguf", i["gguf"]],
}


@pytest.mark.slow
@pytest.mark.parametrize("job", list(JOBS))
def test_the_job_on_ray_writes_the_one_process_bytes(cluster, inputs, tmp_path, job):
    args = [*JOBS[job](inputs), "-o", "{}", "--shard-size", SHARD, "-q"]
    one, on_ray = one_and_ray(args, tmp_path / job, cluster)
    assert len(list(on_ray.glob("model-*.safetensors"))) > 1  # split into several pieces
    same_folder(one, on_ray)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{job}-one", f"{job}-ray"]  # no stage, no lock left
