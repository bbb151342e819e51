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


def _leaves(data, prefix=""):
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


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
        metrics = exp["metrics"]
        assert 0.0 <= metrics["outputs/metrics/train.json"]["accuracy"] <= 1.0
        # Headline metrics only: the whole model's health, not one column per layer.
        extract = metrics["outputs/metrics/extract.json"]
        assert 0.0 <= extract["dead_fraction"] <= 1.0 and "layers" not in extract
        attribute = metrics["outputs/metrics/attribute.json"]
        assert 0.0 <= attribute["gradcam"]["deletion_auc"] <= 1.0
        assert attribute["saliency"]["sanity_passed"] in (0, 1)
        assert metrics["outputs/metrics/maximize.json"]["mean_reach_ratio"] > 0
        columns = [k for content in metrics.values() for k in _leaves(content)]
        assert len(columns) <= 28, columns
    # The README's headline view of `dvc exp show`: every run, every headline column, and
    # no value elided.
    keep = "Experiment|accuracy|dead_fraction|saturated_fraction|.*_auc|.*_passed|mean_reach_ratio"
    table = run(
        ["dvc", "exp", "show", "--no-pager", "--md", "--drop", ".*", "--keep", keep], repo
    ).stdout
    header = [c.strip() for c in table.splitlines()[0].strip("|").split("|")]
    assert {"accuracy", "dead_fraction", "gradcam.insertion_auc", "mean_reach_ratio"} <= set(header)
    assert len(header) == 25 and "…" not in table  # the name and 24 headline metrics
    for name in exps:
        assert name in table
    # The compare view, without arguments: the committed baseline and both members; the
    # workspace holds the baseline's results, so it is skipped as a duplicate.
    out = run([sys.executable, "-m", "pipeline.compare", "--out", "outputs/compare"], repo)
    assert "3 runs" in out.stdout and "skipped workspace: same results as" in out.stdout
    page = (repo / "outputs" / "compare" / "index.html").read_text()
    for name, exp in exps.items():
        steps = exp["params"]["params.yaml"]["data"]["attribute"]["faithfulness"]["steps"]
        # Columns are headed by each run's name and the param that sets it apart.
        assert f"{name}: attribute.faithfulness.steps={steps}" in page
    assert (repo / "outputs" / "compare" / "gradcam.png").exists()
    assert "Layer health per run" in page
    # The sweep changed only attribution settings: every run extracted the same
    # activations, so cross-run CKA of each layer with itself is exactly 1.
    assert "Representations across runs (CKA)" in page
    assert page.count("mean of the diagonal 1.00") == 2
    # A revision without results is skipped with its reason, in one line.
    bad = run(
        [sys.executable, "-m", "pipeline.compare", "no-such-rev", "--out", "outputs/cmp2"],
        repo,
        check=False,
    )
    assert bad.returncode == 2 and "skipped no-such-rev: cannot read" in bad.stdout
    assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
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
