"""Attribution methods checked against independent computations."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.attribution import (
    deletion_insertion,
    gradcam,
    gradcam_plus_plus,
    integrated_gradients,
    randomization_sanity,
    saliency,
    scorecam,
    smoothgrad,
)
from pipeline.attribution.faithfulness import random_maps
from pipeline.errors import KerascopeError

rng = np.random.default_rng(0)


def _smooth_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(3, 3, activation="tanh", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(4, activation="softmax", name="out"),
        ]
    )


def _logits_of(model, x):
    """Pre-softmax scores computed independently: a sub-model plus the last kernel."""
    penultimate = keras.Model(model.inputs, model.layers[-2].output)
    out = model.layers[-1]
    return penultimate(x).numpy() @ out.kernel.numpy() + out.bias.numpy()


def test_saliency_agrees_with_finite_differences():
    model = _smooth_model()
    x = rng.random((2, 6, 6, 2)).astype("float32")
    targets = np.array([1, 3])
    maps = saliency(model, x, targets, reduce="max")
    eps = 1e-2
    fd = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(x.shape[1:]):
        up, down = x.copy(), x.copy()
        up[(slice(None), *idx)] += eps
        down[(slice(None), *idx)] -= eps
        diff = _logits_of(model, up) - _logits_of(model, down)
        fd[(slice(None), *idx)] = diff[np.arange(2), targets] / (2 * eps)
    np.testing.assert_allclose(maps, np.abs(fd).max(axis=-1), atol=2e-3)


def test_smoothgrad_with_no_noise_is_saliency_and_noise_changes_it():
    model = _smooth_model()
    x = rng.random((3, 6, 6, 2)).astype("float32")
    t = np.array([0, 1, 2])
    base = saliency(model, x, t)
    np.testing.assert_allclose(smoothgrad(model, x, t, noise=0.0, samples=3), base, atol=1e-6)
    noisy = smoothgrad(model, x, t, noise=0.3, samples=8, seed=1)
    assert noisy.shape == base.shape and not np.allclose(noisy, base)
    np.testing.assert_array_equal(noisy, smoothgrad(model, x, t, noise=0.3, samples=8, seed=1))


def _gap_model(kernel, bias, dense_w, dense_b, activation=None):
    """Conv2D(k=2) > GlobalAveragePooling > Dense with hand-set weights."""
    model = keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            keras.layers.Conv2D(2, 2, activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(2, activation=activation, name="out"),
        ]
    )
    model.get_layer("conv").set_weights([kernel, bias])
    model.get_layer("out").set_weights([dense_w, dense_b])
    return model


KERNEL = np.array([[1.0, 0.0], [0.0, -1.0], [0.5, 0.5], [0.5, 0.5]], "float32").T.reshape(
    2, 2, 1, 2
)
BIAS = np.array([0.1, 0.0], "float32")
DENSE_W = np.array([[2.0, -1.0], [0.5, 3.0]], "float32")
DENSE_B = np.array([0.0, 0.0], "float32")


def _manual_conv(x):
    out = np.zeros((len(x), 3, 3, 2))
    for i in range(3):
        for j in range(3):
            patch = x[:, i : i + 2, j : j + 2, 0]
            for k in range(2):
                out[:, i, j, k] = (patch * KERNEL[:, :, 0, k]).sum(axis=(1, 2)) + BIAS[k]
    return np.maximum(out, 0)


def test_gradcam_equals_manual_computation_on_known_weights():
    model = _gap_model(KERNEL, BIAS, DENSE_W, DENSE_B, activation="softmax")
    x = rng.random((3, 4, 4, 1)).astype("float32")
    targets = np.array([0, 1, 1])
    result = gradcam(model, x, targets)
    acts = _manual_conv(x)
    # Score = sum_k W[k, c] * mean(A_k) + b: dS/dA_k is W[k, c] / 9 everywhere.
    weights = DENSE_W[:, targets].T / 9.0
    expected = np.maximum((acts * weights[:, None, None, :]).sum(-1), 0)
    assert result.layer == "conv"
    np.testing.assert_allclose(result.raw, expected, atol=1e-5)
    assert result.maps.shape == (3, 4, 4)


def test_gradcam_plus_plus_equals_the_closed_form_on_known_weights():
    model = _gap_model(KERNEL, BIAS, DENSE_W, DENSE_B)
    x = rng.random((2, 4, 4, 1)).astype("float32")
    targets = np.array([1, 0])
    result = gradcam_plus_plus(model, x, targets)
    acts = _manual_conv(x)
    g = DENSE_W[:, targets].T / 9.0  # (N, K), constant over positions
    alpha = g**2 / (2 * g**2 + acts.sum(axis=(1, 2)) * g**3)
    weights = 9 * alpha * np.maximum(g, 0)
    expected = np.maximum((acts * weights[:, None, None, :]).sum(-1), 0)
    np.testing.assert_allclose(result.raw, expected, rtol=1e-4, atol=1e-6)


def _independent_gradcam(model, layer_name, x, targets):
    """Grad-CAM the keras-io way: a two-output sub-model and one tape per image."""
    grad_model = keras.Model(model.inputs, [model.get_layer(layer_name).output, model.output])
    maps = []
    for image, target in zip(x, targets, strict=True):
        with tf.GradientTape() as tape:
            acts, preds = grad_model(image[None])
            score = preds[:, target]
        grads = tape.gradient(score, acts)[0].numpy()
        weights = grads.mean(axis=tuple(range(grads.ndim - 1)))
        maps.append(np.maximum((acts[0].numpy() * weights).sum(-1), 0))
    return np.stack(maps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradcam_agrees_with_an_independent_implementation(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inputs)
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c2")(h)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(5, name="logits")(h))
    x = np.random.default_rng(seed).random((6, 10, 10, 3)).astype("float32")
    targets = np.random.default_rng(seed).integers(0, 5, 6)
    ours = gradcam(model, x, targets, layer="c2").raw
    theirs = _independent_gradcam(model, "c2", x, targets)
    for a, b in zip(ours, theirs, strict=True):
        if np.ptp(b) > 0:
            assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99
        else:
            np.testing.assert_allclose(a, b, atol=1e-6)


def test_gradcam_over_time_for_sequences():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((7, 3))
    seq = keras.layers.LSTM(4, return_sequences=True, name="lstm")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(seq)))
    x = rng.random((3, 7, 3)).astype("float32")
    targets = np.array([0, 1, 0])
    result = gradcam(model, x, targets)
    assert result.layer == "lstm" and result.raw.shape == (3, 7) and result.maps.shape == (3, 7)
    np.testing.assert_allclose(
        result.raw, _independent_gradcam(model, "lstm", x, targets), atol=1e-5
    )


def _independent_scorecam(model, layer_name, x, target):
    acts = keras.Model(model.inputs, model.get_layer(layer_name).output)(x[None]).numpy()[0]
    scores = []
    for k in range(acts.shape[-1]):
        mask = tf.image.resize(acts[..., k][None, ..., None], x.shape[:2]).numpy()[0, ..., 0]
        mask = (mask - mask.min()) / (mask.max() - mask.min()) if np.ptp(mask) else mask * 0
        probs = tf.nn.softmax(model(x[None] * mask[..., None])).numpy()[0]
        scores.append(probs[target])
    weights = np.exp(scores) / np.exp(scores).sum()
    return np.maximum((acts * weights).sum(-1), 0)


def test_scorecam_agrees_with_an_independent_loop():
    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(5, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    x = rng.random((2, 8, 8, 1)).astype("float32")
    result = scorecam(model, x, np.array([2, 0]))
    for i, target in enumerate([2, 0]):
        expected = _independent_scorecam(model, "conv", x[i], target)
        assert np.corrcoef(result.raw[i].ravel(), expected.ravel())[0, 1] >= 0.99
    limited = scorecam(model, x, np.array([2, 0]), max_channels=2)
    assert limited.raw.shape == result.raw.shape


def test_integrated_gradients_completeness_improves_with_steps():
    model = _smooth_model(5)
    x = rng.random((4, 6, 6, 2)).astype("float32")
    t = np.array([0, 1, 2, 3])
    coarse = integrated_gradients(model, x, t, steps=2)
    fine = integrated_gradients(model, x, t, steps=128)
    assert np.abs(fine.completeness_error).mean() < np.abs(coarse.completeness_error).mean()
    assert np.all(np.abs(fine.completeness_error) <= 0.01 * np.abs(fine.score_difference) + 1e-4)
    # The score difference is computed independently from the logits.
    logits = _logits_of(model, x)
    zeros = _logits_of(model, np.zeros_like(x))
    np.testing.assert_allclose(fine.score_difference, (logits - zeros)[np.arange(4), t], atol=1e-4)
    for baseline in ("blur", "uniform"):
        result = integrated_gradients(model, x, t, steps=64, baseline=baseline)
        assert np.all(
            np.abs(result.completeness_error) <= 0.02 * np.abs(result.score_difference) + 1e-3
        )


def _linear_evidence_model(weight_map):
    """Two logits: [sum(x * W), 0]; the exact contribution of pixel p is x_p * W_p."""
    inputs = keras.Input((5, 5, 1))
    flat = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(2, activation="softmax", name="out")
    out = dense(flat)
    model = keras.Model(inputs, out)
    dense.set_weights(
        [
            np.stack([weight_map.ravel(), np.zeros(25)], axis=1).astype("float32"),
            np.zeros(2, "float32"),
        ]
    )
    return model


def test_oracle_attribution_deletes_faster_than_random():
    weight_map = np.random.default_rng(1).random((5, 5)) * 4
    model = _linear_evidence_model(weight_map)
    x = np.random.default_rng(2).random((8, 5, 5, 1)).astype("float32")
    targets = np.zeros(8, dtype=int)
    oracle = x[..., 0] * weight_map
    good = deletion_insertion(model, x, targets, oracle, steps=25, substrate_kind="zeros")
    rand = deletion_insertion(
        model, x, targets, random_maps((8, 5, 5), 3), steps=25, substrate_kind="zeros"
    )
    assert good.deletion_auc.mean() < rand.deletion_auc.mean()
    assert good.insertion_auc.mean() > rand.insertion_auc.mean()
    assert np.all((good.deletion_auc >= 0) & (good.deletion_auc <= 1))
    # Curves start at the unperturbed probability and end at the substrate's (both 0.5 here).
    full = model(x).numpy()[:, 0]
    np.testing.assert_allclose(good.deletion[:, 0], full, atol=1e-5)
    np.testing.assert_allclose(good.deletion[:, -1], 0.5, atol=1e-5)
    np.testing.assert_allclose(good.insertion[:, -1], full, atol=1e-5)


def _edge_map(model, x, targets):
    """A 'method' that ignores the model: the input's gradient magnitude."""
    gy, gx = np.gradient(x[..., 0], axis=(1, 2))
    return np.hypot(gx, gy)


def test_randomisation_check_flags_a_model_ignoring_method():
    model = _smooth_model(6)
    before = [w.copy() for w in model.get_weights()]
    x = rng.random((4, 6, 6, 2)).astype("float32")
    t = np.array([0, 1, 2, 3])
    layers, edge = randomization_sanity(model, x, t, _edge_map)
    assert layers == ["out", "conv"]
    np.testing.assert_allclose(edge, 1.0)
    # Saliency's compiled step is cached per model and reused on the redrawn weights:
    # the maps must still change (a step that froze the weights would keep them).
    _, grads = randomization_sanity(model, x, t, lambda m, xx, tt: saliency(m, xx, tt))
    assert grads[-1] < 0.9
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    np.testing.assert_array_equal(saliency(model, x, t).maps, saliency(_smooth_model(6), x, t).maps)


def test_randomisation_check_restores_the_weights_when_a_method_fails():
    model = _smooth_model(6)
    before = [w.copy() for w in model.get_weights()]
    x = rng.random((4, 6, 6, 2)).astype("float32")
    calls = []

    def failing_on_the_second_step(m, xx, tt):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return saliency(m, xx, tt)

    with pytest.raises(RuntimeError, match="out of memory"):
        randomization_sanity(model, x, np.array([0, 1, 2, 3]), failing_on_the_second_step)
    assert len(calls) == 2  # the original maps, then the first randomised step failed
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_methods_leave_the_model_untouched():
    model = _smooth_model(7)
    before = [w.copy() for w in model.get_weights()]
    x = rng.random((2, 6, 6, 2)).astype("float32")
    t = np.array([1, 2])
    for method in (
        saliency,
        smoothgrad,
        integrated_gradients,
        gradcam,
        gradcam_plus_plus,
        scorecam,
    ):
        method(model, x, t)
    assert model.layers[-1].activation.__name__ == "softmax"
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_errors_are_one_line():
    model = _smooth_model()
    x = rng.random((2, 6, 6, 2)).astype("float32")
    cases = [
        (lambda: gradcam(model, x, [0, 1], layer="cnv"), "did you mean 'conv'"),
        (lambda: gradcam(model, x, [0, 1], layer="out"), "no spatial or time axis"),
        (lambda: saliency(model, x, [0, 4]), "target class 4 is out of range; valid: 0..3"),
        (
            lambda: integrated_gradients(model, x, [0, 1], baseline="ones"),
            "valid: zeros, blur, uniform",
        ),
    ]
    for call, fragment in cases:
        with pytest.raises(KerascopeError) as info:
            call()
        assert fragment in str(info.value) and "\n" not in str(info.value)
    dense_only = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(KerascopeError, match="no layer with a spatial or time axis"):
        gradcam(dense_only, np.ones((1, 4), "float32"), [0])


def test_targets_default_to_the_predicted_class_and_one_class_broadcasts():
    model = _smooth_model(5)
    x = rng.random((6, 6, 6, 2)).astype("float32")
    predicted = np.argmax(model.predict(x, verbose=0), axis=-1)
    np.testing.assert_array_equal(saliency(model, x, None), saliency(model, x, predicted))
    np.testing.assert_array_equal(gradcam(model, x, None).raw, gradcam(model, x, predicted).raw)
    np.testing.assert_array_equal(saliency(model, x, 2), saliency(model, x, np.full(6, 2)))
    with pytest.raises(KerascopeError, match="2 targets given for 6 inputs"):
        saliency(model, x, [0, 1])
