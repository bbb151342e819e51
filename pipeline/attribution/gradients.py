"""Plain and noisy input gradients.

Saliency (Simonyan et al. 2013), SmoothGrad (Smilkov et al. 2017), VarGrad (Adebayo et
al. 2018), SquareGrad (Hooker et al. 2019) and Gradient x Input (Shrikumar et al. 2016).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.batching import compile_step, gradient_rows, run_batched, spec
from pipeline.attribution.options import resolve
from pipeline.attribution.result import (
    Attribution,
    has_channels,
    over_channels,
    reduce_channels,
)
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
    return run_batched(fn, [x, targets], gradient_rows(model, x.shape[1:], batch_size))[0]


def saliency(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """Vanilla gradient saliency: |d score / d input|, reduced over channels.

    Simonyan, Vedaldi & Zisserman (2013), "Deep Inside Convolutional Networks:
    Visualising Image Classification Models and Saliency Maps".

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C), volumes (N, D, H, W, C) or sequences (N, T, F).
        targets: One class per input (or one for all); None: the predicted class.
        **options: :class:`~pipeline.attribution.options.SaliencyOptions` (``reduce``:
            ``max`` or ``mean`` over channels), ``score`` (``logits``, the default, or
            ``probabilities``) and ``batch_size`` (inputs per compiled step).

    Returns:
        :class:`Attribution` with maps (N, H, W) for images, (N, D, H, W) for volumes,
        (N, T, F) for sequences.
    """
    opts, common = resolve("saliency", options)
    grads = np.abs(input_gradients(model, x, targets, common["score"], common["batch_size"]))
    return Attribution(reduce_channels(grads, opts.reduce, has_channels(np.asarray(x))))


def _noisy_gradient_step(
    model: keras.Model, shape: tuple, score: str, samples: int, noise: float, seed: int
):
    """Compiled ``(batch, targets, index) -> statistics`` of the gradients of noisy copies.

    One gradient pass over all ``samples`` noisy copies of a batch yields SmoothGrad's
    mean |gradient|, SquareGrad's mean squared gradient and VarGrad's variance together.
    The noise is drawn inside the step (see :func:`smoothgrad_noise`): drawn on the host
    it cost a quarter of a call and a copy of every noisy input into the graph.
    """

    def build():
        grad = gradient_step(model, shape, score)
        axes = list(range(1, len(shape) + 1))
        expand = (-1,) + (1,) * (len(shape) + 1)

        def step(batch, target, index):
            span = tf.reduce_max(batch, axis=axes) - tf.reduce_min(batch, axis=axes)
            eps = smoothgrad_noise(index, shape, samples, seed)
            noisy = batch[:, None] + eps * tf.reshape(span * noise, expand)
            # (b, S, ...) -> (b * S, ...): all noisy copies of a batch in one gradient pass.
            grads, _ = grad(tf.reshape(noisy, (-1, *shape)), tf.repeat(target, samples))
            grads = tf.reshape(grads, (-1, samples, *shape))
            mean = tf.reduce_mean(grads, axis=1, keepdims=True)
            return (
                tf.reduce_mean(tf.abs(grads), axis=1),
                tf.reduce_mean(tf.square(grads), axis=1),
                # Centred before squaring: E[g^2] - E[g]^2 would cancel catastrophically.
                tf.reduce_mean(tf.square(grads - mean), axis=1),
            )

        return step

    return compile_step(
        model,
        ("noisy_gradients", score, shape, samples, float(noise), int(seed)),
        build,
        [spec(shape), spec((), tf.int32), spec((), tf.int64)],
    )


def smoothgrad_noise(index, shape: tuple, samples: int, seed: int) -> tf.Tensor:
    """Standard normal noise for SmoothGrad's copies, keyed by each input's position.

    Input ``i`` gets ``tf.random.stateless_normal((samples, *shape), seed=[seed, i])``
    (Philox, the same on every device), so its noise does not depend on how the inputs
    are batched or split across replicas. Callers scale it by ``noise`` times each
    input's value range (max - min), as in the paper.

    Args:
        index: Positions of the inputs, (b,) int64.
        shape: Shape of one input.
        samples: Noisy copies per input.
        seed: The run's seed.

    Returns:
        (b, samples, *shape) float32 noise.
    """
    key = tf.constant(int(seed), tf.int64)
    return tf.map_fn(
        lambda i: tf.random.stateless_normal((samples, *shape), seed=tf.stack([key, i])),
        tf.cast(index, tf.int64),
        fn_output_signature=tf.float32,
    )


def _noisy_gradients(method: str, model: keras.Model, x, targets, options: dict):
    """Run a noisy-gradient method: its options, the float inputs and the statistics.

    Returns:
        (options, x, {"abs": mean |g|, "square": mean g^2, "variance": Var g}).
    """
    opts, common = resolve(method, options)
    targets = check_targets(model, targets, len(x), x)
    x = np.asarray(x, np.float32)
    fn = _noisy_gradient_step(
        model, x.shape[1:], common["score"], opts.samples, opts.noise, common["seed"]
    )
    rows = gradient_rows(model, x.shape[1:], common["batch_size"])
    per_step = max(1, rows // opts.samples)
    index = np.arange(len(x), dtype=np.int64)
    stats = run_batched(fn, [x, targets, index], per_step)
    return opts, x, dict(zip(("abs", "square", "variance"), stats, strict=True))


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
    opts, x, stats = _noisy_gradients("smoothgrad", model, x, targets, options)
    return Attribution(reduce_channels(stats["abs"], opts.reduce, has_channels(x)))


def vargrad(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """VarGrad: the variance of the gradient over SmoothGrad's noisy copies.

    Adebayo, Gilmer, Goodfellow & Kim (2018), "Local Explanation Methods for Deep
    Neural Networks Lack Sensitivity to Parameter Values". The population variance
    (divided by ``samples``) of each gradient entry, then reduced over channels. The
    noise is SmoothGrad's: the same seed gives the same noisy copies.

    Args:
        model: A classifier.
        x: Inputs.
        targets: One class per input (or one for all); None: the predicted class.
        **options: :class:`~pipeline.attribution.options.VarGradOptions` (``noise``,
            ``samples``, ``reduce``), ``score``, ``seed`` and ``batch_size``, as
            :func:`smoothgrad`.

    Returns:
        :class:`Attribution` with maps shaped as :func:`saliency`'s.
    """
    opts, x, stats = _noisy_gradients("vargrad", model, x, targets, options)
    return Attribution(reduce_channels(stats["variance"], opts.reduce, has_channels(x)))


def squaregrad(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """SquareGrad (SmoothGrad-Squared): the mean squared gradient over noisy copies.

    Hooker, Erhan, Kindermans & Kim (2019), "A Benchmark for Interpretability Methods
    in Deep Neural Networks". The noise is SmoothGrad's: the same seed gives the same
    noisy copies.

    Args and returns as :func:`vargrad` (options
    :class:`~pipeline.attribution.options.SquareGradOptions`).
    """
    opts, x, stats = _noisy_gradients("squaregrad", model, x, targets, options)
    return Attribution(reduce_channels(stats["square"], opts.reduce, has_channels(x)))


def gradient_x_input(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """Gradient x Input: the gradient times the input, signed.

    Shrikumar, Greenside, Shcherbina & Kundaje (2016), "Not Just a Black Box: Learning
    Important Features Through Propagating Activation Differences". For a linear score
    it is each feature's exact contribution, w * x.

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C), volumes (N, D, H, W, C) or sequences (N, T, F).
        targets: One class per input (or one for all); None: the predicted class.
        **options: ``score`` and ``batch_size`` (inputs per compiled step).

    Returns:
        :class:`Attribution` with maps summed over channels for images and volumes,
        (N, T, F) for sequences, and the input-shaped extra ``attributions``.
    """
    _, common = resolve("gradient_x_input", options)
    x = np.asarray(x, np.float32)
    grads = input_gradients(model, x, targets, common["score"], common["batch_size"])
    attributions = grads * x
    maps = over_channels(attributions) if has_channels(x) else attributions
    return Attribution(maps, extras={"attributions": attributions})
