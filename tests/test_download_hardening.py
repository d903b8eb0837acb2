"""``llmkit download``: filter patterns as ``hf download`` reads them, a staging folder no repo file can collide
with, and no staging or partial file left after SIGINT / SIGTERM / SIGKILL.

Against the fake hub on 127.0.0.1 (tests/hub_server.py) through the real huggingface_hub client; the signal
tests run the real CLI in a subprocess while the hub sends one file slowly (``hub.throttle``).
"""

# ruff: noqa: F811  (fixtures imported from hub_server / test_download are taken as test arguments)
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from common import only_error_line
from hub_server import hub  # noqa: F401
from test_download import LLMKIT, REPO, by_path, dl, files_under, hf_env, leftovers, tiny_files, work  # noqa: F401

SLOW = "pytorch_model-00001-of-00002.bin"  # 100 KB


def folder_files() -> dict[str, bytes]:
    """tiny_files plus a nested folder and a folder whose name starts like another one's."""
    return {**tiny_files(), "extra/deeper/notes.txt": b"notes\n", "extra2/other.json": b'{"x": 1}\n'}


def under(files: dict[str, bytes], prefix: str) -> dict[str, bytes]:
    return {p: d for p, d in files.items() if p.startswith(prefix)}


# ---------------------------------------------------------------- filter patterns


def test_an_include_ending_in_a_slash_takes_the_whole_folder(dl, hub, work):
    """hf's rule: a pattern ending in "/" means "folder/*", and "*" crosses "/" (so subfolders come too)."""
    files = folder_files()
    hub.add_repo(REPO, files)
    r = dl(REPO, "-o", "sub", "--include", "extra/", "--json")
    assert r.exit_code == 0, r.stderr
    want = under(files, "extra/")
    assert set(want) == {"extra/adapter_model.bin", "extra/deeper/notes.txt"}
    assert files_under(work / "sub") == want
    assert {f["path"] for f in r.json()["files"]} == set(want)


def test_an_exclude_ending_in_a_slash_skips_the_whole_folder(dl, hub, work):
    files = folder_files()
    hub.add_repo(REPO, files)
    r = dl(REPO, "-o", "nosub", "--exclude", "extra/", "--json")
    assert r.exit_code == 0, r.stderr
    assert files_under(work / "nosub") == {p: d for p, d in files.items() if not p.startswith("extra/")}


def test_patterns_match_as_hf_download_matches_them(dl, hub, work):
    """Case-sensitive fnmatch, "*" across folders, as huggingface_hub's filter_repo_objects (written out here)."""
    files = {**folder_files(), "README.MD": b"upper\n", "docs/usage.md": b"lower\n"}
    hub.add_repo(REPO, files)
    r = dl(REPO, "-o", "star", "--include", "*.json", "--include", "*.md", "--json")
    assert r.exit_code == 0, r.stderr
    want = {p: d for p, d in files.items() if fnmatchcase(p, "*.json") or fnmatchcase(p, "*.md")}
    assert "extra2/other.json" in want and "docs/usage.md" in want and "README.MD" not in want
    assert files_under(work / "star") == want


@pytest.mark.parametrize("flag", ["--include", "--exclude"])
def test_a_pattern_that_matches_no_file_is_an_error_naming_it(dl, hub, work, tmp_path, hf_env, flag):
    files = folder_files()
    hub.add_repo(REPO, files)
    r = dl(REPO, "--include", "*.json", flag, "*.safetensors", "--json")
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    line = only_error_line(r.stderr)
    assert "*.safetensors" in line and flag in line, line
    assert "config.json" in line, line  # a few of the repo's files, as the hint
    assert r.json()["ok"] is False
    assert not (work / "tiny-llama").exists()
    assert hub.byte_gets() == []
    assert leftovers(tmp_path, hf_env) == []


def test_a_pattern_that_matches_only_in_another_case_says_so(dl, hub, work):
    hub.add_repo(REPO, {**folder_files(), "README.MD": b"upper\n"})
    r = dl(REPO, "--include", "*.md")
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    line = only_error_line(r.stderr)
    assert "'*.md'" in line and "case" in line and "README.MD" in line, line


def test_a_folder_name_without_the_slash_is_an_error_that_says_add_it(dl, hub, work):
    hub.add_repo(REPO, folder_files())
    r = dl(REPO, "--include", "extra")
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    line = only_error_line(r.stderr)
    assert "'extra'" in line and "extra/" in line, line
    assert not (work / "tiny-llama").exists()


def test_filters_that_leave_no_file_are_an_error(dl, hub, work):
    hub.add_repo(REPO, folder_files())
    r = dl(REPO, "--include", "extra/", "--exclude", "*.bin", "--exclude", "*.txt", "--json")
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    line = only_error_line(r.stderr)
    assert "extra/" in line and "--exclude" in line, line
    assert not (work / "tiny-llama").exists()


def test_a_dry_run_with_a_pattern_that_matches_nothing_is_the_same_error(dl, hub, work):
    hub.add_repo(REPO, folder_files())
    r = dl(REPO, "--dry-run", "--include", "nothing/")
    assert r.exit_code == 2
    assert "nothing/" in only_error_line(r.stderr)


# ---------------------------------------------------------------- the staging folder's name


def staging_lookalike_files() -> dict[str, bytes]:
    """A repo with files where llmkit (and the client) once kept their own bookkeeping."""
    return {
        **tiny_files(),
        ".llmkit-download/notes.txt": b"a repo file, not llmkit's staging\n",
        ".llmkit-download/sub/weights.bin": os.urandom(5000),
        ".cache/huggingface/download/config.json.metadata": b"not the client's metadata\n",
        ".tiny-llama.llmkit-download": b"a file named like a staging folder\n",
    }


def test_repo_files_under_the_staging_name_are_downloaded_and_kept(dl, hub, work, tmp_path):
    files = staging_lookalike_files()
    hub.add_repo(REPO, files)
    r = dl(REPO, "--json")
    assert r.exit_code == 0, r.stderr
    out = work / "tiny-llama"
    assert files_under(out) == files  # every file, every byte, nothing else
    assert {f["status"] for f in r.json()["files"]} == {"downloaded"}
    assert [p.name for p in work.iterdir()] == ["tiny-llama"]  # no staging left beside it either

    r = dl(REPO, "--json")  # a re-run: all verified in place, nothing fetched, nothing removed
    assert r.exit_code == 0, r.stderr
    assert {f["status"] for f in by_path(r.json()).values()} == {"skipped"}
    assert files_under(out) == files


def test_staging_inside_the_output_refuses_a_repo_path_under_its_name(dl, hub, work, monkeypatch):
    """When the folder beside DIR cannot hold the staging (its parent is read-only, or DIR is another file
    system), the staging is DIR/.llmkit-download: a repo file there is refused up front, nothing written."""
    import llmkit.hub_staging as staging

    monkeypatch.setattr(staging, "_can_stage_beside", lambda out: False)
    files = staging_lookalike_files()
    hub.add_repo(REPO, files)
    r = dl(REPO, "--json")
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    line = only_error_line(r.stderr)
    assert ".llmkit-download/notes.txt" in line or ".llmkit-download/sub/weights.bin" in line, line
    assert hub.byte_gets() == []
    assert not (work / "tiny-llama").exists()

    plain = tiny_files()
    hub.add_repo("acme/plain", plain)
    r = dl("acme/plain", "--json")
    assert r.exit_code == 0, r.stderr
    assert files_under(work / "plain") == plain  # the inside staging is gone again
    assert [p.name for p in work.iterdir()] == ["plain"]


# ---------------------------------------------------------------- signals and a second run


def start_download(hub, work: Path, *args: str) -> subprocess.Popen:
    """The real CLI in its own process; SIGINT at its default (a background job may inherit it ignored)."""
    return subprocess.Popen(
        [str(LLMKIT), "download", REPO, "--endpoint", hub.url, "--jobs", "2", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ},
        cwd=work,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _size(p: Path) -> int:
    """``p``'s size, 0 once it is gone (a small file's ``.incomplete`` is renamed as soon as it is done)."""
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def wait_for_partial(proc: subprocess.Popen, root: Path, timeout: float = 60) -> list[Path]:
    """Wait until the slow file is half-written somewhere under ``root`` (the download is under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        partial = [p for p in root.rglob("*.incomplete") if _size(p) > 0]
        if partial:
            return partial
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the download never got under way: {proc.communicate()}")


def assert_only_verified_files(out: Path, files: dict[str, bytes]) -> None:
    for path, data in files_under(out).items() if out.exists() else ():
        assert data == files[path], f"{path} is under its final name with other bytes"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_download_leaves_no_staging_and_no_partial_file(hub, hf_env, work, tmp_path, dl, signum):
    files = tiny_files()
    hub.add_repo(REPO, files)
    hub.throttle[SLOW] = 20_000
    proc = start_download(hub, work)
    wait_for_partial(proc, work)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == (130 if signum == signal.SIGINT else 143), (proc.returncode, stderr)
    assert stderr.startswith("error:") and stderr.count("\n") == 1, stderr
    assert json.loads(stdout)["ok"] is False
    out = work / "tiny-llama"
    assert not (out / SLOW).exists()
    assert_only_verified_files(out, files)
    assert leftovers(tmp_path, hf_env) == [], "staging or partial files were left behind"

    hub.throttle.clear()
    r = dl(REPO, "--json")
    assert r.exit_code == 0, r.stderr
    assert files_under(out) == files


def test_after_sigkill_the_next_run_cleans_the_staging_and_completes(hub, hf_env, work, tmp_path, dl):
    files = tiny_files()
    hub.add_repo(REPO, files)
    hub.throttle[SLOW] = 20_000
    proc = start_download(hub, work)
    partial = wait_for_partial(proc, work)
    proc.kill()
    proc.communicate(timeout=30)
    out = work / "tiny-llama"
    assert not (out / SLOW).exists()
    assert_only_verified_files(out, files)
    assert any(p.exists() for p in partial), "SIGKILL ran no cleanup: the partial file should still be there"

    hub.throttle.clear()
    r = dl(REPO, "--json")
    assert r.exit_code == 0, r.stderr
    assert by_path(r.json())[SLOW]["status"] == "downloaded"
    assert files_under(out) == files
    assert leftovers(tmp_path, hf_env) == [], "the killed run's staging was not cleaned"


def test_a_second_download_into_the_same_folder_is_refused_while_the_first_runs(hub, hf_env, work, dl):
    files = tiny_files()
    hub.add_repo(REPO, files)
    hub.throttle[SLOW] = 40_000
    proc = start_download(hub, work)
    wait_for_partial(proc, work)
    r = dl(REPO, "--json")
    assert r.exit_code == 2, (r.exit_code, r.stderr)
    line = only_error_line(r.stderr)
    assert "another" in line and "tiny-llama" in line, line
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr  # the first run was not disturbed
    assert files_under(work / "tiny-llama") == files


def test_a_staging_folder_held_by_a_live_run_is_not_cleaned(hub, hf_env, work, dl):
    """The lock, not the folder's presence, says whether a staging folder is stale."""
    hub.add_repo(REPO, tiny_files())
    staging = work / ".tiny-llama.llmkit-download"
    staging.mkdir()
    mine = staging / "0" / "partial.bin"
    mine.parent.mkdir()
    mine.write_bytes(b"in use")
    with open(staging / "llmkit-download.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = dl(REPO)
    assert r.exit_code == 2
    assert mine.read_bytes() == b"in use"
