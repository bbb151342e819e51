"""The README opens with the two commands; .ci/run runs the second one verbatim."""

from __future__ import annotations

import re

from conftest import REPO


def _readme() -> str:
    return (REPO / "README.md").read_text()


def _opening_commands():
    text = _readme()
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


def test_notebook_example_runs_as_written(tmp_path, monkeypatch):
    """The README's library example works verbatim (on an untrained default model)."""
    from pipeline.models import build_model

    block = re.search(r"## From a notebook.*?```python\n(.+?)\n```", _readme(), flags=re.S)
    assert block, "the README lost its notebook example"
    (tmp_path / "outputs").mkdir()
    build_model("mnist_cnn", (28, 28, 1), 10).save(tmp_path / "outputs" / "model.keras")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["images"].shape == (10, 28, 28, 1)
    assert namespace["maps"].shape == namespace["cam"].maps.shape == (8, 28, 28)
