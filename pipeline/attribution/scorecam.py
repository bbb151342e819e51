"""Score-CAM (Wang et al. 2020).

From "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks".
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.gradcam import CamResult, _combine, cam_layer, upsample
from pipeline.attribution.scores import batches, check_targets, compiled, forward, target_score
from pipeline.errors import KerascopeError


def _layer_activations(model, x, layer, batch_size):
    def build():
        fwd = forward(model, "logits", [layer])
        return tf.function(lambda b: fwd(b)[1][layer], reduce_retracing=True)

    fn = compiled(model, ("layer", layer), build)
    return np.concatenate(
        [
            fn(tf.convert_to_tensor(x[a:b], tf.float32)).numpy()
            for a, b in batches(len(x), batch_size)
        ]
    )


def _probabilities(model, x, targets, batch_size):
    def build():
        fwd = forward(model, "logits")
        return tf.function(
            lambda b, t: target_score(tf.nn.softmax(fwd(b)[0]), t), reduce_retracing=True
        )

    fn = compiled(model, ("target_probability",), build)
    return np.concatenate(
        [
            fn(tf.convert_to_tensor(x[a:b], tf.float32), tf.constant(targets[a:b])).numpy()
            for a, b in batches(len(x), batch_size)
        ]
    )


def scorecam(
    model: keras.Model,
    x: np.ndarray,
    targets,
    *,
    layer: str | None = None,
    max_channels: int | None = None,
    batch_size: int = 256,
) -> CamResult:
    """Score-CAM: weight each channel by the target probability of the input it masks.

    Each channel's map is upsampled to the input, scaled to [0, 1] and multiplied with
    the input; the softmax probability of the target on that masked input is the
    channel's score, and the scores' softmax over channels weights the activations
    (Wang et al. 2020). Gradient-free, so it needs no differentiable path.

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C) or sequences (N, T, F).
        targets: One class per input.
        layer: Layer path; default: the last layer with a spatial (or time) output.
        max_channels: Use only this many channels per input, those with the highest
            mean activation (a speed/fidelity trade-off); None uses all.
        batch_size: Masked inputs per compiled forward pass.

    Returns:
        :class:`CamResult`.
    """
    targets = check_targets(model, targets, len(x))
    layer = cam_layer(model, layer)
    if max_channels is not None and max_channels <= 0:
        raise KerascopeError(f"scorecam.max_channels must be positive, got {max_channels}")
    acts = _layer_activations(model, x, layer, batch_size)
    n, channels = len(x), acts.shape[-1]
    keep = channels if max_channels is None else min(max_channels, channels)
    spatial_axes = tuple(range(1, acts.ndim - 1))
    order = np.argsort(-acts.mean(axis=spatial_axes), axis=1)[:, :keep]
    weights = np.zeros((n, channels), np.float32)
    per_step = max(1, batch_size // keep)
    for a, b in batches(n, per_step):
        # (inputs, ..., keep) -> (inputs * keep, ...): every kept channel of every input.
        index = order[a:b].reshape((b - a,) + (1,) * len(spatial_axes) + (keep,))
        chosen = np.take_along_axis(acts[a:b], index, axis=-1)
        chosen = np.moveaxis(chosen, -1, 1).reshape(((b - a) * keep,) + acts.shape[1:-1])
        masks = upsample(chosen, x.shape[1:])
        flat = masks.reshape(len(masks), -1)
        lo, hi = flat.min(axis=1), flat.max(axis=1)
        shape = (len(masks),) + (1,) * (masks.ndim - 1)
        masks = (masks - lo.reshape(shape)) / np.where(hi > lo, hi - lo, 1.0).reshape(shape)
        masked = np.repeat(x[a:b], keep, axis=0) * masks[..., None]
        probs = _probabilities(
            model, masked.astype(np.float32), np.repeat(targets[a:b], keep), batch_size
        ).reshape(b - a, keep)
        soft = np.exp(probs - probs.max(axis=1, keepdims=True))
        np.put_along_axis(weights[a:b], order[a:b], soft / soft.sum(axis=1, keepdims=True), axis=1)
    raw = _combine(acts, weights)
    return CamResult(raw, upsample(raw, x.shape[1:]), layer)
