"""Gradient saliency (Simonyan et al. 2013) and SmoothGrad (Smilkov et al. 2017)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.scores import (
    check_reduce,
    check_targets,
    compile_step,
    forward,
    is_image,
    reduce_channels,
    run_batched,
    spec,
    target_score,
)
from pipeline.errors import KerascopeError


def gradient_step(model: keras.Model, shape: tuple, score: str):
    """The compiled ``(batch, targets) -> (d score / d batch, score)`` step for ``model``."""

    def build():
        fwd = forward(model, score)

        def step(batch, target):
            with tf.GradientTape() as tape:
                tape.watch(batch)
                value = target_score(fwd(batch)[0], target)
            return tape.gradient(value, batch), value

        return step

    return compile_step(
        model, ("input_gradients", score, shape), build, [spec(shape), spec((), tf.int32)]
    )


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


def saliency(
    model: keras.Model,
    x: np.ndarray,
    targets,
    *,
    score: str = "logits",
    reduce: str = "max",
    batch_size: int = 64,
) -> np.ndarray:
    """Vanilla gradient saliency: |d score / d input|, reduced over channels.

    Simonyan, Vedaldi & Zisserman (2013), "Deep Inside Convolutional Networks:
    Visualising Image Classification Models and Saliency Maps".

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C) or sequences (N, T, F).
        targets: One class per input (or one for all); None: the predicted class.
        score: ``logits`` (default) or ``probabilities``.
        reduce: ``max`` or ``mean`` over channels.
        batch_size: Inputs per compiled step.

    Returns:
        Maps (N, H, W) for images, (N, T, F) for sequences.
    """
    check_reduce(reduce)
    grads = np.abs(input_gradients(model, x, targets, score, batch_size))
    return reduce_channels(grads, reduce, is_image(x))


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


def smoothgrad(
    model: keras.Model,
    x: np.ndarray,
    targets,
    *,
    score: str = "logits",
    noise: float = 0.15,
    samples: int = 16,
    reduce: str = "max",
    seed: int = 0,
    batch_size: int = 64,
) -> np.ndarray:
    """SmoothGrad: the saliency map averaged over noisy copies of each input.

    Smilkov, Thorat, Kim, Viégas & Wattenberg (2017), "SmoothGrad: removing noise by
    adding noise". The noise is Gaussian with standard deviation ``noise`` times each
    input's value range (max - min), as in the paper.

    Args:
        model: A classifier.
        x: Inputs.
        targets: One class per input (or one for all); None: the predicted class.
        score: ``logits`` or ``probabilities``.
        noise: Noise level as a fraction of the input's value range.
        samples: Noisy copies per input.
        reduce: ``max`` or ``mean`` over channels.
        seed: Seed of the noise. Input ``i`` always gets the same noise, whatever the
            batch size.
        batch_size: Noisy inputs per compiled step.

    Returns:
        Maps with the shape of :func:`saliency`'s.
    """
    if samples <= 0 or noise < 0:
        raise KerascopeError(f"smoothgrad needs samples > 0 and noise >= 0, got {samples}, {noise}")
    check_reduce(reduce)
    targets = check_targets(model, targets, len(x), x)
    x = np.asarray(x, np.float32)
    axes = tuple(range(1, x.ndim))
    span = (x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True)).astype(np.float32)
    fn = _smoothgrad_step(model, x.shape[1:], score, samples)
    per_step = max(1, batch_size // samples)
    out = []
    for a in range(0, len(x), per_step):
        b = min(a + per_step, len(x))
        # One generator per input: its noise does not depend on how inputs are batched.
        eps = np.stack(
            [
                np.random.default_rng([seed, i]).standard_normal((samples, *x.shape[1:]))
                for i in range(a, b)
            ]
        ).astype(np.float32)
        sigma = (span[a:b] * noise)[:, None]
        out.append(fn(tf.constant(x[a:b]), tf.constant(targets[a:b]), tf.constant(eps * sigma)))
    total = np.concatenate([o.numpy() for o in out])
    return reduce_channels(total, reduce, is_image(x))
