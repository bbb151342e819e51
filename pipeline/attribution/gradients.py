"""Gradient saliency (Simonyan et al. 2013) and SmoothGrad (Smilkov et al. 2017)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.batching import compile_step, run_batched, spec
from pipeline.attribution.options import resolve
from pipeline.attribution.result import Attribution, is_image, reduce_channels
from pipeline.attribution.scoring import check_targets, gradient_step


def input_gradients(
    model: keras.Model, x: np.ndarray, targets, score: str = "logits", batch_size: int = 64
) -> np.ndarray:
    """Gradient d score[target] / d input for every input, batch by batch in one compiled step.

    Returns:
        Gradients with the shape of ``x``.
    """
    targets = check_targets(model, targets, len(x), x)
    x = np.asarray(x, np.float32)
    fn = gradient_step(model, x.shape[1:], score)
    return run_batched(fn, [x, targets], batch_size)[0]


def saliency(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """Vanilla gradient saliency: |d score / d input|, reduced over channels.

    Simonyan, Vedaldi & Zisserman (2013), "Deep Inside Convolutional Networks:
    Visualising Image Classification Models and Saliency Maps".

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C) or sequences (N, T, F).
        targets: One class per input (or one for all); None: the predicted class.
        **options: :class:`~pipeline.attribution.options.SaliencyOptions` (``reduce``:
            ``max`` or ``mean`` over channels), ``score`` (``logits``, the default, or
            ``probabilities``) and ``batch_size`` (inputs per compiled step).

    Returns:
        :class:`Attribution` with maps (N, H, W) for images, (N, T, F) for sequences.
    """
    opts, common = resolve("saliency", options)
    grads = np.abs(input_gradients(model, x, targets, common["score"], common["batch_size"]))
    return Attribution(reduce_channels(grads, opts.reduce, is_image(np.asarray(x))))


def _smoothgrad_step(model: keras.Model, shape: tuple, score: str, samples: int):
    """Compiled ``(batch, targets, noise) -> mean |gradient|`` over ``samples`` noisy copies."""

    def build():
        grad = gradient_step(model, shape, score)

        def step(batch, target, noise):
            # (b, S, ...) -> (b * S, ...): all noisy copies of a batch in one gradient pass.
            noisy = tf.reshape(batch[:, None] + noise, (-1, *shape))
            grads, _ = grad(noisy, tf.repeat(target, samples))
            return tf.reduce_mean(tf.reshape(tf.abs(grads), (-1, samples, *shape)), axis=1)

        return step

    return compile_step(
        model,
        ("smoothgrad", score, shape, samples),
        build,
        [spec(shape), spec((), tf.int32), spec((samples, *shape))],
    )


def smoothgrad(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """SmoothGrad: the saliency map averaged over noisy copies of each input.

    Smilkov, Thorat, Kim, Viégas & Wattenberg (2017), "SmoothGrad: removing noise by
    adding noise". The noise is Gaussian with standard deviation ``noise`` times each
    input's value range (max - min), as in the paper.

    Args:
        model: A classifier.
        x: Inputs.
        targets: One class per input (or one for all); None: the predicted class.
        **options: :class:`~pipeline.attribution.options.SmoothGradOptions` (``noise``,
            ``samples``, ``reduce``), ``score``, ``seed`` (input ``i`` always gets the
            same noise, whatever the batch size) and ``batch_size`` (noisy inputs per
            compiled step).

    Returns:
        :class:`Attribution` with maps shaped as :func:`saliency`'s.
    """
    opts, common = resolve("smoothgrad", options)
    noise, samples, seed = opts.noise, opts.samples, common["seed"]
    targets = check_targets(model, targets, len(x), x)
    x = np.asarray(x, np.float32)
    axes = tuple(range(1, x.ndim))
    span = (x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True)).astype(np.float32)

    def noise_of(a: int, b: int) -> tuple[np.ndarray]:
        # One generator per input: its noise does not depend on how inputs are batched.
        eps = np.stack(
            [
                np.random.default_rng([seed, i]).standard_normal((samples, *x.shape[1:]))
                for i in range(a, b)
            ]
        ).astype(np.float32)
        return (eps * (span[a:b] * noise)[:, None],)

    fn = _smoothgrad_step(model, x.shape[1:], common["score"], samples)
    per_step = max(1, common["batch_size"] // samples)
    total = run_batched(fn, [x, targets], per_step, per_batch=noise_of)
    return Attribution(reduce_channels(total, opts.reduce, is_image(x)))
