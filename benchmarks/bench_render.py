"""Render stage wall time: the default report and a 45-layer mini-Xception's report.

Usage::

    python benchmarks/bench_render.py                 # both, in temporary workspaces
    python benchmarks/bench_render.py --workspace DIR # a workspace whose stages have run

For each report: a cold render (figure cache off), then a render that reuses every
figure (cache on, second run), with ``render.workers`` auto (one per CPU) and 1.
The mini-Xception follows Arriaga et al. 2017 (four residual modules of separable
convolutions, batch norm and a strided 1x1 shortcut): 45 layers with weights at random,
on the default data resized nowhere (28x28x1, 10 classes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, copy_tracked, machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: Tiny upstream settings: the benchmark times render, not the tensor stages.
SHRINK = [
    "attribute.smoothgrad.samples=4",
    "attribute.integrated_gradients.steps=8",
    "attribute.sanity.max_layers=2",
    "maximize.steps=16",
]


def mini_xception(path: Path) -> None:
    """Save the 45-layer mini-Xception (random weights) to ``path``."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(8, 3, use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(8, 3, use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    for filters in (16, 32, 64, 128):
        shortcut = layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=False)(x)
        shortcut = layers.BatchNormalization()(shortcut)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = layers.add([x, shortcut])
    x = layers.Conv2D(10, 3, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Activation("softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="mini_xception")
    assert len(model.layers) >= 45, len(model.layers)
    model.save(path)


def _python(workspace: Path, *args: str) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(
        [sys.executable, *args], cwd=workspace, check=True, env=env, stdout=subprocess.DEVNULL
    )


def prepare(workspace: Path, model: Path | None) -> None:
    """Copy the repository's tracked files and run every stage before render."""
    copy_tracked(workspace)
    source = ["model=pretrained", f"model.path={model}"] if model else []
    _python(workspace, "-m", "pipeline.stages.data")
    _python(workspace, "-m", "pipeline.stages.train", *source)
    for stage in ("extract", "attribute", "maximize"):
        _python(workspace, "-m", f"pipeline.stages.{stage}", *source, *SHRINK)


def time_render(workspace: Path, *overrides: str) -> float:
    started = time.perf_counter()
    _python(workspace, "-m", "pipeline.stages.render", *overrides)
    return time.perf_counter() - started


def measure(workspace: Path) -> dict[str, float]:
    """Cold and cached render times, parallel and serial."""
    out = {
        "cold_auto_s": time_render(workspace, "render.cache=false"),
        "cold_1_worker_s": time_render(workspace, "render.cache=false", "render.workers=1"),
    }
    time_render(workspace)  # fills the cache
    out["cached_s"] = time_render(workspace)
    report = workspace / "outputs" / "report"
    out["figures"] = len(list((report / "figures").iterdir()))
    out["report_mb"] = sum(p.stat().st_size for p in report.rglob("*") if p.is_file()) / 1e6
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workspace", type=Path, help="a workspace whose stages have run")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    if args.workspace:
        results["workspace"] = measure(args.workspace.resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            default = Path(tmp) / "default"
            prepare(default, None)
            results["default (mnist_cnn)"] = measure(default)
            xception = Path(tmp) / "xception"
            model = Path(tmp) / "mini_xception.keras"
            mini_xception(model)
            prepare(xception, model)
            results["mini-Xception (45 layers)"] = measure(xception)
    info = machine()
    print(f"render benchmark on {info}")
    for name, row in results.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "render.json").write_text(json.dumps({"machine": info, **results}, indent=2))


if __name__ == "__main__":
    main()
