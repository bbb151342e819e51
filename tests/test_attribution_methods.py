"""The further attribution methods and metrics, checked against independent computations."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.attribution import (
    average_drop,
    average_stability,
    complexity,
    deconvnet,
    explain,
    faster_scorecam,
    gradient_x_input,
    guided_backprop,
    hsic,
    integrated_gradients,
    kernel_shap,
    layercam,
    lime,
    method,
    mu_fidelity,
    occlusion,
    random_logit,
    rise,
    saliency,
    scorecam,
    smoothgrad,
    sobol,
    sparseness,
    squaregrad,
    vargrad,
)
from pipeline.attribution.options import (
    DEFAULT_METHODS,
    GRADIENT_FREE_METHODS,
    METHOD_SPECS,
    AttributeOptions,
    MetricsOptions,
)
from pipeline.errors import KerascopeError

NEW_METHODS = tuple(name for name in METHOD_SPECS if name not in DEFAULT_METHODS)


def _dense_model(kernel, bias, input_shape, activation=None):
    """Flatten > Dense with a hand-set kernel: logits are exactly x.ravel() @ kernel + bias."""
    model = keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(kernel.shape[1], activation=activation, name="out"),
        ]
    )
    model.get_layer("out").set_weights([kernel.astype("float32"), bias.astype("float32")])
    return model


def _additive_model(weights, size, pool):
    """Class 0's logit is sum_c weights[c] * mean of cell c (pool x pool cells); class 1's is 0."""
    model = keras.Sequential(
        [
            keras.Input((size, size, 1)),
            keras.layers.AveragePooling2D(pool),
            keras.layers.Flatten(),
            keras.layers.Dense(2, name="out"),
        ]
    )
    kernel = np.stack([weights, np.zeros_like(weights)], axis=1)
    model.get_layer("out").set_weights([kernel.astype("float32"), np.zeros(2, "float32")])
    return model


def _cell_means(x, cells):
    """(N, cells * cells) means of the square cells of single-channel images."""
    n, size = len(x), x.shape[1]
    side = size // cells
    return x[..., 0].reshape(n, cells, side, cells, side).mean(axis=(2, 4)).reshape(n, -1)


def _cell_values(maps, cells):
    """The value per cell of a map that is constant over each cell."""
    side = maps.shape[1] // cells
    return maps[:, ::side, ::side].reshape(len(maps), -1)


# --- gradient family -------------------------------------------------------------------


def test_gradient_x_input_and_integrated_gradients_are_w_times_x_on_a_linear_model():
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(32, 3)), rng.normal(size=3)
    model = _dense_model(kernel, bias, (4, 4, 2), activation="softmax")  # logits bypassed
    x = rng.random((3, 4, 4, 2)).astype("float32")
    targets = np.array([0, 2, 1])
    exact = (kernel[:, targets].T.reshape(3, 4, 4, 2)) * x
    result = gradient_x_input(model, x, targets)
    np.testing.assert_allclose(result.attributions, exact, atol=1e-5)
    np.testing.assert_allclose(result.maps, exact.sum(axis=-1), atol=1e-5)
    ig = integrated_gradients(model, x, targets, steps=3)
    np.testing.assert_allclose(ig.attributions, exact, atol=1e-5)
    np.testing.assert_allclose(ig.completeness_error, 0.0, atol=1e-4)
    # Sequences keep one value per time step and feature.
    seq = _dense_model(kernel, bias, (8, 4))
    xs = rng.random((2, 8, 4)).astype("float32")
    np.testing.assert_allclose(
        gradient_x_input(seq, xs, [1, 0]).maps,
        kernel[:, [1, 0]].T.reshape(2, 8, 4) * xs,
        atol=1e-5,
    )


def _tanh_model(seed=1):
    """Flatten > Dense(4, tanh) > Dense(3), whose gradient is known in closed form."""
    rng = np.random.default_rng(seed)
    w1, b1 = rng.normal(size=(18, 4)), rng.normal(size=4) * 0.1
    w2, b2 = rng.normal(size=(4, 3)), rng.normal(size=3) * 0.1
    model = keras.Sequential(
        [
            keras.Input((3, 3, 2)),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="tanh", name="hidden"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    model.get_layer("hidden").set_weights([w1.astype("float32"), b1.astype("float32")])
    model.get_layer("out").set_weights([w2.astype("float32"), b2.astype("float32")])

    def gradient(inputs, target):
        flat = inputs.reshape(len(inputs), -1).astype(np.float64)
        hidden = np.tanh(flat @ w1 + b1)
        return ((w2[:, target] * (1 - hidden**2)) @ w1.T).reshape(inputs.shape)

    return model, gradient


def test_vargrad_and_squaregrad_match_numpy_over_the_same_noise():
    model, gradient = _tanh_model()
    x = np.random.default_rng(2).random((3, 3, 3, 2)).astype("float32")
    targets = np.array([2, 0, 1])
    noise, samples, seed = 0.2, 5, 3
    stats = {"vargrad": [], "squaregrad": [], "smoothgrad": []}
    for i in range(len(x)):
        # SmoothGrad's documented noise: one stateless Philox draw per input, keyed by
        # [seed, i], scaled by the input's value range; drawn here eagerly, input by input.
        eps = tf.random.stateless_normal((samples, 3, 3, 2), seed=[seed, i]).numpy()
        noisy = x[i] + (eps * noise * np.ptp(x[i])).astype(np.float32)
        grads = gradient(noisy, targets[i])
        stats["vargrad"].append(grads.var(axis=0).max(axis=-1))
        stats["squaregrad"].append((grads**2).mean(axis=0).max(axis=-1))
        stats["smoothgrad"].append(np.abs(grads).mean(axis=0).max(axis=-1))
    for fn in (vargrad, squaregrad, smoothgrad):
        ours = fn(model, x, targets, noise=noise, samples=samples, seed=seed, reduce="max")
        np.testing.assert_allclose(ours, np.stack(stats[fn.__name__]), rtol=1e-4, atol=1e-6)


def _guided_reference(model, x, targets, rule):
    """The modified gradient written by hand: explicit convolutions and custom ReLUs."""

    @tf.custom_gradient
    def relu(t):
        def grad(dy):
            if rule == "guided":
                return tf.where((t > 0) & (dy > 0), dy, tf.zeros_like(dy))
            if rule == "deconvnet":
                return tf.maximum(dy, 0.0)
            return tf.where(t > 0, dy, tf.zeros_like(dy))

        return tf.maximum(t, 0.0), grad

    (k1, b1), (k2, b2), (w3, b3), (w4, b4) = (
        [tf.constant(v) for v in model.get_layer(name).get_weights()]
        for name in ("c1", "c2", "d1", "out")
    )
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        h = relu(tf.nn.conv2d(inputs, k1, 1, "VALID") + b1)
        h = relu(tf.nn.conv2d(h, k2, 1, "VALID") + b2)
        h = relu(tf.reshape(h, (len(x), -1)) @ w3 + b3)
        score = tf.gather(h @ w4 + b4, targets, axis=1, batch_dims=1)
    return tape.gradient(score, inputs).numpy()


def _relu_model(nested=False, seed=4):
    """ReLU as activation="relu", as a ReLU layer and as Activation("relu"); optionally nested."""
    keras.utils.set_random_seed(seed)
    c1 = keras.layers.Conv2D(3, 3, activation="relu", name="c1", bias_initializer="ones")
    c2 = keras.layers.Conv2D(4, 2, name="c2")
    head = [
        keras.layers.Flatten(),
        keras.layers.Dense(6, name="d1", bias_initializer=keras.initializers.Constant(0.1)),
        keras.layers.Activation("relu"),
        keras.layers.Dense(3, activation="softmax", name="out"),
    ]
    if not nested:
        return keras.Sequential([keras.Input((6, 6, 2)), c1, c2, keras.layers.ReLU(), *head])
    base = keras.Sequential([keras.Input((6, 6, 2)), c1, c2, keras.layers.ReLU()], name="base")
    inputs = keras.Input((6, 6, 2))
    h = base(inputs)
    for layer in head:
        h = layer(h)
    return keras.Model(inputs, h)


@pytest.mark.parametrize("fn, rule", [(guided_backprop, "guided"), (deconvnet, "deconvnet")])
def test_modified_relu_rules_match_a_hand_written_model(fn, rule):
    model = _relu_model()
    x = np.random.default_rng(5).normal(size=(4, 6, 6, 2)).astype("float32")
    targets = np.array([0, 1, 2, 1])
    weights = [w.copy() for w in model.get_weights()]
    before = model(x).numpy()
    expected = _guided_reference(model, x, targets, rule)
    result = fn(model, x, targets)
    np.testing.assert_allclose(result.gradients, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.maps, np.abs(expected).max(axis=-1), rtol=1e-4, atol=1e-6)
    assert not np.allclose(expected, _guided_reference(model, x, targets, None))
    # The user's model is untouched: weights, activations, outputs and plain gradients.
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))
    assert model.get_layer("c1").activation.__name__ == "relu"
    np.testing.assert_array_equal(model(x).numpy(), before)
    plain = _guided_reference(model, x, targets, None)
    np.testing.assert_allclose(saliency(model, x, targets), np.abs(plain).max(-1), atol=1e-5)
    # A nested copy of the same network gives the same maps, through either forward path.
    nested = _relu_model(nested=True)
    nested.set_weights(model.get_weights())
    np.testing.assert_allclose(fn(nested, x, targets).gradients, expected, rtol=1e-4, atol=1e-6)
    probabilities = fn(nested, x, targets, score="probabilities").gradients
    np.testing.assert_allclose(
        probabilities, fn(model, x, targets, score="probabilities").gradients, atol=1e-6
    )
    assert not np.allclose(probabilities, 0.0)


# --- CAM family ------------------------------------------------------------------------


def _conv_model(kernel, bias, dense, input_shape=(4, 4, 1)):
    """Conv2D(relu) > Flatten > Dense with hand-set weights."""
    model = keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(kernel.shape[-1], kernel.shape[0], activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(dense.shape[1], name="out"),
        ]
    )
    model.get_layer("conv").set_weights([kernel.astype("float32"), bias.astype("float32")])
    model.get_layer("out").set_weights(
        [dense.astype("float32"), np.zeros(dense.shape[1], "float32")]
    )
    return model


def _manual_conv(x, kernel, bias):
    """A valid, stride-1 convolution and ReLU in numpy: (N, h, w, K)."""
    size = kernel.shape[0]
    out_h, out_w = x.shape[1] - size + 1, x.shape[2] - size + 1
    out = np.zeros((len(x), out_h, out_w, kernel.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i : i + size, j : j + size, :]
            out[:, i, j] = np.tensordot(patch, kernel, axes=3) + bias
    return np.maximum(out, 0.0)


def test_layercam_matches_its_definition_on_hand_set_weights():
    rng = np.random.default_rng(6)
    kernel, bias = rng.normal(size=(2, 2, 1, 3)), np.array([0.1, 0.0, -0.1])
    dense = rng.normal(size=(27, 2))  # position-dependent gradients: not Grad-CAM
    model = _conv_model(kernel, bias, dense)
    x = rng.random((3, 4, 4, 1)).astype("float32")
    targets = np.array([0, 1, 1])
    acts = _manual_conv(x, kernel, bias)
    # d score / d A[i, j, k] is the dense weight of that activation.
    grads = dense[:, targets].T.reshape(3, 3, 3, 3)
    expected = np.maximum((np.maximum(grads, 0) * acts).sum(-1), 0)
    result = layercam(model, x, targets)
    assert result.layer == "conv" and result.maps.shape == (3, 4, 4)
    np.testing.assert_allclose(result.raw, expected, rtol=1e-4, atol=1e-6)


def _scorecam_by_hand(model, x, target, channels):
    """Score-CAM of one input over the given channels only, one masked input at a time."""
    acts = keras.Model(model.inputs, model.get_layer("conv").output)(x[None]).numpy()[0]
    scores = []
    for k in channels:
        mask = tf.image.resize(acts[..., k][None, ..., None], x.shape[:2]).numpy()[0, ..., 0]
        mask = (mask - mask.min()) / np.ptp(mask) if np.ptp(mask) else mask * 0
        scores.append(tf.nn.softmax(model(x[None] * mask[..., None])).numpy()[0, target])
    weights = np.exp(scores) / np.exp(scores).sum()
    return np.maximum((acts[..., list(channels)] * weights).sum(-1), 0)


def test_faster_scorecam_uses_the_highest_variance_channels():
    keras.utils.set_random_seed(7)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(5, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    x = np.random.default_rng(7).random((2, 8, 8, 1)).astype("float32")
    targets = np.array([2, 0])
    result = faster_scorecam(model, x, targets, max_channels=2)
    acts = keras.Model(model.inputs, model.get_layer("conv").output)(x).numpy()
    variance = acts.reshape(2, -1, 5).var(axis=1)
    chosen = np.argsort(-variance, axis=1)[:, :2]
    np.testing.assert_array_equal(result.channels, chosen)
    for i in range(2):
        expected = _scorecam_by_hand(model, x[i], targets[i], chosen[i])
        np.testing.assert_allclose(result.raw[i], expected, rtol=1e-4, atol=1e-5)
    full = scorecam(model, x, targets, max_channels=None)
    for k in (5, 9, None):
        np.testing.assert_allclose(
            faster_scorecam(model, x, targets, max_channels=k).raw, full.raw, atol=1e-5
        )


# --- black-box family ------------------------------------------------------------------


def test_occlusion_is_nonzero_exactly_where_patches_cover_the_one_pixel_used():
    kernel = np.zeros((64, 2))
    kernel[3 * 8 + 5] = [2.0, -1.0]  # only pixel (3, 5) matters
    model = _dense_model(kernel, np.zeros(2), (8, 8, 1), activation="softmax")
    x = np.random.default_rng(8).random((2, 8, 8, 1)).astype("float32") + 0.5
    maps = occlusion(model, x, 0, patch_size=3, stride=2).maps
    # By hand: the patch corners (the last one moved back to the border), the patches
    # covering each pixel, and those of them that hide pixel (3, 5).
    starts = [0, 2, 4, 5]
    covering, hiding = np.zeros((8, 8)), np.zeros((8, 8))
    for r in starts:
        for c in starts:
            covering[r : r + 3, c : c + 3] += 1
            hiding[r : r + 3, c : c + 3] += r <= 3 < r + 3 and c <= 5 < c + 3
    expected = 2.0 * x[:, 3, 5, 0][:, None, None] * hiding / covering
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-6)
    assert set(zip(*np.nonzero(maps[0]), strict=True)) == set(zip(*np.nonzero(hiding), strict=True))
    # Sequences: windows of time steps.
    kernel = np.zeros((12, 2))
    kernel[4 * 2 + 1] = [1.0, 0.0]  # only time step 4, feature 1
    seq = _dense_model(kernel, np.zeros(2), (6, 2))
    xs = np.ones((1, 6, 2), "float32")
    np.testing.assert_allclose(
        occlusion(seq, xs, 0, patch_size=2, stride=2).maps, [[0, 0, 0, 0, 1, 1]], atol=1e-6
    )


def test_rise_correlates_and_kernel_shap_recovers_an_additive_model():
    rng = np.random.default_rng(9)
    weights = rng.normal(size=16)
    x = (rng.random((3, 16, 16, 1)) + 0.5).astype("float32")
    truth = weights * _cell_means(x, 4)
    model = _additive_model(weights, 16, 4)
    shap = _cell_values(kernel_shap(model, x, 0, grid=4, samples=64).maps, 4)
    np.testing.assert_allclose(shap, truth, atol=1e-4)
    maps = rise(model, x, 0, masks=2000, cells=8).maps
    per_cell = maps.reshape(3, 4, 4, 4, 4).mean(axis=(2, 4)).reshape(3, 16)
    for ours, exact in zip(per_cell, truth, strict=True):
        assert np.corrcoef(ours, exact)[0, 1] > 0.9
    coefficients = _cell_values(lime(model, x, 0, grid=4, samples=128).maps, 4)
    for ours, exact in zip(coefficients, truth, strict=True):
        assert np.corrcoef(ours, exact)[0, 1] > 0.99


@pytest.mark.parametrize("fn, designs", [(sobol, 16), (hsic, 128)])
def test_sobol_and_hsic_rank_the_dominant_cell_first(fn, designs):
    weights = np.random.default_rng(10).random(16)
    weights[5] = 10.0
    model = _additive_model(weights, 8, 2)
    x = np.ones((2, 8, 8, 1), "float32")
    values = _cell_values(fn(model, x, 0, grid=4, designs=designs).maps, 4)
    np.testing.assert_array_equal(values.argmax(axis=1), [5, 5])


# --- metrics ---------------------------------------------------------------------------


def test_complexity_and_sparseness_closed_forms():
    maps = np.array(
        [
            [[1.0, 0.0], [0.0, 0.0]],
            [[1.0, -1.0], [0.0, 0.0]],
            [[2.0, 2.0], [2.0, 2.0]],
            [[0.0, 0.0], [0.0, 0.0]],
        ]
    )
    np.testing.assert_allclose(complexity(maps), [0.0, np.log(2), np.log(4), np.log(4)])
    # Gini of |a| sorted ascending: sum (2 i - n - 1) a_i / (n sum a).
    np.testing.assert_allclose(sparseness(maps), [0.75, 0.5, 0.0, 0.0])


def test_average_drop_increase_and_gain_on_a_hand_made_model():
    kernel = np.array([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [0.5, 0.0]])
    model = _dense_model(kernel, np.zeros(2), (2, 2, 1), activation="softmax")
    x = np.array([[1.0, 1.0, 1.0, 1.0], [0.5, 1.0, 2.0, 1.0]], "float32").reshape(2, 2, 2, 1)
    maps = np.array([[[0.0, 1.0], [0.5, 1.0]], [[1.0, 1.0], [0.0, 0.5]]])
    result = average_drop(model, x, 0, maps)
    sigmoid = 1 / (1 + np.exp(-(x.reshape(2, 4) @ kernel[:, 0])))  # softmax of (z, 0)
    masked = 1 / (1 + np.exp(-((x.reshape(2, 4) * maps.reshape(2, 4)) @ kernel[:, 0])))
    np.testing.assert_allclose(result.original, sigmoid, rtol=1e-5)
    np.testing.assert_allclose(result.masked, masked, rtol=1e-5)
    np.testing.assert_allclose(
        result.drop, 100 * np.maximum(0, sigmoid - masked) / sigmoid, rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(result.increase, 100.0 * (masked > sigmoid))
    np.testing.assert_allclose(
        result.gain, 100 * np.maximum(0, masked - sigmoid) / (1 - sigmoid), rtol=1e-4, atol=1e-6
    )
    assert result.drop[0] > 0 and result.gain[1] > 0  # one drops, one gains


def test_mu_fidelity_is_one_for_gradient_x_input_on_a_linear_model():
    rng = np.random.default_rng(11)
    kernel = rng.normal(size=(128, 3))
    model = _dense_model(kernel, rng.normal(size=3), (8, 8, 2))
    x = rng.random((3, 8, 8, 2)).astype("float32")
    targets = np.array([0, 1, 2])
    maps = gradient_x_input(model, x, targets).maps
    np.testing.assert_allclose(mu_fidelity(model, x, targets, maps, grid=4), 1.0, atol=1e-5)
    noise = rng.random(maps.shape)
    assert mu_fidelity(model, x, targets, noise, grid=4).mean() < 0.9
    # Sequences: time windows, with per-feature maps summed per window.
    seq = _dense_model(rng.normal(size=(24, 2)), np.zeros(2), (8, 3))
    xs = rng.random((2, 8, 3)).astype("float32")
    seq_maps = gradient_x_input(seq, xs, [0, 1]).maps
    np.testing.assert_allclose(mu_fidelity(seq, xs, [0, 1], seq_maps, grid=4), 1.0, atol=1e-5)


def test_average_stability_and_the_random_logit_test():
    model, _ = _tanh_model()
    x = np.random.default_rng(12).random((3, 3, 3, 2)).astype("float32")
    targets = np.array([0, 1, 2])
    still = average_stability(saliency, model, x, targets, noise=0.0, samples=3)
    np.testing.assert_allclose(still, 0.0, atol=1e-6)
    assert np.all(average_stability(saliency, model, x, targets, noise=0.3) > 0)
    # Class 1's weights are class 0's negated: its Gradient x Input map is the negation.
    rng = np.random.default_rng(13)
    column = rng.normal(size=(18, 1))
    linear = _dense_model(np.concatenate([column, -column], axis=1), np.zeros(2), (3, 3, 2))
    test = random_logit(gradient_x_input, linear, x, np.array([0, 1, 0]), seed=2)
    np.testing.assert_array_equal(test.classes, [1, 0, 1])
    np.testing.assert_allclose(test.spearman, -1.0, atol=1e-6)
    assert np.all(test.ssim < 0.5)
    same = random_logit(gradient_x_input, linear, x, np.array([0, 1, 0]), seed=2, original=None)
    np.testing.assert_array_equal(same.ssim, test.ssim)


def test_explain_reports_the_metrics_per_method_and_for_the_random_ranking():
    model, _ = _tanh_model()
    x = np.random.default_rng(14).random((2, 3, 3, 2)).astype("float32")
    targets = np.array([0, 1])
    methods = {"gradient_x_input": METHOD_SPECS["gradient_x_input"].options()}
    plain = explain(model, x, targets, methods)
    assert plain.metrics(0.5) == {"gradient_x_input": {}}
    labels = []
    explanation = explain(
        model,
        x,
        targets,
        methods,
        metrics=MetricsOptions(enabled=True, grid=3),
        progress=labels.append,
    )
    report = explanation.metrics(0.5)
    referenced = {"mu_fidelity", "complexity", "sparseness"}
    referenced |= {f"average_{k}" for k in ("drop", "increase", "gain")}
    rerun = {"average_stability", "random_logit_ssim", "random_logit_spearman"}
    assert set(report["gradient_x_input"]) == referenced | rerun
    assert set(report["random"]) == referenced
    assert labels == ["gradient_x_input", "gradient_x_input metrics"]
    assert all(np.isfinite(v) for values in report.values() for v in values.values())
    off = explain(model, x, targets, methods, metrics=MetricsOptions())  # off by default
    assert off.evaluation == {}


# --- every method ----------------------------------------------------------------------


def _small_cnn(seed=15):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(3, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )


#: Cheap options for each method on an 8x8 image.
CHEAP = {
    "vargrad": {"samples": 4},
    "squaregrad": {"samples": 4},
    "faster_scorecam": {"max_channels": 2},
    "occlusion": {"patch_size": 3, "stride": 2},
    "rise": {"masks": 64, "cells": 4},
    "lime": {"grid": 4, "samples": 32},
    "kernel_shap": {"grid": 4, "samples": 32},
    "sobol": {"grid": 2, "designs": 8},
    "hsic": {"grid": 4, "designs": 32},
}


def test_gradient_free_methods_work_on_a_model_without_gradients():
    plain = _small_cnn()
    stop = keras.layers.Lambda(lambda t: keras.ops.stop_gradient(t), name="stop")
    frozen = keras.Sequential([keras.Input((8, 8, 1)), stop, *plain.layers])
    x = np.random.default_rng(16).random((2, 8, 8, 1)).astype("float32")
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        output = frozen(inputs)
    assert tape.gradient(output, inputs) is None
    targets = np.array([0, 2])
    for name in GRADIENT_FREE_METHODS:
        options = {**CHEAP.get(name, {}), **({"layer": "conv"} if "cam" in name else {})}
        ours = method(name)(frozen, x, targets, **options).maps
        np.testing.assert_allclose(ours, method(name)(plain, x, targets, **options).maps, atol=1e-6)
    maps = np.random.default_rng(17).random((2, 8, 8))
    np.testing.assert_allclose(
        mu_fidelity(frozen, x, targets, maps, grid=4), mu_fidelity(plain, x, targets, maps, grid=4)
    )
    np.testing.assert_allclose(
        average_drop(frozen, x, targets, maps).drop, average_drop(plain, x, targets, maps).drop
    )


@pytest.mark.parametrize(
    "name", ["vargrad", "squaregrad", "rise", "lime", "kernel_shap", "sobol", "hsic"]
)
def test_seeded_methods_are_reproducible_and_independent_of_the_batch_size(name):
    model = _small_cnn()
    x = np.random.default_rng(18).random((3, 8, 8, 1)).astype("float32")
    fn, options = method(name), CHEAP[name]
    first = fn(model, x, [0, 1, 2], seed=1, **options).maps
    np.testing.assert_array_equal(first, fn(model, x, [0, 1, 2], seed=1, **options).maps)
    np.testing.assert_allclose(
        first, fn(model, x, [0, 1, 2], seed=1, batch_size=5, **options).maps, rtol=1e-4, atol=1e-6
    )
    assert not np.allclose(first, fn(model, x, [0, 1, 2], seed=2, **options).maps)


INVALID = {
    "gradient_x_input": ({"seed": 1}, "invalid option of gradient_x_input 'seed'"),
    "vargrad": ({"samples": 0}, "'vargrad.samples' must be a positive number"),
    "squaregrad": ({"reduce": "sum"}, "invalid squaregrad.reduce 'sum'"),
    "guided_backprop": ({"reduce": "min"}, "invalid guided_backprop.reduce 'min'"),
    "deconvnet": ({"score": "odds"}, "invalid deconvnet.score 'odds'"),
    "layercam": ({"layer": "cnv"}, "did you mean 'conv'"),
    "faster_scorecam": ({"max_channels": 0}, "'faster_scorecam.max_channels' must be a positive"),
    "occlusion": ({"patch_size": 9}, "'occlusion.patch_size' is 9, larger than the input (8)"),
    "rise": ({"keep": 1.5}, "'rise.keep' must be at most 1.0"),
    "lime": ({"kernel_width": -1.0}, "'lime.kernel_width' must be a positive number"),
    "kernel_shap": ({"grid": 9}, "'kernel_shap.grid' is 9, more cells than the input has"),
    "sobol": ({"baseline": float("nan")}, "'sobol.baseline' must be a finite number"),
    "hsic": ({"designs": 1}, "'hsic.designs' must be at least 2"),
    "attention_rollout": ({"discard_ratio": 1.0}, "'attention_rollout.discard_ratio' must be in"),
}


@pytest.mark.parametrize("name", NEW_METHODS)
def test_invalid_options_are_one_line_errors(name):
    model = _small_cnn()
    x = np.random.default_rng(19).random((1, 8, 8, 1)).astype("float32")
    options, fragment = INVALID[name]
    with pytest.raises(KerascopeError) as info:
        method(name)(model, x, [0], **options)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_grid_methods_refuse_sequences_and_the_options_validate_as_config():
    seq = _dense_model(np.ones((12, 2)), np.zeros(2), (6, 2))
    xs = np.ones((1, 6, 2), "float32")
    for name in ("rise", "lime", "kernel_shap", "sobol", "hsic"):
        with pytest.raises(KerascopeError, match=f"^{name} needs images .* use occlusion$"):
            method(name)(seq, xs, [0])
    assert set(NEW_METHODS) <= set(METHOD_SPECS)
    AttributeOptions(methods=list(NEW_METHODS)).check()
    with pytest.raises(KerascopeError, match="'attribute.metrics.grid' must be a positive"):
        AttributeOptions(metrics=MetricsOptions(grid=0)).check()
    with pytest.raises(KerascopeError, match="'attribute.lime.grid' must be a positive"):
        AttributeOptions(methods=["lime"], lime=METHOD_SPECS["lime"].options(grid=0)).check()
    from pipeline.config import section

    cfg = section(
        {"attribute": {"methods": ["lime", "hsic"], "lime": {"grid": 4}, "metrics": {"grid": 3}}},
        "attribute",
        AttributeOptions,
    )
    assert cfg.lime.grid == 4 and cfg.metrics.grid == 3 and cfg.hsic.designs == 512


# --- batches: progress and the memory budget ---------------------------------------------


def _conv_net():
    """Input (8, 8, 1) > Conv2D(3, 3x3) (6, 6, 3) > Flatten (108) > Dense(4)."""
    keras.utils.set_random_seed(21)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(3, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(4, name="out"),
        ]
    )


def test_batch_progress_reports_every_batch_of_every_run():
    from pipeline.attribution import saliency
    from pipeline.attribution.batching import batch_progress

    model = _conv_net()
    x = np.random.default_rng(22).random((7, 8, 8, 1)).astype("float32")
    seen = []
    with batch_progress(lambda done, total: seen.append((done, total))):
        saliency(model, x, np.zeros(7, int), batch_size=3)
    assert seen == [(3, 7), (6, 7), (7, 7)]
    saliency(model, x, np.zeros(7, int), batch_size=3)  # outside the block: nobody hears
    assert len(seen) == 3


def test_gradient_batches_fit_the_memory_budget_without_changing_results(monkeypatch):
    import pipeline.attribution.batching as batching
    from pipeline.attribution import integrated_gradients, smoothgrad

    model = _conv_net()
    # Counted by hand: the input 64, the convolution 6 * 6 * 3, flatten 108, dense 4.
    assert batching.activation_elements(model, (8, 8, 1)) == 64 + 108 + 108 + 4
    assert batching.gradient_rows(model, (8, 8, 1), 64, budget=4 * 284 * 5) == 5
    assert batching.gradient_rows(model, (8, 8, 1), 64, budget=1) == 1
    assert batching.gradient_rows(model, (8, 8, 1), 64) == 64  # the default budget: no change
    # Unset rows: the step fills STEP_BUDGET (284 floats a row), within 16..1,024 rows.
    assert batching.gradient_rows(model, (8, 8, 1), None) == 1024
    monkeypatch.setattr(batching, "STEP_BUDGET", 4 * 284 * 40)
    assert batching.gradient_rows(model, (8, 8, 1), None) == 40
    monkeypatch.setattr(batching, "STEP_BUDGET", 4 * 284 * 3)
    assert batching.gradient_rows(model, (8, 8, 1), None) == 16
    x = np.random.default_rng(23).random((5, 8, 8, 1)).astype("float32")
    targets = np.arange(5) % 4
    seen = []
    with batching.batch_progress(lambda done, total: seen.append(done)):
        wide = (
            smoothgrad(model, x, targets, samples=4, batch_size=64),
            integrated_gradients(model, x, targets, batch_size=128),
        )
    assert seen == [5, 3, 5]  # 64 // 4 and 128 // 33 inputs per step
    monkeypatch.setattr(batching, "MEMORY_BUDGET", 4 * 284 * 2)  # two rows per step
    seen.clear()
    with batching.batch_progress(lambda done, total: seen.append(done)):
        narrow = smoothgrad(model, x, targets, samples=4), integrated_gradients(model, x, targets)
    assert seen == [1, 2, 3, 4, 5] * 2  # one input (4 or 33 rows, at least 1) per step
    for a, b in zip(wide, narrow, strict=True):
        np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-7)


def test_forward_batches_fit_the_memory_budget_without_changing_results(monkeypatch):
    import pipeline.attribution.batching as batching
    from pipeline.attribution import rise, scorecam
    from pipeline.attribution.faithfulness import deletion_insertion

    model = _conv_net()
    # The largest output is the convolution's (or flatten's) 108 values: 3 float32 each.
    assert batching.forward_rows(model, (8, 8, 1), 64, budget=3 * 4 * 108 * 7) == 7
    assert batching.forward_rows(model, (8, 8, 1), 64) == 64
    x = np.random.default_rng(24).random((5, 8, 8, 1)).astype("float32")
    targets = np.arange(5) % 4

    def run():
        seen = []
        with batching.batch_progress(lambda done, total: seen.append(done)):
            cam = scorecam(model, x, targets, max_channels=2)
            curves = deletion_insertion(model, x, targets, cam.maps, steps=4)
            masks = rise(model, x, targets, masks=20, cells=3, batch_size=64)
        return (cam.maps, curves.deletion, curves.insertion, masks.maps), seen

    wide, wide_batches = run()
    # Score-CAM 32 inputs per step (64 rows, 2 channels), curves 25 (256 rows, 10 per
    # input), RISE all 20 masks for 3 inputs at a time.
    assert wide_batches == [5, 5, 3, 5]
    monkeypatch.setattr(batching, "MEMORY_BUDGET", 3 * 4 * 108 * 10)  # ten rows per step
    narrow, narrow_batches = run()
    # Ten rows: Score-CAM 5 inputs, curves 1 input, RISE 10 masks for 1 input at a time.
    assert narrow_batches == [5, *[1, 2, 3, 4, 5] * 3]
    for a, b in zip(wide, narrow, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
