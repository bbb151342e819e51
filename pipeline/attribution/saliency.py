"""Gradient saliency (Simonyan et al. 2013) and SmoothGrad (Smilkov et al. 2017)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.scores import (
    batches,
    check_targets,
    compiled,
    forward,
    is_image,
    reduce_channels,
    target_score,
)
from pipeline.errors import KerascopeError


def input_gradients(
    model: keras.Model, x: np.ndarray, targets, score: str = "logits", batch_size: int = 64
) -> np.ndarray:
    """Gradient d score[target] / d input for every input, batch by batch in one compiled step.

    Returns:
        Gradients with the shape of ``x``.
    """
    targets = check_targets(model, targets, len(x))

    def build():
        fwd = forward(model, score)

        @tf.function(reduce_retracing=True)
        def grad(batch, target):
            with tf.GradientTape() as tape:
                tape.watch(batch)
                outputs, _ = fwd(batch)
                value = target_score(outputs, target)
            return tape.gradient(value, batch)

        return grad

    fn = compiled(model, ("input_gradients", score), build)
    out = [
        fn(tf.convert_to_tensor(x[a:b], tf.float32), tf.constant(targets[a:b])).numpy()
        for a, b in batches(len(x), batch_size)
    ]
    return np.concatenate(out)


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
        targets: One class per input.
        score: ``logits`` (default) or ``probabilities``.
        reduce: ``max`` or ``mean`` over channels.
        batch_size: Inputs per compiled step.

    Returns:
        Maps (N, H, W) for images, (N, T, F) for sequences.
    """
    grads = np.abs(input_gradients(model, x, targets, score, batch_size))
    return reduce_channels(grads, reduce, is_image(x))


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
        targets: One class per input.
        score: ``logits`` or ``probabilities``.
        noise: Noise level as a fraction of the input's value range.
        samples: Noisy copies per input.
        reduce: ``max`` or ``mean`` over channels.
        seed: Seed of the noise.
        batch_size: Noisy inputs per compiled step.

    Returns:
        Maps with the shape of :func:`saliency`'s.
    """
    if samples <= 0 or noise < 0:
        raise KerascopeError(f"smoothgrad needs samples > 0 and noise >= 0, got {samples}, {noise}")
    targets = check_targets(model, targets, len(x))
    rng = np.random.default_rng(seed)
    axes = tuple(range(1, x.ndim))
    span = (x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True)).astype(np.float32)
    total = np.zeros_like(x, dtype=np.float32)
    # Tile each input `samples` times so one compiled step handles many noisy copies.
    per_step = max(1, batch_size // samples)
    for a, b in batches(len(x), per_step):
        chunk = np.repeat(x[a:b], samples, axis=0)
        sigma = np.repeat(span[a:b], samples, axis=0) * noise
        noisy = chunk + rng.standard_normal(chunk.shape).astype(np.float32) * sigma
        grads = np.abs(
            input_gradients(model, noisy, np.repeat(targets[a:b], samples), score, len(noisy))
        )
        total[a:b] = grads.reshape(b - a, samples, *x.shape[1:]).mean(axis=1)
    return reduce_channels(total, reduce, is_image(x))
