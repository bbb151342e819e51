"""End to end: `dvc repro` of a shrunken config in a temporary git + DVC repository."""

from __future__ import annotations

import json
import time

import h5py
import numpy as np
import pytest
import yaml
from conftest import offline, python_cmd, run


@pytest.mark.slow
def test_dvc_repro_then_noop_then_experiment(_baseline_template, baseline_repo):
    repo = baseline_repo
    # The session's baseline ran `dvc repro` on the shrunken default config with no
    # network at all (conftest.py): the default path must never download.
    first = (_baseline_template.parent / "first-repro.stdout").read_text()
    assert "Running stage 'data'" in first and "Running stage 'render'" in first
    model = repo / "outputs" / "model.keras"
    assert model.exists()
    metrics = json.loads((repo / "outputs" / "live" / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    # The prepared data follow the documented layout and the shrunken config.
    with h5py.File(repo / "data" / "dataset.h5") as f:
        assert f.attrs["kerascope_format"] == "dataset/1"
        assert len(f["probe/y"]) == 10 and np.bincount(f["probe/y"][()]).tolist() == [1] * 10
        n = sum(len(f[s]["y"]) for s in ("train", "val", "test"))
        assert n == 600
    # Outputs are DVC-tracked, not git-tracked.
    tracked = run(["git", "ls-files"], repo).stdout.split()
    assert "outputs/model.keras" not in tracked and "data/dataset.h5" not in tracked

    second = run(["dvc", "repro"], repo)
    assert "Running stage" not in second.stdout, second.stdout

    # The report opens with its findings and has every section, concepts included.
    page = (repo / "outputs" / "report" / "index.html").read_text()
    order = ["Summary", "Attributions", "Training", "Layers", "Feature visualization"]
    order += ["Concepts and representations", "Model", "Provenance"]
    positions = [page.index(f"<h2>{title}</h2>") for title in order]
    assert positions == sorted(positions)
    assert "Test accuracy" in page and "Representation similarity (CKA)" in page

    # `dvc plots show` works offline: the page draws its charts with the vega bundle the
    # render stage wrote, requests nothing remote, and its directory is git-ignored.
    run(offline(["dvc", "plots", "show"]), repo)
    page = repo / "dvc_plots" / "index.html"
    assert "cdn.jsdelivr" not in page.read_text()
    assert run(["git", "check-ignore", "dvc_plots/index.html"], repo).returncode == 0
    from browser import chrome, remote_requests, severe_console_messages

    with chrome(repo.parent / "chrome-profile") as driver:
        driver.get(page.as_uri())
        deadline = time.time() + 30
        charts = 0
        while time.time() < deadline and not charts:
            charts = driver.execute_script(
                "return document.querySelectorAll('canvas, svg.marks').length"
            )
            time.sleep(0.2)
        assert charts >= 4  # loss and accuracy, train and validation
        assert not remote_requests(driver) and not severe_console_messages(driver)

    # A later stage's setting does not invalidate training.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["render"] = {**(params.get("render") or {}), "_probe_": 1}
    status_params = dict(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(status_params, sort_keys=False))
    status = run(["dvc", "status", "--json"], repo).stdout
    changed = json.loads(status) if status.strip() else {}
    assert "train" not in changed and "data" not in changed
    run(["git", "checkout", "params.yaml"], repo)

    # An experiment with Hydra overrides is listed by `dvc exp show` (the baseline is
    # committed).
    assert not run(["git", "status", "--porcelain"], repo).stdout.strip()
    run(["dvc", "exp", "run", "-n", "two-epochs", "-S", "train.epochs=2"], repo)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    names = json.dumps(shown)
    assert "two-epochs" in names


@pytest.mark.slow
def test_stage_run_alone_with_overrides_writes_the_same_outputs(shrunk_repo):
    repo = shrunk_repo
    run(python_cmd("-m", "pipeline.stages.data"), repo)
    before = (repo / "data" / "dataset.h5").stat().st_mtime_ns
    proc = run(python_cmd("-m", "pipeline.stages.train", "train.epochs=1", "model=mlp"), repo)
    assert "mlp" in proc.stdout
    assert (repo / "outputs" / "model.keras").exists()
    assert (repo / "data" / "dataset.h5").stat().st_mtime_ns == before
    with h5py.File(repo / "outputs" / "evaluation.h5") as f:
        assert len(f["history/loss"]) == 1


@pytest.mark.slow
def test_exp_run_with_an_outside_path_is_refused_and_deletes_nothing(baseline_repo, tmp_path):
    """`dvc exp run -S paths.report=/abs/dir`: the first stage refuses in one line (DVC
    alone fails with an empty message), and the directory's files survive."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me\n")
    proc = run(["dvc", "exp", "run", "-S", f"paths.report={victim}"], baseline_repo, check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "error: data: 'paths.report'" in output and "outside the workspace" in output
    assert (victim / "precious.txt").read_text() == "keep me\n"
    assert sorted(p.name for p in victim.iterdir()) == ["precious.txt"]
