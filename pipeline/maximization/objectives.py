"""What to maximize: a conv channel, a neuron, a dense unit, a class logit, a direction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from pipeline.errors import KerascopeError

OBJECTIVES = ("channel", "neuron", "unit", "class_logit", "direction")


@dataclass(frozen=True)
class Objective:
    """One optimisation target.

    Attributes:
        layer: Layer path (for ``class_logit``: the model's output layer).
        kind: One of :data:`OBJECTIVES`.
        position: Spatial (or time) index for ``neuron`` objectives; default: centre.
        direction: A vector in the layer's channel space for ``direction``.
    """

    layer: str
    kind: str
    position: tuple[int, ...] | None = None
    direction: tuple[float, ...] | None = None


def objective_kind(output_shape: tuple, is_output: bool) -> str:
    """The natural objective of a layer: class logit, channel mean, or dense unit."""
    if is_output:
        return "class_logit"
    return "channel" if len(output_shape) >= 2 else "unit"


def objective_values(objective: Objective, acts: tf.Tensor, units: tf.Tensor) -> tf.Tensor:
    """Per-sample objective value: the chosen unit of each sample's activation.

    Args:
        objective: What to compute.
        acts: The layer's output (batch, ..., channels) or the logits (batch, classes).
        units: One unit (channel, class) index per sample, int32 (batch,).

    Returns:
        (batch,) values to maximize.
    """
    if objective.kind == "direction":
        vector = tf.constant(np.asarray(objective.direction, np.float32))
        axes = list(range(1, len(acts.shape) - 1))
        pooled = tf.reduce_mean(acts, axis=axes) if axes else acts
        return tf.reduce_sum(pooled * vector, axis=-1) / (tf.norm(vector) + 1e-8)
    picked = tf.gather(acts, units, axis=-1, batch_dims=1)  # (batch, ...)
    if objective.kind == "neuron" and len(picked.shape) > 1:
        spatial = picked.shape[1:]
        position = objective.position or tuple(s // 2 for s in spatial)
        index = (slice(None), *position)
        return picked[index]
    if len(picked.shape) > 1:
        return tf.reduce_mean(picked, axis=list(range(1, len(picked.shape))))
    return picked


def check_units(units, count: int, layer: str) -> np.ndarray:
    """Validate unit indices against the layer's channel count (one-line errors)."""
    units = np.asarray(units, dtype=np.int32).reshape(-1)
    bad = units[(units < 0) | (units >= count)]
    if len(bad):
        raise KerascopeError(
            f"unit {int(bad[0])} is out of range for layer '{layer}'; valid: 0..{count - 1}"
        )
    return units
