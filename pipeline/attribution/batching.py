"""Compiled steps and the one batch runner every attribution method goes through."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import keras
import numpy as np
import tensorflow as tf

from pipeline.budget import DEFAULT_MEMORY_BUDGET, forward_batch_rows
from pipeline.budget import output_sizes as _output_sizes
from pipeline.distribute import run_distributed
from pipeline.graph import compiled

#: Memory one compiled step may fill with activations, in bytes: its batch shrinks to
#: fit (see :func:`gradient_rows` and :func:`forward_rows`). Small models never reach it.
MEMORY_BUDGET = DEFAULT_MEMORY_BUDGET

#: Activations one gradient step holds when its rows are chosen automatically (``rows``
#: None). Measured on 2 EPYC cores with the noise drawn on the device (2026-12-03): the
#: VGG-like benchmark net (1.1 MB of activations per row) ran SmoothGrad and Integrated
#: Gradients 1.15-1.2x slower with 32-64-row steps than with 256, saliency 1.2x; the
#: tutorial convnet (26 KB per row) gains up to its 1,024-row cap. Large models (a
#: MobileNetV2 at 96x96 holds 16 MB per row) get the lower bound of AUTO_ROWS.
STEP_BUDGET = 256 << 20

#: Bounds of an automatic gradient step, in rows: at least enough to amortise a call's
#: fixed cost on a large model, at most what a tiny model gains from.
AUTO_ROWS = (16, 1024)

#: Rows of an automatic forward-only step (masked inputs, deletion steps, Score-CAM
#: channels), before the memory budget. Score-CAM on the tutorial convnet ran 1.5x
#: faster with 1,024-row steps than with 256, and no slower on the VGG-like net.
AUTO_FORWARD_ROWS = 1024


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


#: Called as ``hook(done, total)`` after each batch of :func:`run_batched` (see
#: :func:`batch_progress`); None: nobody is watching.
_BATCH_HOOK: ContextVar[Callable[[int, int], None] | None] = ContextVar(
    "kerascope_batch_hook", default=None
)


@contextmanager
def batch_progress(hook: Callable[[int, int], None]) -> Iterator[None]:
    """Report every batch of every compiled run inside the ``with`` block to ``hook``.

    ``hook(done, total)`` is called after each batch of :func:`run_batched`, with the
    rows finished so far and the rows of that run (a new run starts again from 0). A
    progress bar's business, kept out of the methods' signatures: their results do not
    depend on it.
    """
    token = _BATCH_HOOK.set(hook)
    try:
        yield
    finally:
        _BATCH_HOOK.reset(token)


def activation_elements(model: keras.Model, sample_shape: Sequence[int]) -> int:
    """Values every layer of ``model`` outputs for one input of ``sample_shape``."""
    return sum(_output_sizes(model, sample_shape))


def forward_rows(
    model: keras.Model, sample_shape: Sequence[int], rows: int | None, budget: int | None = None
) -> int:
    """At most ``rows`` rows per forward-only step, fewer if they would pass ``budget``.

    A forward pass frees each output once the next layers have used it: about three of
    the largest layer outputs are alive at once (a layer's input, its output and a
    temporary), in float32. Masked inputs, deletion steps and Score-CAM channels count
    one row each. ``rows`` None means :data:`AUTO_FORWARD_ROWS`.
    """
    rows = AUTO_FORWARD_ROWS if rows is None else rows
    budget = MEMORY_BUDGET if budget is None else budget
    return forward_batch_rows(model, sample_shape, rows, budget)


def gradient_rows(
    model: keras.Model, sample_shape: Sequence[int], rows: int | None, budget: int | None = None
) -> int:
    """At most ``rows`` rows per gradient step, fewer if their activations pass ``budget``.

    A backward pass keeps every layer's output until its gradient is taken: one float32
    per activation value and row (measured on a MobileNetV2 at 96x96, the whole attribute
    stage peaked at 1.9 GB with 99 rows per Integrated Gradients step, 16 MB each by
    this count). Rows are inputs, noisy copies or path points, as the method counts them.
    ``rows`` None sizes the step from :data:`STEP_BUDGET`, within :data:`AUTO_ROWS`:
    results never depend on the step size, only the speed does.
    """
    budget = MEMORY_BUDGET if budget is None else budget
    per_row = 4 * activation_elements(model, sample_shape)
    if rows is None:
        low, high = AUTO_ROWS
        rows = min(high, max(low, STEP_BUDGET // max(1, per_row)))
    return max(1, min(int(rows), budget // max(1, per_row)))


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
    results, hook, total = [], _BATCH_HOOK.get(), len(arrays[0])
    for a, b in batches(total, batch_size):
        extra = tuple(per_batch(a, b)) if per_batch is not None else ()
        out = run_distributed(fn, tuple(np.asarray(arr[a:b]) for arr in arrays) + extra)
        results.append(tuple(out) if isinstance(out, tuple | list) else out)
        if hook is not None:
            hook(b, total)
    if results and isinstance(results[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*results, strict=True))
    return np.concatenate(results)
