"""Training state is recognised by its names, never by being unknown (issue #28, item 3).

Real MindSpore writes the checkpoints: a tiny LLaMA's MindFormers-named parameters in a training cell
with each of MindSpore's optimizers (and AdamWeightDecay with a dynamic loss scale, as MindFormers
trains), saved by ``mindspore.save_checkpoint``. from-ckpt leaves exactly the tensors MindSpore added out,
calls them training state, and writes the model; checksum --tensors and inspect take the file as a
complete model. Damaging the name of a weight in such a file is still refused.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

OPTIMIZERS = (
    "AdamWeightDecay+loss-scale",
    "Adam",
    "Momentum",
    "Lamb",
    "RMSProp",
    "Adagrad",
    "FTRL",
    "SGD",
    "Rprop",
    "ASGD",
    "LazyAdam",
    "AdaMax",
)

TRAIN = """
    from mindspore import nn, Parameter, ParameterTuple
    weights = ms.load_checkpoint(sys.argv[1])

    class Net(nn.Cell):
        def __init__(self):
            super().__init__(auto_prefix=False)
            self.ws = ParameterTuple([Parameter(p.value(), name=n) for n, p in weights.items()])

        def construct(self, x):
            return x.sum()

    out = {}
    for name in sys.argv[3].split(","):
        net = Net()
        params = net.trainable_params()
        kind = name.split("+")[0]
        kwargs = {"momentum": 0.9} if kind in ("Momentum",) else {}
        opt = getattr(nn, kind)(params, learning_rate=1e-3, **kwargs) if kind != "FTRL" else nn.FTRL(params)
        if name.endswith("+loss-scale"):
            scale = nn.DynamicLossScaleUpdateCell(loss_scale_value=2 ** 12, scale_factor=2, scale_window=1000)
            cell = nn.TrainOneStepWithLossScaleCell(net, opt, scale_sense=scale)
        else:
            cell = nn.TrainOneStepCell(net, opt)
        path = f"{sys.argv[2]}/{name}.ckpt"
        ms.save_checkpoint(cell, path)
        out[name] = list(ms.load_checkpoint(path))
    print(json.dumps(out))
"""


def test_every_mindspore_optimizer_state_is_named_training_state_and_left_out(
    tmp_path, run_cli, tiny_factory, mindspore_run
):
    m = tiny_factory("safetensors")
    assert run_cli("to-ckpt", m.path, "-o", tmp_path / "model.ckpt").exit_code == 0
    stored = json.loads(mindspore_run(TRAIN, tmp_path / "model.ckpt", tmp_path, ",".join(OPTIMIZERS)))
    weights = set(
        json.loads(mindspore_run("print(json.dumps(list(ms.load_checkpoint(sys.argv[1]))))", tmp_path / "model.ckpt"))
    )
    for name in OPTIMIZERS:
        ckpt = tmp_path / f"{name}.ckpt"
        added = set(stored[name]) - weights
        assert added and weights <= set(stored[name]), name
        r = run_cli("from-ckpt", ckpt, "-o", tmp_path / f"hf-{name}", "--config", m.path, "--json")
        assert r.exit_code == 0, (name, r.stderr)
        data = r.json()
        assert set(data["unmapped"]) == added, name
        texts = [n["text"] for n in data["notices"]]
        assert any("training-state" in t for t in texts), (name, texts)
        assert not any("neither" in t for t in texts), (name, texts)
        back = load_file(tmp_path / f"hf-{name}" / "model.safetensors")
        assert set(back) == set(m.state) and all(torch.equal(back[k], v) for k, v in m.state.items())
        assert run_cli("checksum", "--tensors", ckpt).exit_code == 0, name
        assert run_cli("inspect", ckpt, "--no-tensors").exit_code == 0, name


def test_a_damaged_weight_name_in_a_training_checkpoint_is_still_refused(
    tmp_path, run_cli, tiny_factory, mindspore_run
):
    m = tiny_factory("safetensors")
    assert run_cli("to-ckpt", m.path, "-o", tmp_path / "model.ckpt").exit_code == 0
    mindspore_run(TRAIN, tmp_path / "model.ckpt", tmp_path, "AdamWeightDecay+loss-scale")
    data = bytearray((tmp_path / "AdamWeightDecay+loss-scale.ckpt").read_bytes())
    name = b"model.layers.0.feed_forward.w3.weight"
    at = data.index(name) + len(name) - 3  # the weight's own record (its moments come later, prefixed)
    data[at] ^= 0x02  # "weight" -> "weieht": one byte of the name
    (tmp_path / "damaged.ckpt").write_bytes(bytes(data))
    r = run_cli("from-ckpt", tmp_path / "damaged.ckpt", "-o", tmp_path / "out", "--config", m.path)
    lines = r.stderr.splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "model.layers.0.feed_forward.w3.weight" in lines[0]
    assert "lacks" in lines[0] and "training" not in lines[0]
    assert not (tmp_path / "out").exists()
