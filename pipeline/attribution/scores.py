"""Target scores shared by the attribution methods, and compiled-function caching."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

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


def check_targets(model: keras.Model, targets, n: int) -> np.ndarray:
    """Validate one target class per input.

    Raises:
        KerascopeError: Wrong count or a class outside ``0..classes-1``.
    """
    targets = np.asarray(targets, dtype=np.int32).reshape(-1)
    classes = num_classes(model)
    if len(targets) != n:
        raise KerascopeError(f"{len(targets)} targets given for {n} inputs")
    bad = targets[(targets < 0) | (targets >= classes)]
    if len(bad):
        raise KerascopeError(f"target class {int(bad[0])} is out of range; valid: 0..{classes - 1}")
    return targets


def predicted_classes(model: keras.Model, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's predicted class per input (the default attribution target)."""
    fn = compiled(model, ("predict",), lambda: tf.function(lambda b: model(b, training=False)))
    preds = [
        np.argmax(fn(tf.convert_to_tensor(x[i : i + batch_size])).numpy(), -1)
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(preds).astype(np.int32)


def target_score(outputs, targets):
    """Pick each input's target-class score: ``outputs[i, targets[i]]``."""
    return tf.gather(outputs, targets, axis=1, batch_dims=1)


def reduce_channels(grads: np.ndarray, how: str = "max", image: bool = True) -> np.ndarray:
    """Reduce |gradients| over the channel axis of images (Simonyan et al. 2013 use max).

    Sequences (N, T, F) are returned as they are: every feature is its own row.
    """
    if how not in ("max", "mean"):
        raise KerascopeError(f"invalid channel reduction '{how}'; valid: max, mean")
    if not image:
        return grads
    return grads.max(axis=-1) if how == "max" else grads.mean(axis=-1)


def is_image(x: np.ndarray) -> bool:
    """Whether inputs are images (N, H, W, C) rather than sequences (N, T, F)."""
    return x.ndim == 4


def batches(n: int, batch_size: int):
    """Start/stop pairs covering ``range(n)``."""
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)
