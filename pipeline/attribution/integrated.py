"""Integrated Gradients (Sundararajan, Taly & Yan 2017).

From "Axiomatic Attribution for Deep Networks".
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.batching import compile_step, gradient_rows, run_batched, spec
from pipeline.attribution.options import BASELINES, resolve
from pipeline.attribution.result import (
    Attribution,
    has_channels,
    over_channels,
    spatial_sigmas,
)
from pipeline.attribution.scoring import check_targets, gradient_step
from pipeline.errors import KerascopeError


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

        return gaussian_filter(x, sigma=spatial_sigmas(x.ndim, sigma), mode="nearest").astype(
            x.dtype
        )
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


def integrated_gradients(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """Integrated Gradients along the straight path from a baseline to each input.

    Sundararajan, Taly & Yan (2017), "Axiomatic Attribution for Deep Networks". The path
    integral is approximated with the trapezoidal rule over ``steps`` intervals; all
    path points of a batch go through one compiled gradient step.

    Args:
        model: A classifier.
        x: Inputs.
        targets: One class per input (or one for all); None: the predicted class.
        **options: :class:`~pipeline.attribution.options.IntegratedGradientsOptions`
            (``baseline``: zeros, blur or uniform, see :func:`make_baseline`; ``steps``:
            intervals on the path, more give a smaller completeness error), ``score``,
            ``seed`` (of the uniform baseline) and ``batch_size`` (path points per step).

    Returns:
        :class:`Attribution` with maps (signed attributions summed over channels for
        images) and extras ``attributions`` (input-shaped), ``completeness_error``
        (per input, sum(attributions) - (score(x) - score(baseline))) and
        ``score_difference`` (score(x) - score(baseline)).
    """
    opts, common = resolve("integrated_gradients", options)
    steps = opts.steps
    targets = check_targets(model, targets, len(x), x)
    x = np.asarray(x, np.float32)
    base = make_baseline(x, opts.baseline, common["seed"])
    fn = _ig_step(model, x.shape[1:], common["score"], steps)
    rows = gradient_rows(model, x.shape[1:], common["batch_size"])
    per_step = max(1, rows // (steps + 1))
    attributions, difference = run_batched(fn, [x, base, targets], per_step)
    total = attributions.reshape(len(x), -1).sum(axis=1)
    maps = over_channels(attributions) if has_channels(x) else attributions
    return Attribution(
        maps,
        extras={
            "attributions": attributions,
            "completeness_error": total - difference,
            "score_difference": difference,
        },
    )
