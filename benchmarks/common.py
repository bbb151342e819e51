"""Shared helpers for the benchmarks: the machine, timing, peer models, tables.

Peers run side by side in the same process. tf-keras-vis 0.8.7 needs the Keras 2 API,
so the `bench` extra installs tf-keras and the benchmarks set TF_USE_LEGACY_KERAS=1
before TensorFlow is imported: `tf.keras` (used by tf-keras-vis) is then tf-keras, while
kerascope keeps using Keras 3. Both get the same architecture with the same weights.
"""

from __future__ import annotations

import os
import platform
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


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


def best_time(fn, repeat: int = 3) -> float:
    """Best wall time of ``repeat`` calls, after one warm-up call (tracing, caches)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


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
    shape = (28, 28, 1) if name == "mnist_cnn" else (32, 32, 3)
    return build_model(name, shape, 10)


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
