"""`llmkit demo` runs every lifecycle step, each verified, offline and in under a minute."""

from __future__ import annotations

import time

from llmkit.demo import run_demo


def test_demo_cli_runs_every_step_ok_in_under_a_minute(run_cli, tmp_path):
    start = time.perf_counter()
    r = run_cli("demo", "--workdir", tmp_path / "demo", "--json")
    elapsed = time.perf_counter() - start
    assert r.exit_code == 0, r.stderr
    data = r.json()
    assert data["ok"] is True
    names = [s["name"] for s in data["steps"]]
    assert names[:4] == ["generate tiny LLaMA", "read every layout", "inspect", "re-shard bin -> safetensors"]
    assert all(s["ok"] for s in data["steps"])
    assert elapsed < 60
    assert not (tmp_path / "demo").exists() or not any((tmp_path / "demo").iterdir())


def test_demo_keep_leaves_the_files(run_cli, tmp_path):
    r = run_cli("demo", "--workdir", tmp_path / "d", "--keep", "--quiet")
    assert r.exit_code == 0 and "files kept in" in r.stdout
    assert (tmp_path / "d" / "tiny-llama" / "model.safetensors").is_file()


def test_demo_refuses_a_non_empty_workdir(run_cli, tmp_path):
    (tmp_path / "x").write_text("mine")
    r = run_cli("demo", "--workdir", tmp_path)
    assert r.exit_code == 2 and "--force" in r.stderr and (tmp_path / "x").read_text() == "mine"


def test_demo_stops_at_a_failed_step(tmp_path, monkeypatch):
    import llmkit.demo as demo
    from llmkit.errors import CheckFailed

    def failing(ctx):
        raise CheckFailed("tensor differs")

    monkeypatch.setattr(
        demo, "_STEPS", [(10, "first", lambda ctx: "fine"), (20, "second", failing), (30, "third", lambda ctx: "never")]
    )
    monkeypatch.setattr(demo, "_load_job_steps", lambda: None)
    result = run_demo(tmp_path)
    assert not result.ok and [s.name for s in result.steps] == ["first", "second"]
    assert result.steps[1].detail == "tensor differs"
