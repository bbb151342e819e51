"""Experiments on DVC's own machinery: queued sweeps, a shared remote, restoring runs."""

from __future__ import annotations

import json
import sys
import time

import pytest
from conftest import run


def _experiments(repo):
    """{experiment name: flat metrics} from `dvc exp show --json`."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo).stdout)
    found = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev.get("data", {})
                name = rev.get("name") or exp.get("name")
                metrics = {}
                for file, content in (data.get("metrics") or {}).items():
                    metrics[file] = content.get("data", {})
                found[name] = {"metrics": metrics, "params": data.get("params", {})}
    return found


@pytest.mark.slow
def test_queued_sweep_runs_in_parallel_and_reuses_untouched_stages(baseline_repo):
    repo = baseline_repo
    # Sweep a setting of a late stage: the expensive upstream stages must be restored.
    run(["dvc", "exp", "run", "--queue", "-S", "attribute.faithfulness.steps=4,6"], repo)
    run(["dvc", "queue", "start", "-j", "2"], repo)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], repo).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    run(["dvc", "queue", "stop"], repo, check=False)
    assert "Failed" not in status, status
    exps = _experiments(repo)
    assert len(exps) == 2, exps.keys()
    steps = sorted(
        e["params"]["params.yaml"]["data"]["attribute"]["faithfulness"]["steps"]
        for e in exps.values()
    )
    assert steps == [4, 6]
    for exp in exps.values():
        live = exp["metrics"]["outputs/live/metrics.json"]
        assert 0.0 <= live["test"]["accuracy"] <= 1.0
        # Every stage's metrics are columns of `dvc exp show`.
        extract = exp["metrics"]["outputs/metrics/extract.json"]
        assert 0.0 <= extract["layers"]["conv1"]["dead_fraction"] <= 1.0
        attribute = exp["metrics"]["outputs/metrics/attribute.json"]
        assert 0.0 <= attribute["gradcam"]["deletion_auc"] <= 1.0
        assert "sanity_spearman" in attribute["saliency"]
        assert exp["metrics"]["outputs/metrics/maximize.json"]["conv2"]["mean_reach_ratio"] > 0
    # The compare view reads both experiments' cached attributions, side by side.
    out = run([sys.executable, "-m", "pipeline.compare", "--out", "outputs/compare"], repo)
    assert "3 experiments" in out.stdout  # the baseline commit and the two members
    page = (repo / "outputs" / "compare" / "index.html").read_text()
    for name in exps:
        assert f"<th>{name}</th>" in page
    assert (repo / "outputs" / "compare" / "gradcam.png").exists()
    # Stages the sweep does not touch are restored, not recomputed.
    for name in exps:
        logs = run(["dvc", "queue", "logs", name], repo, check=False).stdout
        assert "Running stage 'attribute'" in logs
        for untouched in ("data", "train", "extract", "maximize"):
            assert f"Running stage '{untouched}'" not in logs


@pytest.mark.slow
def test_remote_round_trip_recomputes_nothing(baseline_repo, tmp_path):
    repo = baseline_repo
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], repo)
    run(["git", "commit", "-qam", "remote"], repo)
    run(["dvc", "push"], repo)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["dvc", "pull"], clone)
    again = run(["dvc", "repro"], clone)
    assert "Running stage" not in again.stdout, again.stdout
    assert (clone / "outputs" / "model.keras").exists()
    status = run(["dvc", "status"], clone).stdout
    assert "up to date" in status


@pytest.mark.slow
def test_exp_apply_restores_a_run_exactly(baseline_repo):
    repo = baseline_repo
    run(["dvc", "exp", "run", "-n", "longer", "-S", "maximize.steps=8"], repo)
    metrics = (repo / "outputs" / "metrics" / "maximize.json").read_text()
    images = (repo / "outputs" / "maximization.h5").read_bytes()
    run(["git", "checkout", "--", "."], repo)
    run(["dvc", "checkout", "--force"], repo)
    assert (repo / "outputs" / "maximization.h5").read_bytes() != images
    run(["dvc", "exp", "apply", "longer"], repo)
    assert (repo / "outputs" / "metrics" / "maximize.json").read_text() == metrics
    assert (repo / "outputs" / "maximization.h5").read_bytes() == images
    run(["dvc", "exp", "branch", "longer", "longer-branch"], repo)
    assert "longer-branch" in run(["git", "branch"], repo).stdout
