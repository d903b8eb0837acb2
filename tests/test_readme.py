"""The README's two set-up commands are the contract; .ci/run must run the test one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_readme_has_demo_and_test_commands():
    blocks = _bash_blocks()
    assert any(b.strip().endswith("llmkit demo") for b in blocks)
    assert any("pip install -e '.[test,mindspore]'" in b and "pytest" in b for b in blocks)


def test_ci_runs_the_readme_test_command_verbatim():
    test_cmd = next(b.strip() for b in _bash_blocks() if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci
