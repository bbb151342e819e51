"""Experiments on DVC's own machinery: queued sweeps, a shared remote, restoring runs."""

from __future__ import annotations

import json
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


def _baseline(repo):
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "baseline"], repo)


@pytest.mark.slow
def test_queued_sweep_runs_in_parallel_and_reuses_untouched_stages(shrunk_repo):
    repo = shrunk_repo
    _baseline(repo)
    run(["dvc", "exp", "run", "--queue", "-S", "train.epochs=2,3"], repo)
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
    epochs = sorted(e["params"]["params.yaml"]["data"]["train"]["epochs"] for e in exps.values())
    assert epochs == [2, 3]
    for exp in exps.values():
        live = exp["metrics"]["outputs/live/metrics.json"]
        assert 0.0 <= live["test"]["accuracy"] <= 1.0
    # The data stage is untouched by the sweep: it is restored, not recomputed.
    for name in exps:
        logs = run(["dvc", "queue", "logs", name], repo, check=False).stdout
        assert "Running stage 'train'" in logs
        assert "Running stage 'data'" not in logs


@pytest.mark.slow
def test_remote_round_trip_recomputes_nothing(shrunk_repo, tmp_path):
    repo = shrunk_repo
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], repo)
    _baseline(repo)
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
def test_exp_apply_restores_a_run_exactly(shrunk_repo):
    repo = shrunk_repo
    _baseline(repo)
    run(["dvc", "exp", "run", "-n", "longer", "-S", "train.epochs=2"], repo)
    longer = (repo / "outputs" / "live" / "metrics.json").read_text()
    model = (repo / "outputs" / "model.keras").read_bytes()
    run(["git", "checkout", "--", "."], repo)
    run(["dvc", "checkout", "--force"], repo)
    assert (repo / "outputs" / "model.keras").read_bytes() != model
    run(["dvc", "exp", "apply", "longer"], repo)
    assert (repo / "outputs" / "live" / "metrics.json").read_text() == longer
    assert (repo / "outputs" / "model.keras").read_bytes() == model
