"""download: the CLI builds the options and makes one library call (patched here); no token option exists."""

from __future__ import annotations

from pathlib import Path

import pytest
from common import record_options

import llmkit.hub as hub
from llmkit.hub import DownloadOptions


@pytest.fixture
def calls(monkeypatch):
    return record_options(monkeypatch, (hub, "download"), keywords=("progress",))


def test_defaults_and_every_flag(run_cli, calls):
    run_cli("download", "techgpt-7b")
    run_cli(
        "download",
        "owner/repo",
        "-o",
        "dir",
        "--include",
        "*.json",
        "--include",
        "*.model",
        "--exclude",
        "*.bin",
        "--revision",
        "v1",
        "--endpoint",
        "http://127.0.0.1:9",
        "-j",
        "2",
        "--dry-run",
        "--no-verify",
        "--force",
    )
    assert calls == [
        DownloadOptions("techgpt-7b"),
        DownloadOptions(
            "owner/repo",
            Path("dir"),
            include=("*.json", "*.model"),
            exclude=("*.bin",),
            revision="v1",
            endpoint="http://127.0.0.1:9",
            jobs=2,
            dry_run=True,
            verify=False,
            force=True,
        ),
    ]


def test_no_token_on_the_command_line(run_cli, calls):
    assert "--token" not in run_cli("download", "--help").stdout
    r = run_cli("download", "x/y", "--token", "hf_secret")
    assert r.exit_code == 2 and calls == [] and "hf_secret" not in r.stdout


def test_names_that_are_neither_a_model_nor_a_repo_are_refused():
    from llmkit.errors import InputError

    with pytest.raises(InputError, match="llmkit models"):
        hub.download(DownloadOptions("no-such-model"))
    with pytest.raises(InputError, match="not on the hub"):
        hub.download(DownloadOptions("llama-7b-meta"))
