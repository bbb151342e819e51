"""Shared helpers for the benchmarks: the machine, timing, peer models, tables, results.

Peers run side by side in the same process, on the same Keras 3 model: tf-keras-vis
0.8.7 works on Keras 3, and xplique 2.0.2 (installed with ``pip install --no-deps``)
too. tf-keras-vis is also measured on tf-keras (Keras 2), in a subprocess started with
``TF_USE_LEGACY_KERAS=1``, on a twin of the model with the same weights
(:func:`tf_keras_twin`).
"""

from __future__ import annotations

import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: Input shape of each benchmark model: the tutorial convnet and a VGG-like net.
SHAPES = {"mnist_cnn": (28, 28, 1), "vgg_small": (64, 64, 3)}


def machine() -> str:
    """CPU model, cores and library versions, for the README's figures."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import keras
    import tensorflow as tf

    return f"{cpu}, {os.cpu_count()} cores, TensorFlow {tf.__version__}, Keras {keras.__version__}"


def times(fn, repeat: int = 3) -> list[float]:
    """Wall times of ``repeat`` calls, after one warm-up call (tracing, caches)."""
    fn()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def best_time(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls, after one warm-up call (tracing, caches)."""
    return min(times(fn, repeat))


def spread(samples: list[float]) -> str:
    """``best (+x%)``: the best time and how much slower the slowest repeat was."""
    best = min(samples)
    return f"{best:.3g} s (+{100 * (max(samples) / best - 1):.0f}%)"


def save(name: str, data: dict) -> Path:
    """Write raw results (with the machine) to ``benchmarks/results/<name>.json``."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), **data}
    path.write_text(json.dumps(record, indent=1))
    return path


def import_xplique():
    """xplique's attribution module, or None if it is not installed.

    ``pip install --no-deps xplique`` leaves out scikit-image, which xplique imports
    only for LIME's superpixels; a stub stands in for it (LIME is not benchmarked).
    """
    if "skimage" not in sys.modules:
        try:
            import skimage  # noqa: F401
        except ImportError:
            stub = types.ModuleType("skimage.segmentation")
            stub.felzenszwalb = stub.quickshift = None
            sys.modules["skimage"] = types.ModuleType("skimage")
            sys.modules["skimage.segmentation"] = stub
    try:
        import xplique.attributions as attributions
    except ImportError:
        return None
    return attributions


def table(header: list[str], rows: list[list]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append(
            "| " + " | ".join(f"{c:.3g}" if isinstance(c, float) else str(c) for c in row) + " |"
        )
    return "\n".join(lines)


def keras3_model(name: str, seed: int = 0):
    """A kerascope zoo model (Keras 3), untrained: speed does not depend on training."""
    import keras

    from pipeline.models import build_model

    keras.utils.set_random_seed(seed)
    return build_model(name, SHAPES[name], 10)


def tf_keras_twin(model):
    """The same architecture and weights as a tf-keras (Keras 2) model, for tf-keras-vis."""
    import tf_keras

    layers = [tf_keras.Input(tuple(model.inputs[0].shape[1:]))]
    for layer in model.layers:
        # Initializers and the like do not matter: the weights are copied below.
        config = {
            k: v
            for k, v in layer.get_config().items()
            if k != "dtype" and not k.endswith(("initializer", "regularizer", "constraint"))
        }
        cls = getattr(tf_keras.layers, type(layer).__name__)
        while True:  # drop the Keras-3-only config keys that tf-keras does not know
            try:
                layers.append(cls.from_config(config))
                break
            except TypeError as exc:
                unknown = [k for k in config if f"'{k}'" in str(exc).split("Exception")[-1]]
                if not unknown:
                    raise
                config.pop(unknown[0])
    twin = tf_keras.Sequential(layers)
    twin.set_weights(model.get_weights())
    return twin


def inputs_for(model, n: int, seed: int = 0) -> np.ndarray:
    """Random inputs in [0, 1] of the model's shape."""
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).random((n, *shape)).astype("float32")


def copy_tracked(root: Path) -> None:
    """Copy this repository's git-tracked (and untracked, not ignored) files to ``root``.

    Tests and benchmarks are left out: a benchmark workspace holds what a user clones.
    """
    import shutil
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        src = repo / rel
        if not src.is_file() or rel.startswith(("tests/", "benchmarks/")):
            continue
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, root / rel)
