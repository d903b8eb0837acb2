"""The wheel carries the LICENSE, the docs and the checksum tables; every install form finds the tables.

Built here from a copy of the sources (the worktree is left untouched) with the venv's own pip and
setuptools, then installed with ``pip install --target`` into a temporary folder and imported from there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import llmkit

REPO = Path(__file__).resolve().parent.parent


def _copy_sources(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, dest / name)
    for name in ("llmkit", "docs", "checksums"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=ignore)


def _pip(*args: str, cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LLMKIT_CHECKSUMS")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    r = subprocess.run(
        [sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_a_wheel_installed_with_target_finds_its_tables_and_ships_license_and_docs(tmp_path):
    src, dist, target = tmp_path / "src", tmp_path / "dist", tmp_path / "target"
    src.mkdir()
    _copy_sources(src)
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src), cwd=tmp_path)
    wheel = next(dist.glob("llmkit-*.whl"))
    assert wheel.name.startswith(f"llmkit-{llmkit.__version__}-")  # the one version source
    names = zipfile.ZipFile(wheel).namelist()
    license_text = (REPO / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    licenses = [n for n in names if ".dist-info/" in n and n.rsplit("/", 1)[-1] == "LICENSE"]
    assert licenses and zipfile.ZipFile(wheel).read(licenses[0]).decode() == license_text
    tables = sorted(p.name for p in (REPO / "llmkit" / "checksums").iterdir() if p.suffix in (".md5", ".sha256"))
    assert tables and all(f"llmkit/checksums/{t}" in names for t in tables)
    docs = {n.split("/share/doc/llmkit/", 1)[1] for n in names if "/share/doc/llmkit/" in n}
    assert {"README.md", "LICENSE", "docs/recover.md", "docs/commands/recover.md", "docs/families/zhixi.md"} <= docs

    _pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel), cwd=tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("LLMKIT_CHECKSUMS",)}
    env["PYTHONPATH"] = str(target)
    code = (
        "import llmkit, llmkit.registry as r; print(llmkit.__file__); print(r.checksums_dir()); "
        "print(' '.join(sorted(r.builtin_tables()))); print(r.get_table('techgpt-7b').entries[0].digest)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    module, folder, names_line, digest = r.stdout.splitlines()
    assert Path(module).is_relative_to(target) and Path(folder).is_relative_to(target)
    assert sorted(names_line.split()) == sorted(t.rsplit(".", 1)[0] for t in tables)
    first = next(
        line
        for line in (REPO / "llmkit" / "checksums" / "techgpt-7b.md5").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert digest == first.split()[0]


_BLOCK_PROTOBUF = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "google.protobuf" or name.startswith("google.protobuf."):
            raise ModuleNotFoundError(name, name=name)
sys.meta_path.insert(0, _Block())
"""


def test_protobuf_stays_a_dependency_because_transformers_needs_it_for_a_sentencepiece_tokenizer(tiny_factory):
    """llmkit never imports protobuf, but AutoTokenizer (llmkit demo, the tiny references) turns a LLaMA
    tokenizer.model into a fast tokenizer through it: without protobuf that load fails."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("protobuf") for d in deps)
    assert not [p for p in (REPO / "llmkit").rglob("*.py") if "google.protobuf" in p.read_text()]  # not llmkit's
    model = tiny_factory("safetensors").path
    load = f"from transformers import AutoTokenizer; print(len(AutoTokenizer.from_pretrained({str(model)!r})))"
    ok = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.strip() == "100", ok.stderr
    blocked = subprocess.run(
        [sys.executable, "-c", _BLOCK_PROTOBUF + load], capture_output=True, text=True, timeout=300
    )
    assert blocked.returncode != 0
