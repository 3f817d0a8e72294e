"""The README contract: two set-up commands first; .ci/run runs the test one."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, flags=re.S)
    return [line.strip() for line in blocks[0].splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_setup_commands():
    cmds = _setup_commands()
    assert len(cmds) == 2
    assert "quickstart" in cmds[0] and "pytest" in cmds[1]
    for c in cmds:
        assert c.startswith("python3 -m venv .venv")  # fresh machine: only Python 3.11 needed


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert _setup_commands()[1] in ci.splitlines()
