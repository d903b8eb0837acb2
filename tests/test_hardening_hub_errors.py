"""``llmkit download`` when the hub (or a mirror, or a proxy in front of it) answers 5xx or 429.

Against the fake hub on 127.0.0.1 (tests/hub_server.py, ``hub.faults``) through the real huggingface_hub client.
A failure is one line naming the repo (and the file), the status and what to do (retry later, --endpoint), with
no URL but the endpoint's; a transient answer is retried a bounded number of times, so a run completes.
"""

# ruff: noqa: F811  (fixtures imported from hub_server / test_download are taken as test arguments)
from __future__ import annotations

import re

import pytest
from common import only_error_line
from hub_server import Fault, hub  # noqa: F401
from test_download import REPO, dl, files_under, hf_env, tiny_files, work  # noqa: F401

import llmkit.hub_errors

STATUSES = [500, 502, 503, 429]
PHRASES = {500: "internal server error", 502: "bad gateway", 503: "service unavailable", 429: "too many requests"}
LFS_FILE = "pytorch_model-00001-of-00002.bin"


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """The same retries, without the seconds of waiting between them."""
    monkeypatch.setattr(llmkit.hub_errors, "RETRY_WAIT", 0.01)


def urls_in(text: str) -> list[str]:
    return re.findall(r"https?://[^\s)'\"]+", text)


def assert_one_plain_line(r, hub, *must: str) -> str:
    """The failure is one error line (and, with --json, an error object of one line), naming ``must``; the only
    URL it may hold is the endpoint the user chose."""
    line = only_error_line(r.stderr)
    assert [x for x in r.stderr.splitlines() if x.strip() and "downloading" not in x] == [line], r.stderr
    for word in must:
        assert word.lower() in line.lower(), (word, line)
    assert "later" in line and "--endpoint" in line, line
    assert all(u.startswith(hub.url) for u in urls_in(line)), line
    assert "Request ID" not in line and "<html" not in line, line
    return line


@pytest.mark.parametrize("status", STATUSES)
def test_a_hub_that_keeps_failing_the_file_list_is_one_line_naming_repo_status_and_what_to_do(dl, hub, work, status):
    hub.add_repo(REPO, tiny_files())
    hub.faults.append(Fault(status, kind="info"))
    r = dl(REPO, "--json")
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    line = assert_one_plain_line(r, hub, REPO, str(status), PHRASES[status])
    err = r.json()
    assert err["ok"] is False and err["exit_code"] == 2
    assert "\n" not in err["error"] and err["error"] in line
    assert all(u.startswith(hub.url) for u in urls_in(err["error"] + (err["hint"] or ""))), err
    assert len([h for h in hub.hits() if h.kind == "info"]) == 1 + llmkit.hub_errors.RETRIES  # bounded retries
    assert not (work / "tiny-llama").exists() and hub.byte_gets() == []


@pytest.mark.parametrize("status", STATUSES)
def test_a_hub_that_keeps_failing_one_file_names_that_file_and_keeps_nothing_under_its_name(dl, hub, work, status):
    files = tiny_files()
    hub.add_repo(REPO, files)
    hub.faults.append(Fault(status, kind="resolve", file=LFS_FILE, method="HEAD"))
    r = dl(REPO, "--jobs", "1")
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert_one_plain_line(r, hub, REPO, LFS_FILE, str(status), PHRASES[status])
    assert len(hub.requests_for(LFS_FILE, method="HEAD")) == 1 + llmkit.hub_errors.RETRIES
    got = files_under(work / "tiny-llama")
    assert LFS_FILE not in got
    assert got == {p: d for p, d in files.items() if p != LFS_FILE}  # the others verified and kept


@pytest.mark.parametrize("status", STATUSES)
def test_a_transient_failure_of_the_file_list_is_retried_and_the_run_completes(dl, hub, work, status):
    files = tiny_files()
    hub.add_repo(REPO, files)
    hub.faults.append(Fault(status, times=2, kind="info"))
    r = dl(REPO, "--json")
    assert r.exit_code == 0, r.stderr
    assert files_under(work / "tiny-llama") == files
    assert len([h for h in hub.hits() if h.kind == "info"]) == 3
    assert "HTTP Error" not in r.stderr and "Retrying" not in r.stderr  # the client's own log lines stay quiet


@pytest.mark.parametrize(
    "status,method,kind",
    [(502, "GET", "lfs"), (503, "HEAD", "resolve"), (500, "GET", "resolve"), (429, "HEAD", "resolve")],
)
def test_a_transient_failure_of_a_file_is_retried_and_the_run_completes(dl, hub, work, status, method, kind):
    files = tiny_files()
    hub.add_repo(REPO, files)
    path = LFS_FILE if kind == "lfs" else "config.json"
    hub.faults.append(Fault(status, times=2, kind=kind, file=path, method=method))
    r = dl(REPO, "--json")
    assert r.exit_code == 0, r.stderr
    assert files_under(work / "tiny-llama") == files
    assert [f for f in hub.faults if f.times == 0], "the fault was never hit"
    assert "HTTP Error" not in r.stderr and "Retrying" not in r.stderr


def test_a_retry_after_beyond_the_limit_is_not_waited_for_and_is_named(dl, hub, work):
    hub.add_repo(REPO, tiny_files())
    hub.faults.append(Fault(429, kind="info", retry_after=3600))
    r = dl(REPO)
    assert r.exit_code == 2, r.stderr
    line = assert_one_plain_line(r, hub, REPO, "429")
    assert "3600" in line, line
    assert len([h for h in hub.hits() if h.kind == "info"]) == 1


# ---------------------------------------------------------------- a second run into the same folder


def test_a_second_download_into_a_busy_folder_names_the_output_only(dl, hub, work):
    """Another run holds the staging folder's lock: the line names DIR, never the staging folder or its lock."""
    import fcntl

    hub.add_repo(REPO, tiny_files())
    staging = work / ".tiny-llama.llmkit-download"
    staging.mkdir()
    with open(staging / "llmkit-download.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = dl(REPO, "--json")
    assert r.exit_code == 2, r.stderr
    line = only_error_line(r.stderr)
    assert line.startswith("error: tiny-llama: another llmkit download"), line
    assert "llmkit-download" not in line.replace("another llmkit download", "") and "lock" not in line, line
    err = r.json()
    assert (work / err["path"]).resolve() == (work / "tiny-llama").resolve(), err
    assert "llmkit-download" not in err["error"].replace("another llmkit download", ""), err
