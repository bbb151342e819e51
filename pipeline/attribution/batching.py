"""Compiled steps and the one batch runner every attribution method goes through."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from pipeline.distribute import run_distributed
from pipeline.graph import compiled


def spec(shape: Sequence[int], dtype=tf.float32) -> tf.TensorSpec:
    """A batch of ``shape`` with any batch size (so a last, smaller batch never retraces)."""
    return tf.TensorSpec((None, *shape), dtype)


def compile_step(
    model: keras.Model, key: tuple, build: Callable[[], Callable], signature: Sequence
) -> Callable:
    """A ``tf.function`` of ``build()``, compiled once per ``(model, key)`` and reused.

    A fixed input signature with a free batch axis means one trace per model and
    option set, whatever the batch sizes. Autograph is off: the steps have no Python
    control flow on tensors, and converting Keras' layer code costs most of a trace.
    """
    return compiled(
        model,
        key,
        lambda: tf.function(build(), input_signature=list(signature), autograph=False),
    )


def batches(n: int, batch_size: int):
    """Start/stop pairs covering ``range(n)``."""
    size = max(1, int(batch_size))
    for start in range(0, n, size):
        yield start, min(start + size, n)


def run_batched(
    fn: Callable,
    arrays: Sequence[np.ndarray],
    batch_size: int,
    per_batch: Callable[[int, int], tuple] | None = None,
):
    """Call a compiled step on consecutive slices of ``arrays``; concatenate its outputs.

    Inside a ``tf.distribute`` strategy's scope with several replicas, each batch is
    split across the replicas (``batch_size`` is the global batch).

    Args:
        fn: The compiled step, called as ``fn(*slices, *extras)``.
        arrays: Arrays of equal length, sliced alike.
        batch_size: Inputs per call.
        per_batch: ``(start, stop) -> tuple of arrays`` made for each batch only (for
            example SmoothGrad's noise), so they never exist for all inputs at once.

    Returns:
        One array if the step returns one tensor, else a tuple of arrays.
    """
    results = []
    for a, b in batches(len(arrays[0]), batch_size):
        extra = tuple(per_batch(a, b)) if per_batch is not None else ()
        out = run_distributed(fn, tuple(np.asarray(arr[a:b]) for arr in arrays) + extra)
        results.append(tuple(out) if isinstance(out, tuple | list) else out)
    if results and isinstance(results[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*results, strict=True))
    return np.concatenate(results)
