"""What to maximize: a channel, a neuron, a unit, a class logit, a direction, a layer, a sum."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from pipeline.graph import LayerForward
from pipeline.maximization.settings import Objective, Sum

#: The key of the model's logits among the tensors an objective reads (not a layer path).
LOGITS = "<logits>"


def tensor_key(objective: Objective) -> str:
    """Which tensor an objective reads: :data:`LOGITS` or its layer path."""
    return LOGITS if objective.kind == "class_logit" else objective.layer


def tensor_keys(objective: Objective | Sum) -> list[str]:
    """Every tensor an objective (or each term of a sum) reads, without duplicates."""
    keys = [tensor_key(term.objective) for term in objective.terms_of()]
    return list(dict.fromkeys(keys))


def objective_forward(
    model: keras.Model, objective: Objective | Sum, preactivation: bool = False
) -> Callable:
    """``inputs -> the tensor(s) the objective reads``, from one forward pass.

    Args:
        model: The model.
        objective: An :class:`Objective` or a :class:`Sum`.
        preactivation: Tap the layers before their activation function.

    Returns:
        A function returning the objective's tensor (the logits or the layer's output)
        for an :class:`Objective`, and a dict from :func:`tensor_key` to tensor for a
        :class:`Sum` (every layer involved is tapped in the same pass).
    """
    keys = tensor_keys(objective)
    taps = [key for key in keys if key != LOGITS]
    # With a class_logit term, the output layer's own tap is its logits too.
    layer_forward = LayerForward(
        model,
        taps,
        logits=LOGITS in keys,
        preactivation=taps if preactivation else [],
        stop_early=LOGITS not in keys,
    )

    def forward(inputs):
        outputs, tapped = layer_forward(inputs)
        tensors = {**tapped, LOGITS: outputs}
        if isinstance(objective, Sum):
            return {key: tensors[key] for key in keys}  # in the order of the terms
        return tensors[keys[0]]

    return forward


def objective_values(objective: Objective | Sum, acts, units: tf.Tensor) -> tf.Tensor:
    """Per-sample objective value: the chosen unit of each sample's activation.

    Args:
        objective: What to compute. A :class:`Sum` is the weighted sum of its terms'
            values (Lucid's objective arithmetic, Olah et al. 2017).
        acts: The layer's output (batch, ..., channels) or the logits (batch, classes);
            for a :class:`Sum`, a dict from :func:`tensor_key` to those tensors.
        units: One unit (channel, class) index per sample, int32 (batch,); an
            objective with a fixed ``unit`` uses that one instead.

    Returns:
        (batch,) values to maximize.
    """
    if isinstance(objective, Sum):
        values = [
            term.weight * _single_values(term.objective, acts[tensor_key(term.objective)], units)
            for term in objective.terms
        ]
        return tf.add_n(values)
    return _single_values(objective, acts, units)


def _single_values(objective: Objective, acts: tf.Tensor, units: tf.Tensor) -> tf.Tensor:
    if objective.kind == "layer":
        # DeepDream (Mordvintsev, Olah & Tyka 2015): the whole layer's squared activation.
        return tf.reduce_mean(tf.square(acts), axis=list(range(1, len(acts.shape))))
    if objective.kind == "direction":
        vector = tf.constant(np.asarray(objective.direction, np.float32))
        axes = list(range(1, len(acts.shape) - 1))
        pooled = tf.reduce_mean(acts, axis=axes) if axes else acts
        return tf.reduce_sum(pooled * vector, axis=-1) / (tf.norm(vector) + 1e-8)
    if objective.unit is not None:
        units = tf.fill(tf.shape(units), objective.unit)
    # Position (or spatial mean) first, unit second: gathering one channel per sample out
    # of the whole (batch, ..., channels) tensor transposes it, and its gradient is a
    # scatter, at every optimisation step.
    if objective.kind == "neuron" and len(acts.shape) > 2:
        position = objective.position or tuple(s // 2 for s in acts.shape[1:-1])
        acts = acts[(slice(None), *position)]
    elif len(acts.shape) > 2:
        acts = tf.reduce_mean(acts, axis=list(range(1, len(acts.shape) - 1)))
    return tf.gather(acts, units, axis=-1, batch_dims=1)  # (batch,)
