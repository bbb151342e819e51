"""Reliability across stages: a `dvc repro` killed mid-stage is never cached and
recovers; the same config and seed give bit-identical results in fresh processes."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import yaml
from conftest import run, write_tiny_project

# A stage rerun made slow enough to be killed while it writes: many small batches.
SLOW_RERUN = {
    "extract": {"source": "train", "batch_size": 2},
    "attribute": {"source": "train", "count": 200, "batch_size": 4},
}
OUTPUT = {"extract": "activations.h5", "attribute": "attributions.h5"}


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _cached(repo, digest: str) -> bool:
    return (repo / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]).exists()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["extract", "attribute"])
def test_killed_dvc_repro_caches_nothing_and_the_next_repro_recovers(baseline_repo, stage):
    repo = baseline_repo
    lock_before = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[stage].update(SLOW_RERUN[stage])
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    proc = subprocess.Popen(
        ["dvc", "repro", stage],
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill reaches the stage too
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    outputs = repo / "outputs"
    deadline = time.time() + 180
    while time.time() < deadline and not any(outputs.glob(f".tmp-{OUTPUT[stage]}*")):
        assert proc.poll() is None, "the stage ended before it could be killed"
        time.sleep(0.02)
    time.sleep(random.uniform(0.1, 0.6))  # a random point in the write
    assert proc.poll() is None, "the stage ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    # Nothing looks complete, nothing was recorded, nothing partial was cached.
    assert not (outputs / OUTPUT[stage]).exists()
    assert yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage] == lock_before
    leftovers = [p for p in outputs.glob(".tmp-*") if p.is_file()]
    assert leftovers, "the kill should have interrupted a write"
    assert not any(_cached(repo, _md5(p)) for p in leftovers)
    assert stage in run(["dvc", "status"], repo).stdout

    # The next run redoes the stage, completely, and DVC then agrees all is current.
    done = run(["dvc", "repro"], repo)
    assert f"Running stage '{stage}'" in done.stdout
    assert "up to date" in run(["dvc", "status"], repo).stdout
    assert not any(p.exists() for p in leftovers), "the rerun clears the killed run's temporaries"
    with h5py.File(outputs / OUTPUT[stage], "r") as f:
        inputs = f["inputs"].shape[0]
        if stage == "extract":
            with h5py.File(repo / "data" / "dataset.h5", "r") as data:
                assert inputs == data["train/x"].shape[0]
            assert all(d.shape[0] == inputs for d in f["activations"].values())
        else:
            assert inputs == 200
            assert set(f["methods"]) == set(params["attribute"]["methods"])


def _run_stage(root, stage):
    run(
        [sys.executable, "-m", f"pipeline.stages.{stage}"],
        root,
        env={"KERASCOPE_ROOT": str(root)},
    )


def _datasets(path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return out


def _copy_project(source, dest):
    """The same data, model file and params, with every path pointing into ``dest``."""
    shutil.copytree(source, dest)
    text = (source / "params.yaml").read_text().replace(str(source), str(dest))
    (dest / "params.yaml").write_text(text)
    return yaml.safe_load(text)


@pytest.mark.slow
def test_same_config_and_seed_give_identical_results_in_fresh_processes(tmp_path):
    """Extract and attribute are bit-identical; maximization within 1e-5 (README)."""
    template = tmp_path / "template"
    params, _, _ = write_tiny_project(template, n=24)
    params["attribute"]["smoothgrad"]["samples"] = 4
    params["attribute"]["integrated_gradients"] = {"baseline": "uniform", "steps": 8}
    params["attribute"]["sanity"]["max_layers"] = 2
    params["attribute"]["faithfulness"]["steps"] = 5
    params["maximize"]["steps"] = 16
    (template / "params.yaml").write_text(yaml.safe_dump(params))
    runs = []
    for name in ("first", "second"):
        paths = _copy_project(template, tmp_path / name)["paths"]
        for stage in ("extract", "attribute", "maximize"):
            _run_stage(tmp_path / name, stage)
        runs.append(paths)
    first, second = runs
    for kind in ("activations", "attributions"):
        a, b = _datasets(first[kind]), _datasets(second[kind])
        assert a.keys() == b.keys() and len(a) > 5
        for name in a:
            assert np.array_equal(a[name], b[name], equal_nan=True), f"{kind}: {name} differs"
    a, b = _datasets(first["maximization"]), _datasets(second["maximization"])
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=name)
    # Randomness is really seeded, not absent: another seed changes SmoothGrad's noise.
    params = _copy_project(template, tmp_path / "third")
    params.update(seed=1)
    params["attribute"].update(methods=["smoothgrad"])
    params["attribute"]["faithfulness"]["enabled"] = False
    params["attribute"]["sanity"]["enabled"] = False
    (tmp_path / "third" / "params.yaml").write_text(yaml.safe_dump(params))
    _run_stage(tmp_path / "third", "attribute")
    other = _datasets(params["paths"]["attributions"])["methods/smoothgrad/maps"]
    assert not np.array_equal(other, _datasets(first["attributions"])["methods/smoothgrad/maps"])


def test_outputs_publish_only_on_success_and_clear_killed_temporaries(tmp_path):
    from pipeline.workspace import StageOutputs

    final = tmp_path / "out.json"
    killed = tmp_path / ".tmp-out.json-abc.json"  # what a SIGKILL inside a write leaves
    killed.write_bytes(b"partial")
    other = tmp_path / ".tmp-other.h5-abc.h5"  # another output's temporary: not ours
    other.write_bytes(b"partial")
    outputs = {"out": (final, "json")}
    with (
        pytest.raises(RuntimeError),
        StageOutputs(tmp_path, outputs) as out,
        out.write("out") as tmp,
    ):
        tmp.write_text("{}")
        raise RuntimeError("stage failed")
    assert not final.exists() and not killed.exists() and other.exists()
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".kerascope"))
    assert visible == [other.name]
    with StageOutputs(tmp_path, outputs) as out, out.write("out") as tmp:
        tmp.write_text('{"complete": 1}')
    assert final.read_text() == '{"complete": 1}'
