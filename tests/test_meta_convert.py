"""``llmkit from-meta`` / ``llmkit to-meta`` and Meta folders as ``--base`` (SPEC.md sections 3 and 4).

The models are made here with transformers; the Meta shards are made here from their state dicts with
SPEC's rules written out below (names, rotary un-permutation, model-parallel split). Every expected value
comes from those, from transformers/peft, or from exact float64 sums: never from llmkit's output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from common import assert_same, load_output
from safetensors.torch import save_file

HIDDEN, HEADS, INTER, VOCAB, LAYERS, EPS = 64, 8, 184, 99, 2, 1e-5  # INTER set by hand (not the 256 rule)
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj", "up_proj")

# HF -> Meta names, written out from SPEC.md sections 3/4 (independent of llmkit.io.meta.names).
TOP = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}


def hf_to_meta_name(name: str) -> str:
    if name in TOP:
        return TOP[name]
    _, _, layer, *rest = name.split(".")
    return f"layers.{layer}.{LAYER['.'.join(rest[:-1])]}.weight"


def unpermute(w: torch.Tensor, n: int) -> torch.Tensor:
    """HF rotate-half rows -> Meta interleaved rows (SPEC section 3)."""
    d1, d2 = w.shape
    return w.view(n, 2, d1 // n // 2, d2).transpose(1, 2).reshape(d1, d2)


def hf_to_meta(state: dict, kv: int) -> dict:
    out = {}
    for name, t in state.items():
        meta = hf_to_meta_name(name)
        if meta.endswith("attention.wq.weight"):
            t = unpermute(t, HEADS)
        elif meta.endswith("attention.wk.weight"):
            t = unpermute(t, kv)
        out[meta] = t.clone()
    return out


def split_meta(meta: dict, n: int) -> list[dict]:
    """Model-parallel split (SPEC section 3): output uneven with the remainder in the last shard."""
    shards: list[dict] = [{} for _ in range(n)]
    for name, t in meta.items():
        leaf = name.split(".")[-2]
        if name == "output.weight":
            sizes = [t.shape[0] // n] * n
            sizes[-1] += t.shape[0] % n
            pieces = torch.split(t, sizes, dim=0)
        elif name == "tok_embeddings.weight" or leaf in ("wo", "w2"):
            assert t.shape[1] % n == 0
            pieces = torch.chunk(t, n, dim=1)
        elif leaf in ("wq", "wk", "wv", "w1", "w3"):
            assert t.shape[0] % n == 0
            pieces = torch.chunk(t, n, dim=0)
        else:
            pieces = [t] * n
        for shard, piece in zip(shards, pieces, strict=True):
            shard[name] = piece.clone()
    return shards


def make_model(kv: int = HEADS, dtype=torch.float32, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTER,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=kv,
        max_position_embeddings=128,
        rms_norm_eps=EPS,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.05 * noise)
    return model.to(dtype).eval()


def weight_bytes(folder: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")
    }


def plan_field(data: dict, key: str):
    """A dry-run report field: top level, or under "plan" (recover, merge-lora) or "report"."""
    nested = data.get("plan") or data.get("report") or {}
    return nested[key] if key in nested else data[key]


class World:
    """Models, their HF folders (written by transformers) and Meta folders (written here), cached."""

    def __init__(self, root: Path, tokenizer: Path):
        self.root, self.tokenizer = root, tokenizer
        self.models: dict = {}
        self.metas: dict = {}

    def model(self, kv: int, dtype):
        key = (kv, dtype)
        if key not in self.models:
            model = make_model(kv, dtype)
            hf = self.root / f"hf-{kv}-{str(dtype)[6:]}"
            model.save_pretrained(hf)
            shutil.copy(self.tokenizer, hf / "tokenizer.model")
            self.models[key] = (model, {k: v.detach().clone() for k, v in model.state_dict().items()}, hf)
        return self.models[key]

    def meta(self, kv: int = HEADS, dtype=torch.float16, shards: int = 1) -> Path:
        """Meta's download layout: ROOT/llama/tokenizer.model and ROOT/llama/<model>/consolidated.NN.pth."""
        key = (kv, dtype, shards)
        if key not in self.metas:
            _, state, _ = self.model(kv, dtype)
            parent = self.root / "llama"
            parent.mkdir(exist_ok=True)
            shutil.copy(self.tokenizer, parent / "tokenizer.model")
            folder = parent / f"m-{kv}-{str(dtype)[6:]}-{shards}"
            folder.mkdir()
            for i, shard in enumerate(split_meta(hf_to_meta(state, kv), shards)):
                shard["rope.freqs"] = torch.rand(HIDDEN // HEADS // 2)  # Meta ships it; from-meta drops it
                torch.save(shard, folder / f"consolidated.{i:02d}.pth")
            params = {
                "dim": HIDDEN,
                "multiple_of": 256,
                "n_heads": HEADS,
                "n_layers": LAYERS,
                "norm_eps": EPS,
                "vocab_size": -1,
            }
            if kv != HEADS:
                params["n_kv_heads"] = kv
            (folder / "params.json").write_text(json.dumps(params))
            self.metas[key] = folder
        return self.metas[key]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_factory) -> World:
    return World(tmp_path_factory.mktemp("metaworld"), tiny_factory("safetensors").path / "tokenizer.model")


# ------------------------------------------------------------------ from-meta


def test_the_shards_here_use_spec_rotary_layout():
    """The test's own un-permutation is the inverse of SPEC section 4's formula, and not the identity."""
    w = torch.arange(HIDDEN * 16, dtype=torch.float32).view(HIDDEN, 16)
    meta = unpermute(w, HEADS)
    hf = meta.view(HEADS, HIDDEN // HEADS // 2, 2, 16).transpose(1, 2).reshape(HIDDEN, 16)
    assert torch.equal(hf, w) and not torch.equal(meta, w)
    assert torch.equal(meta[:2, 0], torch.tensor([0.0, 4 * 16]))  # head 0: rows 0 and 4 become a pair


FROM_CASES = [
    (8, torch.float16, 1),
    (8, torch.float16, 2),
    (8, torch.float16, 4),
    (8, torch.float16, 8),
    (8, torch.float32, 2),
    (2, torch.float32, 1),
    (2, torch.float16, 2),
]


@pytest.mark.parametrize("kv,dtype,shards", FROM_CASES)
def test_from_meta_equals_the_hf_tensors_bit_for_bit_and_keeps_the_dtype(world, run_cli, tmp_path, kv, dtype, shards):
    r = run_cli("from-meta", world.meta(kv, dtype, shards), "-o", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    assert_same(load_output(tmp_path / "out"), world.model(kv, dtype)[1])  # rope.freqs dropped, fp16 stays fp16


def test_from_meta_writes_tensors_in_transformers_order(world, run_cli, tmp_path):
    r = run_cli("from-meta", world.meta(8, torch.float16, 2), "-o", tmp_path / "out", "--format", "bin")
    assert r.exit_code == 0, r.stderr
    written = torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True)
    assert list(written) == list(world.model(8, torch.float16)[0].state_dict())


def test_from_meta_dtype_fp32_widens_exactly(world, run_cli, tmp_path):
    r = run_cli("from-meta", world.meta(8, torch.float16, 2), "-o", tmp_path / "out", "--dtype", "fp32")
    assert r.exit_code == 0, r.stderr
    assert_same(load_output(tmp_path / "out"), {k: v.float() for k, v in world.model(8, torch.float16)[1].items()})


def test_transformers_loads_the_result_with_the_original_logits(world, run_cli, tmp_path):
    from transformers import LlamaForCausalLM

    r = run_cli("from-meta", world.meta(2, torch.float32, 2), "-o", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    loaded = LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 17, 42, 98, 3, 60, 7]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, world.model(2, torch.float32)[0](ids).logits)


def test_config_json_comes_from_tensors_and_params_and_tokenizer_from_the_parent(world, run_cli, tmp_path):
    meta = world.meta(2, torch.float16, 2)
    r = run_cli("from-meta", meta, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {
        k: cfg[k]
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_key_value_heads",
            "num_hidden_layers",
            "rms_norm_eps",
            "vocab_size",
        )
    } == {
        "hidden_size": 64,
        "intermediate_size": INTER,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "rms_norm_eps": EPS,
        "vocab_size": VOCAB,
    }
    assert cfg.get("torch_dtype", cfg.get("dtype")) == "float16"
    assert (tmp_path / "out" / "generation_config.json").is_file()
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (meta.parent / "tokenizer.model").read_bytes()


def test_tokenizer_option_beats_meta_dir_which_beats_the_parent(world, run_cli, tmp_path):
    import io

    import sentencepiece as spm

    def train(words: list[str]) -> bytes:
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter([" ".join(words * 3)] * 50),
            model_writer=buf,
            vocab_size=40,
            model_type="bpe",
            num_threads=1,
            minloglevel=2,
            hard_vocab_limit=False,
        )
        return buf.getvalue()

    meta = tmp_path / "llama" / "7B"
    shutil.copytree(world.meta(8, torch.float16, 1), meta)
    shutil.copy(world.tokenizer, meta.parent / "tokenizer.model")
    own, given = train(["alpha", "beta", "gamma"]), train(["delta", "epsilon", "zeta"])
    assert own != given
    (meta / "tokenizer.model").write_bytes(own)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.model").write_bytes(given)
    assert run_cli("from-meta", meta, "-o", tmp_path / "a").exit_code == 0
    assert (tmp_path / "a" / "tokenizer.model").read_bytes() == own
    r = run_cli("from-meta", meta, "-o", tmp_path / "b", "--tokenizer", tmp_path / "tok")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "b" / "tokenizer.model").read_bytes() == given


def test_from_meta_json_reports_ok_and_the_output(world, run_cli, tmp_path):
    r = run_cli("from-meta", world.meta(8, torch.float16, 1), "-o", tmp_path / "out", "--json")
    assert r.exit_code == 0, r.stderr
    data = r.json()
    assert data["ok"] is True and data["outputs"] == [str(tmp_path / "out")]
    assert isinstance(data["checks"], list) and isinstance(data["notices"], list)


# ------------------------------------------------------------------ to-meta


@pytest.mark.parametrize("kv,shards", [(8, None), (8, 1), (8, 2), (2, 2)])
def test_to_meta_equals_the_meta_split_and_writes_params(world, run_cli, tmp_path, kv, shards):
    _, state, hf = world.model(kv, torch.float16)
    args = ["to-meta", hf, "-o", tmp_path / "out"] + (["--shards", str(shards)] if shards else [])
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    expected = split_meta(hf_to_meta(state, kv), shards or 1)  # hidden 64: Meta's default is one shard
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.pth")) == [f"consolidated.{i:02d}.pth" for i in range(len(expected))]
    for i, ref in enumerate(expected):
        assert_same(torch.load(out / f"consolidated.{i:02d}.pth", weights_only=True), ref)
    params = json.loads((out / "params.json").read_text())
    assert (params["dim"], params["n_heads"], params["n_layers"], params["norm_eps"]) == (HIDDEN, HEADS, LAYERS, EPS)
    assert params.get("n_kv_heads", HEADS) == kv
    assert (out / "tokenizer.model").read_bytes() == world.tokenizer.read_bytes()


@pytest.mark.parametrize("kv,shards", [(8, 4), (8, 8), (2, 2)])
def test_to_meta_then_from_meta_is_the_identity(world, run_cli, tmp_path, kv, shards):
    _, state, hf = world.model(kv, torch.float32)
    assert run_cli("to-meta", hf, "-o", tmp_path / "meta", "--shards", str(shards)).exit_code == 0
    r = run_cli("from-meta", tmp_path / "meta", "-o", tmp_path / "back")
    assert r.exit_code == 0, r.stderr
    assert_same(load_output(tmp_path / "back"), state)


# ------------------------------------------------------------------ Meta folders as --base


def f64(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


@pytest.fixture(scope="module")
def recovered(world, tmp_path_factory):
    """ZhiXi's chain on a fp16 Meta base: recover --base META and from-meta + recover --base HF."""
    from typer.testing import CliRunner

    from llmkit.cli import app

    tmp = tmp_path_factory.mktemp("recover")
    meta = world.meta(2, torch.float16, 2)
    model, base, _ = world.model(2, torch.float16)
    gen = torch.Generator().manual_seed(7)
    tuned = {k: v.float() + 0.01 * torch.randn(v.shape, generator=gen) for k, v in base.items()}
    d = {k: torch.from_numpy((f64(tuned[k]) - f64(base[k])).astype(np.float32)) for k in tuned}
    diff = tmp / "diff"
    diff.mkdir()
    save_file(d, diff / "model.safetensors", metadata={"format": "pt"})
    model.config.save_pretrained(diff)
    cfg = json.loads((diff / "config.json").read_text())
    (diff / "config.json").write_text(json.dumps(cfg | {"dtype": "float32"}))  # the tuned model is fp32
    shutil.copy(world.tokenizer, diff / "tokenizer.model")
    runs = [
        ["recover", "--base", meta, "--diff", diff, "-o", tmp / "out1"],
        ["from-meta", meta, "-o", tmp / "hf"],
        ["recover", "--base", tmp / "hf", "--diff", diff, "-o", tmp / "out2"],
    ]
    codes = [CliRunner().invoke(app, [str(a) for a in args]) for args in runs]
    assert [c.exit_code for c in codes] == [0, 0, 0], [c.output for c in codes]
    expected = {k: torch.from_numpy((f64(d[k]) + f64(base[k])).astype(np.float32)) for k in d}
    return tmp / "out1", tmp / "out2", expected


def test_recover_with_a_meta_base_writes_the_same_bytes_as_through_from_meta(recovered):
    out1, out2, expected = recovered
    assert weight_bytes(out1) == weight_bytes(out2) != {}
    assert_same(load_output(out1), expected)  # diff + base, exact fp32 sum


def test_recover_with_a_meta_base_verifies_identical_to_through_from_meta(recovered, run_cli):
    r = run_cli("verify", "--tensors", recovered[0], recovered[1])
    assert r.exit_code == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def merged(world, tmp_path_factory):
    """merge-lora --base META vs from-meta + merge-lora --base HF, fp32 base, adapter made by peft."""
    from typer.testing import CliRunner

    from llmkit.cli import app
    from llmkit.tiny_lora import save_adapter_for

    tmp = tmp_path_factory.mktemp("merge")
    meta = world.meta(2, torch.float32, 2)
    adapter = save_adapter_for(make_model(2, torch.float32), tmp / "adapter", seed=5, target_modules=LINEAR)
    runs = [
        ["merge-lora", "--base", meta, "--lora", adapter, "-o", tmp / "out1"],
        ["from-meta", meta, "-o", tmp / "hf"],
        ["merge-lora", "--base", tmp / "hf", "--lora", adapter, "-o", tmp / "out2"],
    ]
    codes = [CliRunner().invoke(app, [str(a) for a in args]) for args in runs]
    assert [c.exit_code for c in codes] == [0, 0, 0], [c.output for c in codes]
    return tmp / "out1", tmp / "out2", adapter


def test_merge_lora_with_a_meta_base_writes_the_same_bytes_and_matches_peft(world, merged):
    from llmkit.tiny_lora import peft_merged_state

    out1, out2, adapter = merged
    assert weight_bytes(out1) == weight_bytes(out2) != {}
    assert_same(load_output(out1), peft_merged_state(world.model(2, torch.float32)[2], [adapter]))


def test_merge_lora_with_a_meta_base_verifies_identical_to_through_from_meta(merged, run_cli):
    r = run_cli("verify", "--tensors", merged[0], merged[1])
    assert r.exit_code == 0, r.stdout + r.stderr


@pytest.mark.parametrize("job", ["recovered", "merged"])
def test_a_meta_base_gives_the_same_config_and_tokenizer_files_as_through_from_meta(request, job):
    out1, out2, _ = request.getfixturevalue(job)
    aux = [sorted(p.name for p in out.iterdir() if p.suffix not in (".safetensors", ".bin")) for out in (out1, out2)]
    assert "config.json" in aux[1] and aux[0] == aux[1]
    for name in aux[1]:
        assert (out1 / name).read_bytes() == (out2 / name).read_bytes(), name


# ------------------------------------------------------------------ errors, dry run, existing output


def _missing_shard(m: Path, _):
    (m / "consolidated.01.pth").rename(m / "consolidated.02.pth")
    return "consolidated.01.pth"


def _edit_params(**change):
    def edit(m: Path, _):
        p = json.loads((m / "params.json").read_text())
        (m / "params.json").write_text(json.dumps(p | change))
        return "params.json"

    return edit


def _no_params(m: Path, _):
    (m / "params.json").unlink()
    return "params.json"


def _kv_heads_not_divided(m: Path, meta_state: dict):  # 4 shards of a model with 2 kv heads: not Meta's
    for i, shard in enumerate(split_meta(meta_state, 4)):
        torch.save(shard, m / f"consolidated.{i:02d}.pth")
    return ("params.json", str(m))


@pytest.mark.parametrize(
    "breaker",
    [
        _missing_shard,
        _edit_params(dim=128),
        _edit_params(n_layers=3),
        _edit_params(n_heads=6),
        _kv_heads_not_divided,
        _no_params,
    ],
    ids=["missing-shard", "dim", "n_layers", "n_heads", "shards-vs-kv-heads", "no-params"],
)
def test_bad_meta_folder_exits_2_naming_the_file_and_writes_nothing(world, run_cli, tmp_path, breaker):
    meta = tmp_path / "meta"
    shutil.copytree(world.meta(2, torch.float16, 2), meta)
    names = breaker(meta, hf_to_meta(world.model(2, torch.float16)[1], 2))
    r = run_cli("from-meta", meta, "-o", tmp_path / "out")
    assert r.exit_code == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert any(n in lines[0] for n in ((names,) if isinstance(names, str) else names)), lines[0]
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kv,shards", [(8, 3), (2, 4)], ids=["3-of-8-heads", "4-of-2-kv-heads"])
def test_to_meta_shards_that_do_not_divide_the_heads_exit_2(world, run_cli, tmp_path, kv, shards):
    r = run_cli("to-meta", world.model(kv, torch.float16)[2], "-o", tmp_path / "out", "--shards", str(shards))
    assert r.exit_code == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "head" in lines[0], r.stderr
    assert "--pth-shards" not in lines[0]  # merge-lora's option, not to-meta's
    assert not (tmp_path / "out").exists()


def test_dry_run_reports_sizes_and_writes_nothing(world, run_cli, tmp_path):
    state = world.model(8, torch.float16)[1]
    size = sum(t.numel() * t.element_size() for t in state.values())
    pth_size = sum(t.numel() * t.element_size() for sh in split_meta(hf_to_meta(state, 8), 2) for t in sh.values())
    r = run_cli("from-meta", world.meta(8, torch.float16, 2), "-o", tmp_path / "out", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    data = r.json()
    assert data["ok"] is True and data["outputs"] == [] and plan_field(data, "output_bytes") == size
    assert {"model.safetensors", "config.json", "tokenizer.model"} <= set(plan_field(data, "files"))
    assert not (tmp_path / "out").exists()
    r = run_cli(
        "to-meta", world.model(8, torch.float16)[2], "-o", tmp_path / "m", "--shards", "2", "--dry-run", "--json"
    )
    assert r.exit_code == 0, r.stderr
    data = r.json()
    assert plan_field(data, "output_bytes") == pth_size  # the norms are in every shard
    assert {"consolidated.00.pth", "consolidated.01.pth", "params.json"} <= set(plan_field(data, "files"))
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("command", ["from-meta", "to-meta"])
def test_existing_output_is_refused_without_force(world, run_cli, tmp_path, command):
    src = world.meta(8, torch.float16, 1) if command == "from-meta" else world.model(8, torch.float16)[2]
    assert run_cli(command, src, "-o", tmp_path / "out").exit_code == 0
    r = run_cli(command, src, "-o", tmp_path / "out")
    assert r.exit_code == 2 and r.stderr.strip().startswith("error:"), r.stderr
    r = run_cli(command, src, "-o", tmp_path / "out", "--force")
    assert r.exit_code == 0, r.stderr
