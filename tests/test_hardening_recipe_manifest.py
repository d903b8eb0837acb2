"""A recipe manifest (``WORKDIR/llmkit-recipe.json``) of the wrong types is bad input, never an internal error.

Every field of the manifest and of each step record is checked for its type when the manifest is read: each
variant below gives exit 2 and exactly one stderr line naming the manifest file and the field, before any
step runs or the hub is asked anything (the endpoint is a closed port).
"""

from __future__ import annotations

import json

import pytest
from common import one_error_line

GOOD_STEP = {
    "job": "download",
    "options": {"model": "x", "output": "/w/x"},
    "inputs": {},
    "output": {"/w/x": None},
    "checks": [{"name": "a", "status": "ok", "detail": ""}],
    "seconds": 1.0,
    "llmkit": "0.1.0",
    "finished": "2024-01-01T00:00:00+0000",
    "removed": False,
}


def step(**changes) -> dict:
    return {"recipe": "cutegpt-13b", "steps": {"download-base": {**GOOD_STEP, **changes}}}


def without(key: str) -> dict:
    record = {k: v for k, v in GOOD_STEP.items() if k != key}
    return {"recipe": "cutegpt-13b", "steps": {"download-base": record}}


ENTRY = {"size": 1, "mtime_ns": 2, "sha256": "0" * 64, "seal": [3, 4]}

# name -> (manifest content, what the message must name besides the file)
VARIANTS: dict[str, tuple[object, str]] = {
    "whole-file-a-list": ([], "array"),
    "whole-file-a-string": ("steps", "string"),
    "recipe-a-number": ({"recipe": 5, "steps": {}}, "recipe"),
    "recipe-missing": ({"steps": {}}, "recipe"),
    "steps-a-list": ({"recipe": "cutegpt-13b", "steps": []}, "steps"),
    "steps-a-string": ({"recipe": "cutegpt-13b", "steps": "none"}, "steps"),
    "step-record-a-string": ({"recipe": "cutegpt-13b", "steps": {"download-base": "done"}}, "steps.download-base"),
    "step-options-a-list": (step(options=["model", "x"]), "options"),
    "step-inputs-a-string": (step(inputs="abc"), "inputs"),
    "step-output-a-list": (step(output=["/w/x"]), "output"),
    "step-fingerprint-a-number": (step(output={"/w/x": 5}), "output"),
    "step-fingerprint-file-a-string": (step(output={"/w/x": {"a.bin": "abc"}}), "output"),
    "step-fingerprint-size-a-string": (step(output={"/w/x": {"a.bin": {**ENTRY, "size": "1"}}}), "size"),
    "step-fingerprint-sha256-a-number": (step(output={"/w/x": {"a.bin": {**ENTRY, "sha256": 7}}}), "sha256"),
    "step-fingerprint-seal-a-string": (step(output={"/w/x": {"a.bin": {**ENTRY, "seal": "3,4"}}}), "seal"),
    "step-checks-a-dict": (step(checks={"name": "a"}), "checks"),
    "step-check-a-string": (step(checks=["ok"]), "checks"),
    "step-check-status-a-number": (step(checks=[{"name": "a", "status": 1, "detail": ""}]), "checks"),
    "step-job-a-number": (step(job=3), "job"),
    "step-job-unknown": (step(job="format-disk"), "job"),
    "step-seconds-a-string": (step(seconds="1.0"), "seconds"),
    "step-removed-a-string": (step(removed="no"), "removed"),
    "step-finished-a-list": (step(finished=[]), "finished"),
    "step-llmkit-null": (step(llmkit=None), "llmkit"),
    "step-unknown-field": (step(colour="red"), "colour"),
    "step-remote-a-list": (step(remote=["hf://a/b"]), "remote"),
    "step-remote-revision-a-number": (step(remote={"hf://a/b": {"revision": 1, "files": {}}}), "revision"),
    "step-remote-files-missing": (step(remote={"hf://a/b": {"revision": None}}), "files"),
    "step-remote-size-a-string": (
        step(remote={"hf://a/b": {"revision": None, "files": {"m": {"size": "1", "digest": None}}}}),
        "size",
    ),
    "step-remote-digest-a-string": (
        step(remote={"hf://a/b": {"revision": None, "files": {"m": {"size": 1, "digest": "md5"}}}}),
        "digest",
    ),
    "step-job-missing": (without("job"), "job"),
    "created-a-string": ({"recipe": "cutegpt-13b", "steps": {}, "created": "/w/x"}, "created"),
    "created-of-numbers": ({"recipe": "cutegpt-13b", "steps": {}, "created": [1, 2]}, "created"),
    "failed-a-list": ({"recipe": "cutegpt-13b", "steps": {}, "failed": ["download-base"]}, "failed"),
    "failed-of-numbers": ({"recipe": "cutegpt-13b", "steps": {}, "failed": {"download-base": 1}}, "failed"),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_a_manifest_of_the_wrong_types_is_one_line_naming_it(name, run_cli, tmp_path):
    content, field = VARIANTS[name]
    work = tmp_path / "work"
    work.mkdir()
    manifest = work / "llmkit-recipe.json"
    manifest.write_text(json.dumps(content))
    before = manifest.read_bytes()
    r = run_cli("recipe", "run", "cutegpt-13b", "--workdir", work, "--endpoint", "http://127.0.0.1:9", "--dry-run")
    line = one_error_line(r, manifest)
    assert field in line, line
    assert "delete it" in line  # the fix
    assert manifest.read_bytes() == before and sorted(p.name for p in work.iterdir()) == [manifest.name]


def test_a_manifest_of_another_recipe_names_the_manifest_and_the_fix(run_cli, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "llmkit-recipe.json").write_text(json.dumps({"recipe": "techgpt-1.0", "steps": {}}))
    r = run_cli("recipe", "run", "cutegpt-13b", "--workdir", work, "--endpoint", "http://127.0.0.1:9", "--dry-run")
    line = one_error_line(r, work / "llmkit-recipe.json")
    assert "'techgpt-1.0'" in line and "--workdir" in line


def test_a_well_typed_manifest_is_read(tmp_path):
    from llmkit.recipes.manifest import MANIFEST, Manifest

    (tmp_path / MANIFEST).write_text(
        json.dumps(
            {
                **step(output={"/w/x": {"a.bin": ENTRY}, "/w/y": None}),
                "failed": {"merge": "boom"},
                "created": ["/w/x"],
                "llmkit": "0.1.0",
            }
        )
    )
    m = Manifest.load(tmp_path, "cutegpt-13b")
    assert m.steps["download-base"].output == {"/w/x": {"a.bin": ENTRY}, "/w/y": None}
    assert m.failed == {"merge": "boom"} and m.created == ["/w/x"]
