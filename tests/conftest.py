"""Shared fixtures: a shrunken copy of the repository for end-to-end DVC runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

#: Config overrides that make the default pipeline run in seconds.
SHRINK = {
    "data/mnist_sample.yaml": {"limit": 600, "probe_per_class": 1},
    "train/default.yaml": {"epochs": 1, "batch_size": 64},
    "attribute/default.yaml": {
        "smoothgrad": {"noise": 0.15, "samples": 4, "reduce": "max"},
        "integrated_gradients": {"baseline": "zeros", "steps": 8},
        "faithfulness": {"enabled": True, "steps": 8, "substrate": "blur"},
        "sanity": {"enabled": True, "max_layers": 2, "threshold": 0.5},
    },
    "maximize/default.yaml": {"steps": 24},
    "render/default.yaml": {"max_inputs": 1, "max_attribution_inputs": 4, "dpi": 60},
}

#: Test files in decreasing run time (``pytest --durations=0`` on the 2-core CI machine,
#: summed per file). pytest-xdist runs a file on one worker (``--dist loadfile``) and,
#: with ``--no-loadscope-reorder``, hands files out in collection order: starting with
#: the longest keeps the two workers busy to the end instead of leaving one alone with a
#: four-minute file. Files not listed run after these, in their usual order.
LONGEST_FIRST = (
    "test_hostile.py",
    "test_zoo_efficientnet_densenet.py",
    "test_model_sources.py",
    "test_reliability.py",
    "test_zoo_mobilenet_resnet.py",
    "test_experiments.py",
    "test_text.py",
    "test_tasks.py",
    "test_pipeline_e2e.py",
    "test_byom.py",
    "test_concepts_stage.py",
    "test_vit.py",
    "test_interrupts.py",
    "test_multi_worker.py",
    "test_render_stage.py",
    "test_volumes.py",
    "test_subclassed.py",
    "test_sequences.py",
    "test_attribute_stage.py",
    "test_stage_errors.py",
)


def pytest_collection_modifyitems(config, items):
    """Order the files longest first (see :data:`LONGEST_FIRST`); tests keep their order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _workspace_is_tmp_path(tmp_path, monkeypatch):
    """Stages called in-process treat the test's tmp_path as their workspace.

    kerascope refuses output paths outside the workspace (the current directory, where
    params.yaml lives, or ``$KERASCOPE_ROOT``); tests that call a stage's ``_main``
    directly put every path under ``tmp_path``. Subprocesses get their own ``cwd``.
    """
    monkeypatch.delenv("KERASCOPE_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _close_figures():
    """Figures a test drew in this process are closed after it (pyplot keeps them)."""
    yield
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


def run(cmd, cwd, check=True, env=None, timeout=600):
    """Run a command, returning the CompletedProcess; show output on failure.

    The subprocess's workspace is ``cwd`` unless ``env`` names another one.
    """
    base = {k: v for k, v in os.environ.items() if k != "KERASCOPE_ROOT"}
    full_env = {**base, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env=full_env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({proc.returncode})\nstdout:\n{proc.stdout[-4000:]}\n"
            f"stderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def offline(cmd: list[str]) -> list[str]:
    """Prefix ``cmd`` to run in a network namespace with no network, where possible.

    As root (CI, these machines) ``unshare -n`` gives the command no network at all, so
    a test proves the default path never downloads. Elsewhere the command runs as is.
    """
    if shutil.which("unshare") and os.geteuid() == 0:
        probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "-n", *cmd]
    return cmd


def python_cmd(*args):
    return [sys.executable, *args]


def assert_stage_skips_tensorflow(stage: str, workspace: Path) -> None:
    """Run ``pipeline.stages.<stage>`` as ``python -m`` does, in ``workspace``, and check
    it succeeded with neither TensorFlow nor Keras imported."""
    script = (
        f"import runpy, sys; sys.argv = [{stage!r}]; "
        f"runpy.run_module('pipeline.stages.{stage}', run_name='__main__'); "
        "print('imported:', 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=workspace, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "imported: False False" in proc.stdout


def copy_repo(dest: Path, shrink: dict | None = None) -> Path:
    """Copy the git-tracked files of this repository into a fresh git+DVC repository.

    Args:
        dest: Target directory (created).
        shrink: ``{"group/option.yaml": {key: value}}`` edits applied to ``conf/``;
            ``params.yaml`` is recomposed from the edited ``conf/``.

    Returns:
        ``dest``, committed once, ready for ``dvc repro``.
    """
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        src = REPO / rel
        if not src.is_file() or rel.startswith(("tests/", "benchmarks/")):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    for rel, edits in (shrink or {}).items():
        path = dest / "conf" / rel
        cfg = yaml.safe_load(path.read_text()) or {}
        cfg.update(edits)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    from pipeline.config import compose

    (dest / "params.yaml").write_text(
        yaml.safe_dump(compose(conf_dir=dest / "conf"), sort_keys=False)
    )
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "config", "user.email", "ci@kerascope.invalid"], dest)
    run(["git", "config", "user.name", "kerascope tests"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-qm", "init"], dest)
    return dest


@pytest.fixture
def shrunk_repo(tmp_path):
    """A committed copy of the repository with the shrunken default config."""
    return copy_repo(tmp_path / "repo", SHRINK)


def write_tiny_project(root, n=40, model=None):
    """A tiny dataset.h5 (8x8x1, 4 classes) and a saved model under ``root``.

    Returns ``(params, x, model)`` with every path of ``params`` pointing into ``root``.
    """
    import h5py
    import keras
    import numpy as np

    from pipeline.artifacts import provenance_attrs, write_attrs

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["paths"] = {k: str(root / v) for k, v in params["paths"].items()}
    (root / "data").mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).random((n, 8, 8, 1)).astype("float32")
    y = np.arange(n) % 4
    with h5py.File(params["paths"]["dataset"], "w") as f:
        for split in ("train", "val", "test", "probe"):
            f.create_dataset(f"{split}/x", data=x)
            f.create_dataset(f"{split}/y", data=y)
        f.create_dataset("probe/index", data=np.arange(n))
        write_attrs(f, provenance_attrs("dataset", 1))
        write_attrs(
            f,
            {
                "name": "tiny",
                "class_names": list("abcd"),
                "input_shape": np.array([8, 8, 1]),
                "value_range": np.array([0.0, 1.0]),
                "data_hash": "sha256:test",
            },
        )
    model = model or keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(3, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(4, activation="softmax", name="out"),
        ]
    )
    (root / "outputs").mkdir(exist_ok=True)
    model.save(params["paths"]["model"])
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return params, x, model


@pytest.fixture(scope="session")
def _baseline_template(tmp_path_factory):
    """One shrunken repository on which `dvc repro` ran and whose results are committed.

    The repro runs with no network at all (:func:`offline`); its output is kept beside
    the repository, in ``first-repro.stdout``.
    """
    repo = copy_repo(tmp_path_factory.mktemp("baseline") / "repo", SHRINK)
    first = run(offline(["dvc", "repro"]), repo)
    (repo.parent / "first-repro.stdout").write_text(first.stdout)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)
    return repo


@pytest.fixture
def baseline_repo(_baseline_template, tmp_path):
    """A private copy of the baseline (git history, DVC cache and outputs included)."""
    dest = tmp_path / "repo"
    shutil.copytree(_baseline_template, dest, symlinks=True)
    return dest
