"""Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018)."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.scores import (
    check_targets,
    compile_step,
    forward,
    run_batched,
    spec,
    target_score,
)
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


def check_cam_shapes(model: keras.Model, layer: str, input_shape: tuple) -> None:
    """Raise a one-line error if ``layer``'s map cannot be laid over the input.

    2-D maps (h, w) go over images; 1-D maps over time (T) go over sequences, or over
    the rows of an image (for models that read image rows as time steps).
    """
    shape = layer_info(model, layer).output_shape
    if shape is None or len(shape) not in (2, 3):
        raise KerascopeError(
            f"layer '{layer}' has output shape {shape}; class activation maps need a "
            "(time, channels) or (height, width, channels) output"
        )
    if len(shape) == 3 and len(input_shape) != 3:
        raise KerascopeError(
            f"layer '{layer}' has a 2-D output {shape} but the inputs are sequences "
            f"{tuple(input_shape)}; choose a layer with a time axis"
        )


def upsample_tf(raw, input_shape: tuple):
    """Resize raw maps to the input's size with bilinear interpolation (graph op).

    Temporal maps (n, T) over an image input are stretched along the rows and repeated
    across the columns.
    """
    if len(input_shape) == 3:
        height, width = input_shape[:2]
        if raw.shape.rank == 3:
            return tf.image.resize(raw[..., None], (height, width))[..., 0]
        rows = tf.image.resize(raw[:, :, None, None], (height, 1))[..., 0]
        return tf.repeat(rows, width, axis=2)
    return tf.image.resize(raw[:, :, None, None], (input_shape[0], 1))[:, :, 0, 0]


def upsample(raw: np.ndarray, input_shape: tuple) -> np.ndarray:
    """NumPy front end of :func:`upsample_tf`, for maps computed elsewhere."""
    if len(input_shape) != 3 and raw.ndim != 2:
        raise KerascopeError("a 2-D class activation map cannot be laid over a sequence input")
    return upsample_tf(tf.constant(raw, tf.float32), tuple(input_shape)).numpy()


def combine(acts, weights):
    """ReLU of the channel-weighted sum of activations: (n, ..., K) x (n, K) -> (n, ...)."""
    shape = tf.concat([tf.shape(weights)[:1], tf.ones(acts.shape.rank - 2, tf.int32), [-1]], 0)
    return tf.nn.relu(tf.reduce_sum(acts * tf.reshape(weights, shape), axis=-1))


def _cam_weights(variant: str, acts, grads):
    """Channel weights of Grad-CAM or Grad-CAM++ from activations and their gradients."""
    axes = list(range(1, acts.shape.rank - 1))
    if variant == "gradcam":
        # Selvaraju et al. eq. 1: global-average-pooled gradients.
        return tf.reduce_mean(grads, axis=axes)
    # Chattopadhay et al. eq. 19, closed form for an exponential score:
    # alpha = g^2 / (2 g^2 + sum(A) g^3), weights = sum(alpha * relu(g)).
    g2, g3 = grads**2, grads**3
    denominator = 2.0 * g2 + tf.reduce_sum(acts, axis=axes, keepdims=True) * g3
    alphas = tf.math.divide_no_nan(g2, denominator)
    return tf.reduce_sum(alphas * tf.nn.relu(grads), axis=axes)


def _cam_step(model, layer, score, input_shape, variant):
    def build():
        fwd = forward(model, score, [layer])

        def step(batch, target):
            with tf.GradientTape() as tape:
                outputs, taps = fwd(batch)
                value = target_score(outputs, target)
            acts = taps[layer]
            grads = tape.gradient(value, acts)
            raw = combine(acts, _cam_weights(variant, acts, grads))
            return raw, upsample_tf(raw, input_shape)

        return step

    return compile_step(
        model,
        (variant, layer, score, input_shape),
        build,
        [spec(input_shape), spec((), tf.int32)],
    )


def _cam(variant, model, x, targets, layer, score, batch_size) -> CamResult:
    targets = check_targets(model, targets, len(x), x)
    layer = cam_layer(model, layer)
    x = np.asarray(x, np.float32)
    check_cam_shapes(model, layer, x.shape[1:])
    fn = _cam_step(model, layer, score, x.shape[1:], variant)
    raw, maps = run_batched(fn, [x, targets], batch_size)
    return CamResult(raw, maps, layer)


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
        targets: One class per input (or one for all); None: the predicted class.
        layer: Layer path; default: the last layer with a spatial (or time) output.
        score: ``logits`` (default) or ``probabilities``.
        batch_size: Inputs per compiled step.

    Returns:
        :class:`CamResult` with raw and upsampled maps.
    """
    return _cam("gradcam", model, x, targets, layer, score, batch_size)


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
    return _cam("gradcam_plus_plus", model, x, targets, layer, score, batch_size)
