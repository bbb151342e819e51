"""The default pipeline on a real architecture: wall time and peak memory per stage.

A keras.applications MobileNetV2 (weights=None, 10 classes) is saved as the user's model
and run through every stage with the default settings (`model=pretrained`), on the
offline MNIST sample resized into it. Each stage runs as `python -m pipeline.stages.<s>`
in a fresh process, as `dvc repro` runs it; its peak memory is the child's maximum
resident set size.

Run: python benchmarks/bench_pipeline.py [--size 96] [--probe-per-class 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("data", "train", "extract", "attribute", "maximize", "render")


def _machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _workspace(root: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if rel.startswith(("tests/", "benchmarks/")):
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, root / rel)
    return root


def _timed(stage: str, root: Path, overrides: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one stage in its own process."""
    probe = (
        "import resource, subprocess, sys, time;"
        "t = time.perf_counter();"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL);"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, sys.executable, "-m", f"pipeline.stages.{stage}", *overrides],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    seconds, kib = out.stdout.split()[-2:]
    return float(seconds), int(kib) / 1024


def main() -> None:
    """Print a markdown table of stage times and peak memory."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--probe-per-class", type=int, default=2)
    args = parser.parse_args()
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        root = _workspace(Path(tmp) / "repo")
        model = keras.applications.MobileNetV2(
            weights=None, input_shape=(args.size, args.size, 3), classes=10
        )
        model.save(Path(tmp) / "mobilenetv2.keras")
        overrides = [
            "model=pretrained",
            f"model.path={Path(tmp) / 'mobilenetv2.keras'}",
            "model.preprocessing=tf",
            f"data.probe_per_class={args.probe_per_class}",
        ]
        print(f"MobileNetV2 {args.size}x{args.size}, {10 * args.probe_per_class} probe inputs")
        print(f"machine: {_machine()}, {time.strftime('%Y-%m-%d')}\n")
        print("| stage | wall time (s) | peak memory (MB) |\n|---|---|---|")
        total = 0.0
        for stage in STAGES:
            seconds, peak = _timed(stage, root, overrides)
            total += seconds
            print(f"| {stage} | {seconds:.1f} | {peak:,.0f} |", flush=True)
        print(f"| all six | {total:.1f} | |")


if __name__ == "__main__":
    main()
