"""Layer addressing and the one-pass multi-layer forward (pipeline.graph)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.errors import KerascopeError
from pipeline.graph import (
    LayerForward,
    default_cam_layer,
    list_layers,
    output_activation,
    resolve_layers,
)


def _nested():
    keras.utils.set_random_seed(1)
    base = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, activation="relu", name="block1_conv1"),
            keras.layers.Conv2D(5, 3, name="block1_conv2"),
        ],
        name="base",
    )
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            base,
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(3, activation="softmax", name="head"),
        ]
    )


def test_paths_of_nested_models_and_selection():
    model = _nested()
    assert [i.path for i in list_layers(model)] == [
        "base",
        "base/block1_conv1",
        "base/block1_conv2",
        "gap",
        "head",
    ]
    assert resolve_layers(model, "base/*") == ["base/block1_conv1", "base/block1_conv2"]
    assert resolve_layers(model, ["Dense", "gap"]) == ["gap", "head"]
    assert default_cam_layer(model) == "base/block1_conv2"
    with pytest.raises(KerascopeError, match="did you mean 'base/block1_conv1'"):
        resolve_layers(model, "base/block1_con1")


def test_inner_layer_of_nested_model_equals_a_manual_computation():
    model = _nested()
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    _, taps = LayerForward(model, ["base/block1_conv1"])(x)
    conv = model.layers[0].layers[0]
    expected = tf.nn.relu(
        tf.nn.conv2d(x, conv.kernel, strides=1, padding="VALID") + conv.bias
    ).numpy()
    np.testing.assert_allclose(taps["base/block1_conv1"], expected, atol=1e-5)


def test_stop_early_calls_no_layer_past_the_last_tap():
    model = _nested()
    called = []
    for layer in (model.get_layer("gap"), model.get_layer("head")):
        original = layer.call
        layer.call = lambda *a, _f=original, _n=layer.name, **k: called.append(_n) or _f(*a, **k)
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype("float32")
    outputs, taps = LayerForward(model, ["base/block1_conv2"], stop_early=True)(x)
    assert outputs is None and called == []
    conv = model.layers[0].layers
    hidden = tf.nn.relu(tf.nn.conv2d(x, conv[0].kernel, 1, "VALID") + conv[0].bias)
    expected = tf.nn.conv2d(hidden, conv[1].kernel, 1, "VALID") + conv[1].bias
    np.testing.assert_allclose(taps["base/block1_conv2"], expected.numpy(), atol=1e-5)
    # Without it, the rest of the model runs and its outputs come back.
    outputs, _ = LayerForward(model, ["base/block1_conv2"])(x)
    assert outputs.shape == (2, 3) and called == ["gap", "head"]


def test_logits_bypass_softmax_without_touching_the_model():
    model = _nested()
    head = model.get_layer("head")
    kernel_before = head.kernel.numpy().copy()
    x = np.random.default_rng(1).random((3, 8, 8, 3)).astype("float32")
    logits, taps = LayerForward(model, ["gap"], logits=True)(x)
    expected = taps["gap"].numpy() @ head.kernel.numpy() + head.bias.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    np.testing.assert_allclose(tf.nn.softmax(logits), model(x), atol=1e-6)
    assert head.activation.__name__ == "softmax"
    assert np.array_equal(head.kernel.numpy(), kernel_before)
    assert output_activation(model) == "softmax"


def test_separate_softmax_layer_is_skipped_for_logits():
    inputs = keras.Input((4,))
    z = keras.layers.Dense(3, name="z")(inputs)
    model = keras.Model(inputs, keras.layers.Softmax(name="sm")(z))
    x = np.ones((1, 4), np.float32)
    logits, taps = LayerForward(model, ["z"], logits=True)(x)
    np.testing.assert_allclose(logits, taps["z"], atol=1e-6)


def test_shared_layer_calls_are_addressed_separately():
    a, b = keras.Input((4,)), keras.Input((4,))
    shared = keras.layers.Dense(2, name="shared")
    merged = keras.layers.Add(name="add")([shared(a), shared(b)])
    model = keras.Model([a, b], merged)
    assert [i.path for i in list_layers(model)] == ["shared", "shared@1", "add"]
    xa = np.ones((1, 4), np.float32)
    xb = 2 * xa
    _, taps = LayerForward(model, ["shared", "shared@1"])([xa, xb])
    w, bias = shared.kernel.numpy(), shared.bias.numpy()
    np.testing.assert_allclose(taps["shared"], xa @ w + bias, atol=1e-6)
    np.testing.assert_allclose(taps["shared@1"], xb @ w + bias, atol=1e-6)


def test_dropout_and_batchnorm_run_in_inference_mode():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dropout(0.9, name="drop"),
            keras.layers.BatchNormalization(name="bn"),
        ]
    )
    bn = model.get_layer("bn")
    bn.moving_mean.assign([1.0, 2.0, 3.0, 4.0])
    bn.moving_variance.assign([4.0, 4.0, 4.0, 4.0])
    x = np.full((5, 4), 3.0, np.float32)
    out, taps = LayerForward(model, ["drop"])(x)
    np.testing.assert_array_equal(taps["drop"], x)
    expected = (x - bn.moving_mean.numpy()) / np.sqrt(4.0 + bn.epsilon)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_gradients_flow_to_intermediate_taps():
    model = _nested()
    forward = LayerForward(model, ["gap"], logits=True)
    x = tf.constant(np.random.default_rng(2).random((2, 8, 8, 3)), tf.float32)
    with tf.GradientTape() as tape:
        logits, taps = forward(x)
        score = tf.reduce_sum(logits[:, 0])
    grad = tape.gradient(score, taps["gap"]).numpy()
    np.testing.assert_allclose(grad, np.tile(model.get_layer("head").kernel.numpy()[:, 0], (2, 1)))


def test_logits_follow_later_weight_changes():
    model = _nested()
    forward = LayerForward(model, [], logits=True)
    x = np.random.default_rng(3).random((2, 8, 8, 3)).astype("float32")
    before, _ = forward(x)
    head = model.get_layer("head")
    head.kernel.assign(head.kernel.numpy() * -2.0)
    after, _ = forward(x)
    np.testing.assert_allclose(tf.nn.softmax(after), model(x), atol=1e-6)
    assert not np.allclose(before, after)
