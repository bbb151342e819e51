"""Integrated Gradients (Sundararajan, Taly & Yan 2017).

From "Axiomatic Attribution for Deep Networks".
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.gradients import gradient_step
from pipeline.attribution.scores import check_targets, compile_step, is_image, run_batched, spec
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


def _ig_step(model: keras.Model, shape: tuple, score: str, steps: int):
    """Compiled ``(batch, baseline, targets) -> (attributions, score(x) - score(baseline))``.

    Every path point of the batch goes through one gradient pass; the path integral is
    the trapezoidal rule over ``steps`` intervals, so the end points come for free.
    """

    def build():
        grad = gradient_step(model, shape, score)
        expand = (1,) * len(shape)
        alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32).reshape(1, -1, *expand)
        weights = np.full(steps + 1, 1.0 / steps, dtype=np.float32)
        weights[[0, -1]] *= 0.5  # trapezoidal rule
        weights = weights.reshape(1, -1, *expand)

        def step(batch, base, target):
            delta = batch - base
            path = base[:, None] + alphas * delta[:, None]
            grads, values = grad(tf.reshape(path, (-1, *shape)), tf.repeat(target, steps + 1))
            grads = tf.reshape(grads, (-1, steps + 1, *shape))
            values = tf.reshape(values, (-1, steps + 1))
            avg = tf.reduce_sum(grads * weights, axis=1)
            return avg * delta, values[:, -1] - values[:, 0]

        return step

    return compile_step(
        model,
        ("integrated_gradients", score, shape, steps),
        build,
        [spec(shape), spec(shape), spec((), tf.int32)],
    )


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

    Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep Networks". The path
    integral is approximated with the trapezoidal rule over ``steps`` intervals; all
    path points of a batch go through one compiled gradient step.

    Args:
        model: A classifier.
        x: Inputs.
        targets: One class per input (or one for all); None: the predicted class.
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
    targets = check_targets(model, targets, len(x), x)
    x = np.asarray(x, np.float32)
    base = make_baseline(x, baseline, seed)
    fn = _ig_step(model, x.shape[1:], score, steps)
    attributions, difference = run_batched(
        fn, [x, base, targets], max(1, batch_size // (steps + 1))
    )
    total = attributions.reshape(len(x), -1).sum(axis=1)
    maps = attributions.sum(axis=-1) if is_image(x) else attributions
    return IntegratedGradients(attributions, maps, total - difference, difference)
