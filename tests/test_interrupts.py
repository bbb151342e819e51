"""Interrupted stages: SIGKILL and Ctrl-C leave no output that looks complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import run


def _start_until(repo, args, marker, timeout=120):
    """Start a stage and return the process once ``marker`` appears on its stdout."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + timeout
    seen = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        seen += line
        if marker in line:
            return proc
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"{marker!r} never appeared:\n{seen}\n{proc.stderr.read()}")


def _outputs(repo):
    return (
        sorted(str(p.relative_to(repo)) for p in (repo / "outputs").rglob("*") if p.is_file())
        if (repo / "outputs").exists()
        else []
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_training_leaves_no_output_and_repro_recovers(shrunk_repo, sig):
    repo = shrunk_repo
    run([sys.executable, "-m", "pipeline.stages.data"], repo)
    proc = _start_until(repo, ["pipeline.stages.train", "train.epochs=200"], "Epoch 3/")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert lines[-1].startswith("interrupted: train stopped")
        assert "Traceback" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not (repo / "outputs" / "model.keras").exists()
    assert not (repo / "outputs" / "evaluation.h5").exists()
    # Only temporaries and lock files may remain; both are git-ignored, not DVC outputs.
    assert all(".tmp-" in p or ".kerascope-lock-" in p for p in _outputs(repo)), _outputs(repo)
    done = run(["dvc", "repro", "train"], repo)
    assert "Running stage 'train'" in done.stdout
    assert (repo / "outputs" / "model.keras").exists()
    assert "up to date" in run(["dvc", "status", "train"], repo).stdout
