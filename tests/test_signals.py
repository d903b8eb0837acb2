"""Ctrl-C and SIGTERM at every stage of a run: while llmkit loads, while it writes, during the commit,
after it finished. Each is the one error line (and the JSON error object with ``--json``), exit 130 or
143, and nothing left behind; a signal after the command finished changes nothing (exit 0).

The signal is sent by the process itself at an exact point (a hook installed before ``llmkit.entry``
runs), so each stage is hit every time rather than by luck of timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from test_output_safety import expected_diff, hidden_leftovers, is_whole, make_diff_args

CODES = {"SIGINT": 130, "SIGTERM": 143}

# Sends SIG to itself when module TRIGGER is first imported (while llmkit loads), then runs the executable.
WHILE_LOADING = textwrap.dedent("""
    import importlib.abc, os, signal, sys
    sig, trigger = getattr(signal, sys.argv[1]), sys.argv[2]
    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == trigger:
                sys.meta_path.remove(self)
                os.kill(os.getpid(), sig)
            return None
    import llmkit.entry
    sys.meta_path.insert(0, Hook())
    sys.argv = ["llmkit", *sys.argv[3:]]
    llmkit.entry.main()
""")

# Sends SIG to itself around one call of llmkit.io.core.staging.STEP (the commit), or after the command ended.
AROUND = textwrap.dedent("""
    import os, signal, sys, importlib
    module, step, when, sig = sys.argv[1], sys.argv[2], sys.argv[3], getattr(signal, sys.argv[4])
    mod = importlib.import_module(module)
    real = getattr(mod, step)
    def hooked(*args, **kwargs):
        if when == "before":
            os.kill(os.getpid(), sig)
        result = real(*args, **kwargs)
        if when == "after":
            os.kill(os.getpid(), sig)
        return result
    setattr(mod, step, hooked)
    import llmkit.entry
    sys.argv = ["llmkit", *sys.argv[5:]]
    llmkit.entry.main()
""")


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, timeout=120)


def assert_one_error(p: subprocess.CompletedProcess, code: int) -> None:
    lines = p.stderr.decode().strip().splitlines()
    assert p.returncode == code, (p.returncode, p.stderr.decode())
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in p.stderr.decode(), lines
    error = json.loads(p.stdout)
    assert error["ok"] is False and error["exit_code"] == code


@pytest.mark.parametrize("sig", sorted(CODES))
@pytest.mark.parametrize("trigger", ["typer", "rich", "llmkit.cli.output", "torch"])
def test_a_signal_while_llmkit_loads_is_one_line_and_the_json_error(tiny_factory, tmp_path, sig, trigger):
    base, target = tiny_factory("safetensors", seed=0), tiny_factory("safetensors", seed=1)
    out = tmp_path / "out"
    p = run(WHILE_LOADING, sig, trigger, *make_diff_args(base, target, out, "--json"))
    assert_one_error(p, CODES[sig])
    assert not out.exists() and hidden_leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("sig", sorted(CODES))
@pytest.mark.parametrize(
    "step,when", [("rename_noreplace", "before"), ("rename_noreplace", "after"), ("fsync_dir", "before")]
)
def test_a_signal_during_the_commit_leaves_no_output_or_the_whole_one_and_cleans_up(models, tmp_path, sig, step, when):
    base, a, _ = models
    out = tmp_path / "out"
    p = run(AROUND, "llmkit.io.core.staging", step, when, sig, *make_diff_args(base, a, out, "--json"))
    assert_one_error(p, CODES[sig])
    assert not out.exists() or is_whole(out, expected_diff(base, a))
    assert hidden_leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("sig", sorted(CODES))
def test_a_signal_while_force_swaps_the_folders_keeps_the_old_or_the_new_one_whole(models, tmp_path, sig):
    base, a, b = models
    out = tmp_path / "out"
    assert subprocess.run([sys.executable, "-m", "llmkit", *make_diff_args(base, a, out)]).returncode == 0
    p = run(
        AROUND, "llmkit.io.core.staging", "exchange", "after", sig, *make_diff_args(base, b, out, "--force", "--json")
    )
    assert_one_error(p, CODES[sig])
    assert is_whole(out, expected_diff(base, b))  # the swap happened: the new output, whole
    assert hidden_leftovers(tmp_path, "out") == []


@pytest.mark.parametrize("sig", sorted(CODES))
def test_a_signal_after_the_command_finished_changes_nothing(models, tmp_path, sig):
    base, a, _ = models
    out = tmp_path / "out"
    p = run(AROUND, "llmkit.entry", "block_late_signals", "after", sig, *make_diff_args(base, a, out, "--json"))
    assert p.returncode == 0, p.stderr.decode()
    assert json.loads(p.stdout)["ok"] is True and is_whole(out, expected_diff(base, a))


@pytest.fixture(scope="module")
def models(tiny_factory):
    return tuple(tiny_factory("safetensors", seed=s, layers=4) for s in (0, 1, 2))
