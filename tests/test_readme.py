"""The README opens with the two commands; .ci/run runs the second one verbatim."""

from __future__ import annotations

import re

from conftest import REPO


def _opening_commands():
    text = (REPO / "README.md").read_text()
    head = text.split("---", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", head, flags=re.S)


def test_readme_opens_with_exactly_two_commands():
    commands = _opening_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert commands[0].endswith("dvc repro") and commands[1].endswith("pytest")


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert _opening_commands()[1] in ci
