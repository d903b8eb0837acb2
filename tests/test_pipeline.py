"""The job pipeline (llmkit.pipeline) and the sink registry, through the example job that
docs/DEVELOPING.md shows for adding a job: the example is taken from the document and run as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmkit.errors import CheckFailed, InputError
from llmkit.io.core.sink import SINKS, open_sink

DOC = Path(__file__).resolve().parent.parent / "docs" / "DEVELOPING.md"


@pytest.fixture(scope="module")
def cast():
    """``cast(options)`` and ``CastOptions`` exactly as docs/DEVELOPING.md writes them."""
    text = DOC.read_text()
    code = re.search(r"### Adding a job: a complete example.*?```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(
        "from __future__ import annotations\n"
        "from dataclasses import dataclass\nfrom pathlib import Path\n"
        "from llmkit.pipeline import AuxCopy, Plan, PlanResult, ProgressFactory, run_plan\n"
        "from llmkit.io.core.source import open_model\nfrom llmkit.io.core.dtypes import parse_cli_dtype\n"
        "from llmkit.io.core.spec import TensorSpec\nfrom llmkit.io.core.files import AUX_FILES\n" + code,
        namespace,
    )
    return namespace["cast"], namespace["CastOptions"]


def test_the_documented_example_job_runs_and_casts_every_tensor_once(cast, tiny_factory, tmp_path):
    run, Options = cast
    tiny = tiny_factory("bin")
    result = run(Options(tiny.path, tmp_path / "out"))
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert list(out) == list(tiny.state)  # output order = source order
    for name, t in tiny.state.items():
        assert torch.equal(out[name], t.to(torch.float16)), name
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "float16"
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (tiny.path / "tokenizer.model").read_bytes()
    assert result.ok and result.outputs == [str(tmp_path / "out")]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_the_example_gets_dry_run_and_the_destination_checks_for_free(cast, tiny_factory, tmp_path):
    run, Options = cast
    tiny = tiny_factory("safetensors")
    result = run(Options(tiny.path, tmp_path / "out", dry_run=True))
    assert not (tmp_path / "out").exists() and result.outputs == []
    r = result.plan
    assert r.output_bytes == sum(t.numel() * 2 for t in tiny.state.values())
    assert r.needed_disk_bytes > r.output_bytes and r.free_disk_bytes > 0 and r.memory_estimate_bytes > 0
    with pytest.raises(InputError, match="input folder"):
        run(Options(tiny.path, tiny.path / "sub"))
    run(Options(tiny.path, tmp_path / "out"))
    with pytest.raises(InputError, match="--force"):
        run(Options(tiny.path, tmp_path / "out"))


def test_a_failing_tap_keeps_nothing(tiny_factory, tmp_path):
    from llmkit.io.core.source import open_source
    from llmkit.io.core.spec import TensorSpec
    from llmkit.pipeline import Plan, open_plan_sink
    from llmkit.runner import execute

    class Refuse:
        def __init__(self):
            self.seen = []

        def feed(self, name, tensor):
            self.seen.append(name)

        def finish(self):
            raise CheckFailed("no")

    src = open_source(tiny_factory("safetensors").path)
    tap = Refuse()
    plan = Plan(
        job="t",
        output=tmp_path / "out",
        fmt="bin",
        specs=[TensorSpec(i.name, i.dtype, i.shape) for i in src.infos()],
        produce=src.get,
        reads=lambda n: [(src, n)],
        inputs=[src.path],
        input_bytes=0,
        working_set_bytes=0,
        taps=[tap],
        sources=[src],
    )
    with plan, pytest.raises(CheckFailed):
        execute(plan, open_plan_sink(plan), progress=None)
    assert tap.seen == src.keys()
    assert not (tmp_path / "out").exists()  # not even the folder the run created


def test_the_sink_registry_has_every_format_and_refuses_unknown_ones(tmp_path):
    assert {"safetensors", "bin"} <= set(SINKS)
    with pytest.raises(InputError, match=r"ckpt.*gguf.*meta-pth"):
        open_sink("onnx", tmp_path / "o", [])
    with open_sink("ckpt", tmp_path / "o.ckpt", []) as sink:  # registered on first use
        assert sink.files == ["o.ckpt"]
    assert (tmp_path / "o.ckpt").read_bytes() == b""  # a checkpoint of no tensors is an empty file
    with open_sink(
        "meta-pth",
        tmp_path / "m",
        [],
        config={"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 0, "vocab_size": 8},
    ):
        pass
    assert {"meta-pth", "ckpt"} <= set(SINKS)
