"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.scores import batches, check_targets, compiled, forward, target_score
from pipeline.errors import KerascopeError
from pipeline.graph import is_spatial, last_spatial_layer, layer_info


@dataclass
class CamResult:
    """A class activation map at the layer's resolution and at the input's.

    Attributes:
        raw: (N, h, w) for 2-D layers or (N, T) for temporal layers.
        maps: Upsampled to the input: (N, H, W) for images, (N, T) for sequences.
        layer: The layer path used.
    """

    raw: np.ndarray
    maps: np.ndarray
    layer: str


def cam_layer(model: keras.Model, layer: str | None) -> str:
    """Resolve the CAM layer: the given one (checked) or the last spatial one.

    Raises:
        KerascopeError: Unknown layer, or one without a spatial or time axis.
    """
    if layer is None:
        return last_spatial_layer(model)
    info = layer_info(model, layer)
    if not is_spatial(info):
        raise KerascopeError(
            f"layer '{layer}' has output shape {info.output_shape}, with no spatial or time "
            f"axis for a class activation map; use a conv or recurrent layer such as "
            f"'{last_spatial_layer(model)}'"
        )
    return layer


def layer_and_gradients(model, x, targets, layer, score, batch_size, powers=1):
    """Activations A of ``layer`` and d score / d A for every input, in one compiled step."""

    def build():
        fwd = forward(model, score, [layer])

        @tf.function(reduce_retracing=True)
        def step(batch, target):
            with tf.GradientTape() as tape:
                outputs, taps = fwd(batch)
                value = target_score(outputs, target)
            acts = taps[layer]
            return acts, tape.gradient(value, acts), value

        return step

    fn = compiled(model, ("layer_gradients", layer, score), build)
    acts, grads, values = [], [], []
    for a, b in batches(len(x), batch_size):
        act, grad, value = fn(tf.convert_to_tensor(x[a:b], tf.float32), tf.constant(targets[a:b]))
        acts.append(act.numpy())
        grads.append(grad.numpy())
        values.append(value.numpy())
    return np.concatenate(acts), np.concatenate(grads), np.concatenate(values)


def upsample(raw: np.ndarray, input_shape: tuple) -> np.ndarray:
    """Resize raw maps to the input's spatial size with bilinear interpolation.

    Temporal maps (N, T) over an image input are stretched along the rows and repeated
    across the columns (for models that read image rows as time steps).
    """
    if len(input_shape) == 3:
        height, width = input_shape[:2]
        grid = raw if raw.ndim == 3 else raw[:, :, None]
        resized = tf.image.resize(
            grid[..., None], (height, grid.shape[2] if raw.ndim == 2 else width)
        )
        resized = resized.numpy()[..., 0]
        return np.repeat(resized, width, axis=2) if raw.ndim == 2 else resized
    steps = input_shape[0]
    if raw.ndim != 2:
        raise KerascopeError("a 2-D class activation map cannot be laid over a sequence input")
    return tf.image.resize(raw[:, :, None, None], (steps, 1)).numpy()[:, :, 0, 0]


def _combine(acts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ReLU of the channel-weighted sum of activations: (N, ..., K) x (N, K) -> (N, ...)."""
    shape = (len(weights),) + (1,) * (acts.ndim - 2) + (weights.shape[-1],)
    return np.maximum((acts * weights.reshape(shape)).sum(axis=-1), 0.0)


def gradcam(
    model: keras.Model,
    x: np.ndarray,
    targets,
    *,
    layer: str | None = None,
    score: str = "logits",
    batch_size: int = 64,
) -> CamResult:
    """Grad-CAM: activations weighted by their spatially averaged gradients, then ReLU.

    Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra (2017), "Grad-CAM: Visual
    Explanations from Deep Networks via Gradient-based Localization".

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C) or sequences (N, T, F).
        targets: One class per input.
        layer: Layer path; default: the last layer with a spatial (or time) output.
        score: ``logits`` (default) or ``probabilities``.
        batch_size: Inputs per compiled step.

    Returns:
        :class:`CamResult` with raw and upsampled maps.
    """
    targets = check_targets(model, targets, len(x))
    layer = cam_layer(model, layer)
    acts, grads, _ = layer_and_gradients(model, x, targets, layer, score, batch_size)
    axes = tuple(range(1, acts.ndim - 1))
    weights = grads.mean(axis=axes)
    raw = _combine(acts, weights)
    return CamResult(raw, upsample(raw, x.shape[1:]), layer)


def gradcam_plus_plus(
    model: keras.Model,
    x: np.ndarray,
    targets,
    *,
    layer: str | None = None,
    score: str = "logits",
    batch_size: int = 64,
) -> CamResult:
    """Grad-CAM++: pixel-wise weighting of positive gradients.

    Chattopadhay, Sarkar, Howlader & Balasubramanian (2018), "Grad-CAM++: Generalized
    Gradient-Based Visual Explanations for Deep Convolutional Networks". Uses the paper's
    closed form for an exponential output, alpha = g^2 / (2 g^2 + sum(A) g^3).

    Args and returns as :func:`gradcam`.
    """
    targets = check_targets(model, targets, len(x))
    layer = cam_layer(model, layer)
    acts, grads, _ = layer_and_gradients(model, x, targets, layer, score, batch_size)
    axes = tuple(range(1, acts.ndim - 1))
    g2, g3 = grads**2, grads**3
    summed = acts.sum(axis=axes, keepdims=True)
    denominator = 2.0 * g2 + summed * g3
    alphas = g2 / np.where(denominator != 0.0, denominator, 1.0)
    weights = (alphas * np.maximum(grads, 0.0)).sum(axis=axes)
    raw = _combine(acts, weights)
    return CamResult(raw, upsample(raw, x.shape[1:]), layer)
