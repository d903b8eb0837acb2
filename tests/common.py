"""What several test files check and build the same way: one error line, tensors equal to the bit, md5s,
output folders read back, recorded library calls, small input files and a shell to pipe commands through.

Imported by module name (``from common import one_error_line``), as ``spec_reference`` is: pytest puts
this folder on ``sys.path`` for the test files beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmkit.io import open_source
from llmkit.tiny import (
    TINY_HEADS,
    TINY_HIDDEN,
    TINY_INTERMEDIATE,
    TINY_LAYERS,
    TINY_VOCAB,
    hf_to_meta_state,
    write_tokenizer,
)

EMPTY = hashlib.sha256(b"").hexdigest()  # the sha256 of no bytes: TechGPT's .enc label
BIN = Path(sys.executable).parent  # the venv's bin: llmkit and python3


class CommandResult(Protocol):
    """What ``run_cli`` returns (conftest.CliResult): the exit code and the two streams."""

    exit_code: int
    stdout: str
    stderr: str


# ------------------------------------------------------------------ error lines


def stderr_is_one_error_line(stderr: str, *names: str | Path) -> str:
    """``stderr`` is exactly one line, ``error: ...``, not an internal error, naming every one of ``names``."""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "internal error" not in lines[0]
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def one_error_line(r: CommandResult, *names: str | Path) -> str:
    """Exit 2 and exactly one stderr line, ``error: ...``, naming every one of ``names``."""
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    return stderr_is_one_error_line(r.stderr, *names)


def only_error_line(stderr: str) -> str:
    """The one ``error:`` line of a failure (other stderr lines, e.g. progress, are allowed around it)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, f"expected exactly one error: line, got {stderr!r}"
    return errors[0]


# ------------------------------------------------------------------ tensors and files


def assert_same(out: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """The same tensor names and, name by name, the same dtype, shape and bits."""
    assert set(out) == set(expected), sorted(set(out) ^ set(expected))
    for name, want in expected.items():
        got = out[name]
        assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, want.dtype, got.shape)
        assert torch.equal(got, want), name


def load_output(folder: Path) -> dict[str, torch.Tensor]:
    """Read an output folder's weights with safetensors/torch themselves (not llmkit)."""
    state: dict[str, torch.Tensor] = {}
    for p in sorted(folder.glob("*.safetensors")):
        state.update(load_file(p))
    for p in sorted(folder.glob("*.bin")):
        state.update(torch.load(p, weights_only=True))
    return state


def merged_state(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the model at ``out``, read through llmkit's source (any layout it reads)."""
    with open_source(out) as src:
        return {k: t.clone() for k, t in src}


def md5(data: bytes | Path) -> str:
    """The md5 hex digest of ``data``, or of the bytes of the file at ``data``."""
    return hashlib.md5(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def write_file(path: Path, data: bytes) -> Path:
    """``data`` at ``path``, its folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def enc_name(name: str) -> str:
    """The name TechGPT publishes the encrypted ``name`` under."""
    return f"{name}.{EMPTY}.enc"


def tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too): relative path -> sha256 of a file, "dir", or "link"."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink():
                out[rel] = "link -> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ------------------------------------------------------------------ the CLI's one library call


def record_options(
    monkeypatch: pytest.MonkeyPatch, *targets: tuple[object, str], keywords: tuple[str, ...] | None = None
) -> list[object]:
    """Replace each library call ``(module, name)`` with a recorder: it keeps the options object it is given
    and ends the command with ``SystemExit(0)`` (only the options matter). ``keywords``: the runtime keyword
    arguments the real call takes (any other fails, as it would there); ``None`` accepts any.
    Returns the list the options are appended to."""
    seen: list[object] = []

    def record(options: object, **runtime: object) -> None:
        unexpected = set(runtime) - set(keywords) if keywords is not None else set()
        if unexpected:
            raise TypeError(f"unexpected keyword arguments: {sorted(unexpected)}")
        seen.append(options)
        raise SystemExit(0)

    for module, name in targets:
        monkeypatch.setattr(module, name, record)
    return seen


# ------------------------------------------------------------------ a shell


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """``bash -c 'set -o pipefail; SCRIPT'`` in ``cwd``, with the venv's bin first on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("LLMKIT_DEBUG", None)
    return subprocess.run(
        ["bash", "-c", "set -o pipefail\n" + script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# ------------------------------------------------------------------ tiny models without transformers
# Written with safetensors / torch.save (the file formats transformers and Meta write): importing transformers
# alone costs ~3 s per worker, and a test that runs llmkit in subprocesses pays the torch import per process.


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    """The 21 fp32 tensors of a 2-layer LLaMA (hidden 64, 4 heads, vocab 100), Hugging Face names."""
    g = torch.Generator().manual_seed(seed)
    h, i, v = TINY_HIDDEN, TINY_INTERMEDIATE, TINY_VOCAB
    shapes = {"model.embed_tokens.weight": (v, h)}
    for n in range(TINY_LAYERS):
        p = f"model.layers.{n}"
        shapes.update({f"{p}.self_attn.{x}_proj.weight": (h, h) for x in "qkvo"})
        shapes.update(
            {
                f"{p}.mlp.gate_proj.weight": (i, h),
                f"{p}.mlp.up_proj.weight": (i, h),
                f"{p}.mlp.down_proj.weight": (h, i),
                f"{p}.input_layernorm.weight": (h,),
                f"{p}.post_attention_layernorm.weight": (h,),
            }
        )
    shapes.update({"model.norm.weight": (h,), "lm_head.weight": (v, h)})
    return {
        name: (1.0 + 0.1 * torch.randn(shape, generator=g))
        if len(shape) == 1
        else 0.05 * torch.randn(shape, generator=g)
        for name, shape in shapes.items()
    }


def llama_config() -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": TINY_HIDDEN,
        "intermediate_size": TINY_INTERMEDIATE,
        "num_attention_heads": TINY_HEADS,
        "num_key_value_heads": TINY_HEADS,
        "num_hidden_layers": TINY_LAYERS,
        "vocab_size": TINY_VOCAB,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def write_hf(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    """A Hugging Face folder as save_pretrained writes it: model.safetensors, config.json, tokenizer files."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(llama_config(), indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}) + "\n")
    write_tokenizer(folder)
    return folder


def tuned_state(base_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A "fine-tuned" model whose every weight t lies in [b/2, 2b] of the base's b: then t - b is exact in
    fp32 (Sterbenz) and so is (t - b) + b = t, so make-diff then recover gives t back bit for bit."""
    g = torch.Generator().manual_seed(5)
    return {k: v * (0.6 + 1.3 * torch.rand(v.shape, generator=g)) for k, v in base_state.items()}


def write_meta(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    """``state`` as Meta ships LLaMA-1 7B: consolidated.00.pth (Meta names, interleaved q/k rows), params.json,
    tokenizer.model."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(hf_to_meta_state(state, TINY_HEADS), folder / "consolidated.00.pth")
    params = {
        "dim": TINY_HIDDEN,
        "multiple_of": 16,
        "n_heads": TINY_HEADS,
        "n_layers": TINY_LAYERS,
        "norm_eps": 1e-6,
        "vocab_size": -1,
    }
    (folder / "params.json").write_text(json.dumps(params) + "\n")
    write_tokenizer(folder)
    for extra in ("tokenizer_config.json", "special_tokens_map.json"):
        (folder / extra).unlink()
    return folder


def write_lora(folder: Path) -> Path:
    """A LoRA adapter in peft's files (r 8, alpha 16 on q_proj and v_proj of every layer), written without
    importing peft."""
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "fan_in_fan_out": False,
        "bias": "none",
        "use_rslora": False,
        "base_model_name_or_path": None,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    g = torch.Generator().manual_seed(6)
    tensors = {}
    for layer in range(TINY_LAYERS):
        for proj in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(8, TINY_HIDDEN, generator=g) * 0.1
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(TINY_HIDDEN, 8, generator=g) * 0.1
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    return folder
