"""What to maximize: a conv channel, a neuron, a dense unit, a class logit, a direction."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline.maximization.settings import Objective


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
