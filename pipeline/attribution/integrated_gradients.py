"""Integrated Gradients (Sundararajan, Taly & Yan 2017).

From "Axiomatic Attribution for Deep Networks".
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.saliency import input_gradients
from pipeline.attribution.scores import check_targets, compiled, forward, is_image, target_score
from pipeline.errors import KerascopeError

BASELINES = ("zeros", "blur", "uniform")


@dataclass
class IntegratedGradients:
    """Integrated Gradients of a batch.

    Attributes:
        attributions: Per-feature attributions, shape of the inputs (signed).
        maps: Attributions summed over channels (images) or as they are (sequences).
        completeness_error: Per input, sum(attributions) - (score(x) - score(baseline)).
        score_difference: Per input, score(x) - score(baseline).
    """

    attributions: np.ndarray
    maps: np.ndarray
    completeness_error: np.ndarray
    score_difference: np.ndarray


def make_baseline(
    x: np.ndarray, kind: str = "zeros", seed: int = 0, sigma: float = 3.0
) -> np.ndarray:
    """The reference input: all zeros, a heavily blurred copy, or uniform noise.

    Args:
        x: Inputs.
        kind: ``zeros``, ``blur`` (Gaussian blur with ``sigma`` pixels over the spatial
            or time axes) or ``uniform`` (noise over each input's value range).
        seed: Seed for ``uniform``.
        sigma: Blur width in pixels.
    """
    if kind == "zeros":
        return np.zeros_like(x)
    if kind == "blur":
        from scipy.ndimage import gaussian_filter

        spatial = (0, sigma, sigma, 0) if x.ndim == 4 else (0, sigma, 0)
        return gaussian_filter(x, sigma=spatial, mode="nearest").astype(x.dtype)
    if kind == "uniform":
        rng = np.random.default_rng(seed)
        axes = tuple(range(1, x.ndim))
        lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
        return (lo + rng.random(x.shape) * (hi - lo)).astype(x.dtype)
    raise KerascopeError(f"invalid baseline '{kind}'; valid: {', '.join(BASELINES)}")


def _scores(model, x, targets, score):
    def build():
        fwd = forward(model, score)
        return tf.function(lambda b, t: target_score(fwd(b)[0], t), reduce_retracing=True)

    fn = compiled(model, ("scores", score), build)
    return fn(tf.convert_to_tensor(x, tf.float32), tf.constant(targets)).numpy()


def integrated_gradients(
    model: keras.Model,
    x: np.ndarray,
    targets,
    *,
    score: str = "logits",
    baseline: str = "zeros",
    steps: int = 32,
    seed: int = 0,
    batch_size: int = 128,
) -> IntegratedGradients:
    """Integrated Gradients along the straight path from a baseline to each input.

    The path integral is approximated with the trapezoidal rule over ``steps``
    intervals; all path points of a batch go through one compiled gradient step.

    Args:
        model: A classifier.
        x: Inputs.
        targets: One class per input.
        score: ``logits`` or ``probabilities``.
        baseline: ``zeros``, ``blur`` or ``uniform`` (see :func:`make_baseline`).
        steps: Number of intervals on the path (more steps, smaller completeness error).
        seed: Seed for the ``uniform`` baseline.
        batch_size: Path points per compiled step.

    Returns:
        :class:`IntegratedGradients` with the completeness error per input.
    """
    if steps <= 0:
        raise KerascopeError(f"integrated_gradients.steps must be positive, got {steps}")
    targets = check_targets(model, targets, len(x))
    base = make_baseline(x, baseline, seed)
    alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
    weights = np.full(steps + 1, 1.0 / steps, dtype=np.float32)
    weights[[0, -1]] *= 0.5  # trapezoidal rule
    attributions = np.zeros_like(x, dtype=np.float32)
    per_step = max(1, batch_size // (steps + 1))
    for a in range(0, len(x), per_step):
        b = min(a + per_step, len(x))
        delta = x[a:b] - base[a:b]
        path = base[a:b][:, None] + alphas[None, :, *([None] * (x.ndim - 1))] * delta[:, None]
        flat = path.reshape(-1, *x.shape[1:])
        grads = input_gradients(model, flat, np.repeat(targets[a:b], steps + 1), score, len(flat))
        grads = grads.reshape(b - a, steps + 1, *x.shape[1:])
        avg = np.tensordot(weights, np.moveaxis(grads, 1, 0), axes=1)
        attributions[a:b] = avg * delta
    difference = _scores(model, x, targets, score) - _scores(model, base, targets, score)
    total = attributions.reshape(len(x), -1).sum(axis=1)
    maps = attributions.sum(axis=-1) if is_image(x) else attributions
    return IntegratedGradients(attributions, maps, total - difference, difference)
