"""Target scores shared by the attribution methods, and compiled-step helpers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from pipeline.distribute import run_distributed
from pipeline.errors import KerascopeError
from pipeline.graph import LayerForward, compiled

SCORES = ("logits", "probabilities")


def check_score(score: str) -> None:
    """Raise a one-line error unless ``score`` is ``logits`` or ``probabilities``."""
    if score not in SCORES:
        raise KerascopeError(f"invalid score '{score}'; valid: {', '.join(SCORES)}")


def forward(model: keras.Model, score: str, layers=()) -> LayerForward:
    """A forward pass returning pre-softmax logits or probabilities, plus layer taps."""
    check_score(score)
    return LayerForward(model, list(layers), logits=score == "logits")


def num_classes(model: keras.Model) -> int:
    """Number of classes of a single-output classifier."""
    shape = model.outputs[0].shape
    return int(shape[-1])


def check_targets(model: keras.Model, targets, n: int, x: np.ndarray | None = None) -> np.ndarray:
    """Validate one target class per input; ``None`` means each input's predicted class.

    Args:
        model: The classifier.
        targets: Class indices (one per input, or one for all), or None.
        n: Number of inputs.
        x: The inputs, needed when ``targets`` is None.

    Raises:
        KerascopeError: Wrong count or a class outside ``0..classes-1``.
    """
    if targets is None:
        if x is None:
            raise KerascopeError("targets=None (the predicted class) needs the inputs")
        return predicted_classes(model, np.asarray(x, np.float32))
    targets = np.asarray(targets, dtype=np.int32).reshape(-1)
    if len(targets) == 1 and n > 1:
        targets = np.repeat(targets, n)  # one class for every input
    classes = num_classes(model)
    if len(targets) != n:
        raise KerascopeError(f"{len(targets)} targets given for {n} inputs")
    bad = targets[(targets < 0) | (targets >= classes)]
    if len(bad):
        raise KerascopeError(f"target class {int(bad[0])} is out of range; valid: 0..{classes - 1}")
    return targets


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


def predicted_classes(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's predicted class per input (the default attribution target)."""
    fn = compile_step(
        model,
        ("predict", x.shape[1:]),
        lambda: lambda b: tf.argmax(model(b, training=False), axis=-1, output_type=tf.int32),
        [spec(x.shape[1:])],
    )
    preds = [
        fn(tf.convert_to_tensor(x[a:b], tf.float32)).numpy() for a, b in batches(len(x), batch_size)
    ]
    return np.concatenate(preds).astype(np.int32) if preds else np.zeros(0, np.int32)


def target_score(outputs, targets):
    """Pick each input's target-class score: ``outputs[i, targets[i]]``."""
    return tf.gather(outputs, targets, axis=1, batch_dims=1)


def reduce_channels(grads: np.ndarray, how: str = "max", image: bool = True) -> np.ndarray:
    """Reduce |gradients| over the channel axis of images (Simonyan et al. 2013 use max).

    Sequences (N, T, F) are returned as they are: every feature is its own row.
    """
    check_reduce(how)
    if not image:
        return grads
    return grads.max(axis=-1) if how == "max" else grads.mean(axis=-1)


def check_reduce(how: str) -> None:
    """Raise a one-line error unless ``how`` is a channel reduction we know."""
    if how not in ("max", "mean"):
        raise KerascopeError(f"invalid channel reduction '{how}'; valid: max, mean")


def is_image(x: np.ndarray) -> bool:
    """Whether inputs are images (N, H, W, C) rather than sequences (N, T, F)."""
    return x.ndim == 4


def batches(n: int, batch_size: int):
    """Start/stop pairs covering ``range(n)``."""
    for start in range(0, n, max(1, int(batch_size))):
        yield start, min(start + max(1, int(batch_size)), n)


def run_batched(fn: Callable, arrays: Sequence[np.ndarray], batch_size: int):
    """Call a compiled step on consecutive slices of ``arrays``; concatenate its outputs.

    Inside a ``tf.distribute`` strategy's scope with several replicas, each batch is
    split across the replicas (``batch_size`` is the global batch).

    Returns:
        One array if the step returns one tensor, else a tuple of arrays.
    """
    results = []
    for a, b in batches(len(arrays[0]), batch_size):
        out = run_distributed(fn, tuple(np.asarray(arr[a:b]) for arr in arrays))
        results.append(tuple(out) if isinstance(out, tuple | list) else out)
    if results and isinstance(results[0], tuple):
        return tuple(np.concatenate(parts) for parts in zip(*results, strict=True))
    return np.concatenate(results)
