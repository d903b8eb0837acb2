"""``llmkit demo --keep --workdir D --force`` runs again over the files a first run kept."""

from __future__ import annotations


def test_demo_re_run_with_force_over_a_kept_workdir_passes(run_cli, tmp_path):
    work = tmp_path / "d"
    first = run_cli("demo", "--keep", "--workdir", work, "--json")
    assert first.exit_code == 0, first.stderr
    mine = work / "my-notes.txt"
    mine.write_text("kept")
    again = run_cli("demo", "--keep", "--workdir", work, "--force", "--json")
    assert again.exit_code == 0, again.stderr
    assert again.json()["ok"] and [s["name"] for s in again.json()["steps"]] == [
        s["name"] for s in first.json()["steps"]
    ]
    assert mine.read_text() == "kept"  # --force reaches the steps; it does not clear the folder


def test_demo_with_force_and_without_keep_deletes_only_what_it_made(run_cli, tmp_path):
    work = tmp_path / "d"
    work.mkdir()
    (work / "my-notes.txt").write_text("kept")
    (work / "mine").mkdir()
    r = run_cli("demo", "--workdir", work, "--force", "--quiet")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in work.iterdir()) == ["mine", "my-notes.txt"]
    assert (work / "my-notes.txt").read_text() == "kept"
