"""Each stage in dvc.yaml lists exactly the code and params it reads, so DVC reruns a
stage when, and only when, something it depends on changed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO

# Shared plumbing that decides no number: error types, config parsing, safe atomic writes.
INFRASTRUCTURE = {
    "pipeline/__init__.py",
    "pipeline/errors.py",
    "pipeline/config.py",
    "pipeline/workspace.py",
    "pipeline/stages/__init__.py",
}
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    for candidate in (
        REPO / f"{name.replace('.', '/')}.py",
        REPO / name.replace(".", "/") / "__init__.py",
    ):
        if candidate.exists():
            return candidate
    return None


def _imported_modules(path: Path) -> set[str]:
    """Every ``pipeline.*`` module imported anywhere in a file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            found.add(node.module)
            found |= {
                f"{node.module}.{a.name}"
                for a in node.names
                if _module_file(f"{node.module}.{a.name}")
            }
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pipeline")}
    return found


def _code_closure(stage: str) -> set[str]:
    """Repository paths of every pipeline file the stage's module imports, transitively."""
    seen: set[str] = set()
    todo = [REPO / "pipeline" / "stages" / f"{stage}.py"]
    if "loads_model=True" in todo[0].read_text():
        todo.append(REPO / "pipeline" / "models.py")  # Job.load_model (config.py) uses it
    while todo:
        path = todo.pop()
        rel = path.relative_to(REPO).as_posix()
        if rel in seen:
            continue
        seen.add(rel)
        if rel in INFRASTRUCTURE:
            continue  # plumbing: what it imports on a stage's behalf, the stage imports too
        for module in _imported_modules(path):
            parts = module.split(".")
            # Importing a.b.c runs a/__init__.py and a/b/__init__.py too.
            for i in range(1, len(parts) + 1):
                if found := _module_file(".".join(parts[:i])):
                    todo.append(found)
    return seen - INFRASTRUCTURE


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_code_dependencies_are_exactly_the_imported_files(stage):
    deps = [d for d in STAGES[stage]["deps"] if d.startswith("pipeline")]
    needed = _code_closure(stage)
    missing = sorted(f for f in needed if not _covered(f, deps))
    unused = sorted(d for d in deps if not any(_covered(f, [d]) for f in needed))
    assert not missing, f"{stage} imports these but dvc.yaml does not list them: {missing}"
    assert not unused, f"{stage} lists these but never imports them: {unused}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_params_are_exactly_the_sections_read(stage):
    source = (REPO / "pipeline" / "stages" / f"{stage}.py").read_text()
    read = set(re.findall(r'(?:section|make_job)\(\s*params,\s*"(\w+)"', source))
    read |= {"model"} if "read_model_section(params" in source else set()
    read |= {"seed"} if re.search(r'params(?:\.get\(|\[)"seed"|job\.seed', source) else set()
    if "loads_model=True" in source:
        read |= {"model"}
    read |= {
        f"{group}.{key}"
        for group, key in re.findall(r'params\.get\("(\w+)", \{\}\)\.get\("(\w+)"', source)
    }
    declared = set(STAGES[stage]["params"])
    if stage == "data":
        # The first stage checks every path on behalf of the pipeline (see dvc.yaml).
        read |= {"paths"}
    # A whole section declared covers its keys.
    read = {r for r in read if r.split(".")[0] not in declared or r in declared}
    assert read == declared, f"{stage}: reads {sorted(read)}, dvc.yaml lists {sorted(declared)}"
