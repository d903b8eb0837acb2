"""The recipes: for each model family, the ordered steps from download to a usable model, as data.

A step's ``args`` are the fields of its job's options (``llmkit.recipes.jobs``). Strings may name
``{workdir}``, ``{key}`` (``--key``: LLaMA-1 7B ``consolidated.00.pth``), ``{llama_dir}`` (``--llama-dir``:
Meta's original LLaMA folder of the right size), ``{out:STEP}`` (what an earlier step wrote) and, in a
conversion, ``{model}`` (the last usable model before it: the merged one with ``--with-lora``). A step with
``when`` runs only when that switch is given (``--to-ckpt``, ``--to-meta``, ``--to-gguf``, ``--with-lora``); a switch a recipe
has no step for is refused. ``final`` marks a usable model; everything else a later step no longer needs is
deleted unless ``--keep-intermediate``. ``llmkit.recipes.fusion`` runs consecutive tensor steps as one pass
(only the last one's output is written).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Step:
    id: str
    job: str
    args: dict[str, Any]
    when: str | None = None  # a switch: to_ckpt | to_meta | to_gguf | with_lora
    final: bool = False


@dataclass(frozen=True)
class Recipe:
    name: str
    family: str
    summary: str
    steps: tuple[Step, ...]
    needs: tuple[str, ...] = ()  # key | llama_dir
    notes: tuple[str, ...] = field(default_factory=tuple)
    llama_dim: int | None = None  # the hidden size (params.json "dim") --llama-dir must have


MODEL = "{model}"  # in a conversion step: the last usable model before it (merged, if --with-lora)


def _to_ckpt() -> Step:
    return Step("to-ckpt", "to-ckpt", {"source": MODEL, "output": "{workdir}/model.ckpt"}, when="to_ckpt", final=True)


def _to_meta(name: str) -> Step:
    return Step(
        "to-meta", "to-meta", {"source": MODEL, "output": f"{{workdir}}/{name}-pth"}, when="to_meta", final=True
    )


def _to_gguf(name: str) -> Step:
    # general.name given, so that a fused run, a step-by-step run and the printed pipe write the same file
    args = {"source": MODEL, "output": f"{{workdir}}/{name}.gguf", "model_name": name}
    return Step("to-gguf", "to-gguf", args, when="to_gguf", final=True)


def _chinese(size: str, adapter: str, vocab: int) -> Recipe:
    return Recipe(
        name=f"chinese-{adapter}-{size}",
        family="Chinese-LLaMA-Alpaca",
        summary=f"LLaMA-{size.upper()} (Meta originals) + chinese-{adapter}-lora-{size} -> Chinese-"
        f"{'LLaMA' if adapter == 'llama' else 'Alpaca'}-{size.upper()} (vocab {vocab})",
        needs=("llama_dir",),
        llama_dim={"7b": 4096, "13b": 5120}[size],
        steps=(
            Step("from-meta", "from-meta", {"source": "{llama_dir}", "output": f"{{workdir}}/llama-{size}-hf"}),
            Step(
                "download-lora",
                "download",
                {"model": f"chinese-{adapter}-lora-{size}", "output": f"{{workdir}}/chinese-{adapter}-lora-{size}"},
            ),
            Step(
                "merge-lora",
                "merge-lora",
                {
                    "base": "{out:from-meta}",
                    "adapters": ["{out:download-lora}"],
                    "output": f"{{workdir}}/chinese-{adapter}-{size}",
                },
                final=True,
            ),
            _to_meta(f"chinese-{adapter}-{size}"),
            _to_gguf(f"chinese-{adapter}-{size}"),
            _to_ckpt(),
        ),
        notes=(
            f"Chinese-LLaMA-Alpaca's SHA256.md lists the adapter (table chinese-{adapter}-lora-{size}); the recipe "
            "does not stop on it, check the download with llmkit verify",
        ),
    )


def _zhixi(fp16: bool) -> Recipe:
    diff = "zhixi-13b-diff-fp16" if fp16 else "zhixi-13b-diff"
    recover: dict[str, Any] = {
        "base": "{out:from-meta}",
        "diff": "{out:download-diff}",
        "output": "{workdir}/zhixi-13b" + ("-fp16" if fp16 else ""),
    }
    if not fp16:
        recover["check_sum"] = 94052.2891  # upstream's published integrity sum of the fp32 model
    return Recipe(
        name="zhixi-13b" + ("-fp16" if fp16 else ""),
        family="ZhiXi / KnowLM",
        summary=f"LLaMA-13B (Meta originals) + the {'fp16' if fp16 else 'fp32'} diff -> ZhiXi-13B",
        needs=("llama_dir",),
        llama_dim=5120,
        steps=(
            Step("from-meta", "from-meta", {"source": "{llama_dir}", "output": "{workdir}/llama-13b-hf"}),
            Step("download-diff", "download", {"model": diff, "output": f"{{workdir}}/{diff}"}),
            Step("verify-diff", "verify", {"paths": ["{out:download-diff}"], "table": diff}),
            Step("recover", "recover", recover, final=True),
            Step(
                "download-lora",
                "download",
                {"model": "zhixi-13b-lora", "output": "{workdir}/zhixi-13b-lora"},
                when="with_lora",
            ),
            Step(
                "verify-lora", "verify", {"paths": ["{out:download-lora}"], "table": "zhixi-13b-lora"}, when="with_lora"
            ),
            Step(
                "merge-lora",
                "merge-lora",
                {
                    "base": "{out:recover}",
                    "adapters": ["{out:download-lora}"],
                    "output": "{workdir}/zhixi-13b" + ("-fp16" if fp16 else "") + "-lora-merged",
                },
                when="with_lora",
                final=True,
            ),
            _to_meta("zhixi-13b" + ("-fp16" if fp16 else "")),
            _to_gguf("zhixi-13b" + ("-fp16" if fp16 else "")),
            _to_ckpt(),
        ),
        notes=("LLaMA-13B stays fp16 (from-meta keeps the originals' dtype), as the diff expects",),
    )


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="techgpt-1.0",
            family="TechGPT-1.0",
            summary="neukg/TechGPT-7B: download the .enc files, verify, XOR-decrypt with LLaMA-1 7B, verify",
            needs=("key",),
            steps=(
                Step("download", "download", {"model": "techgpt-7b", "output": "{workdir}/techgpt-7b-enc"}),
                Step("verify-download", "verify", {"paths": ["{out:download}"], "table": "techgpt-7b.enc"}),
                Step(
                    "decrypt",
                    "decrypt",
                    {"inputs": ["{out:download}"], "key": "{key}", "output": "{workdir}/techgpt-7b"},
                    final=True,
                ),
                Step("verify", "verify", {"paths": ["{out:decrypt}"], "table": "techgpt-7b"}),
                _to_meta("techgpt-7b"),
                _to_gguf("techgpt-7b"),
                _to_ckpt(),
            ),
        ),
        *(
            Recipe(
                name=f"techgpt-2.0-{v}",
                family="TechGPT-2.0",
                summary=f"neukg/TechGPT-2.0-{v}-hf: download, then to-ckpt for MindFormers (always)",
                steps=(
                    Step(
                        "download",
                        "download",
                        {"model": f"techgpt-2.0-{v}", "output": f"{{workdir}}/techgpt-2.0-{v}"},
                        final=True,
                    ),
                    Step(
                        "to-ckpt",
                        "to-ckpt",
                        {"source": "{out:download}", "output": f"{{workdir}}/techgpt-2.0-{v}.ckpt"},
                        final=True,
                    ),
                    _to_meta(f"techgpt-2.0-{v}"),
                    _to_gguf(f"techgpt-2.0-{v}"),
                ),
                notes=("no published checksums; the download is checked against the hub's own hashes",),
            )
            for v in ("atom", "alpaca")
        ),
        _zhixi(False),
        _zhixi(True),
        _chinese("7b", "llama", 49953),
        _chinese("13b", "llama", 49953),
        _chinese("7b", "alpaca", 49954),
        _chinese("13b", "alpaca", 49954),
        Recipe(
            name="cutegpt-13b",
            family="CuteGPT",
            summary="XuYipei/kw-cutegpt-13b-base + Abbey4799/kw-cutegpt-13b-ift-lora -> CuteGPT-13B-ift",
            steps=(
                Step(
                    "download-base", "download", {"model": "cutegpt-13b-base", "output": "{workdir}/cutegpt-13b-base"}
                ),
                Step(
                    "download-lora",
                    "download",
                    {"model": "cutegpt-13b-ift-lora", "output": "{workdir}/cutegpt-13b-ift-lora"},
                ),
                Step(
                    "merge-lora",
                    "merge-lora",
                    {
                        "base": "{out:download-base}",
                        "adapters": ["{out:download-lora}"],
                        "output": "{workdir}/cutegpt-13b-ift",
                    },
                    final=True,
                ),
                _to_meta("cutegpt-13b-ift"),
                _to_gguf("cutegpt-13b-ift"),
                _to_ckpt(),
            ),
        ),
    )
}
