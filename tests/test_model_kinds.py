"""Beyond image classifiers (issue 17): regression, multi-label, segmentation and
registered scores as configuration, checked against independent computations."""

from __future__ import annotations

import json

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from conftest import REPO, python_cmd, run, write_tiny_project

from pipeline.attribution import integrated_gradients, saliency
from pipeline.attribution.faithfulness import deletion_insertion, randomization_sanity
from pipeline.attribution.head_options import HeadOptions
from pipeline.attribution.heads import explained_scores, register_score, with_head
from pipeline.errors import KerascopeError

RNG = np.random.default_rng(0)


def _regressor(units=2, activation=None):
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(3, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(units, activation=activation, name="value"),
        ]
    )


def _tape_gradient(fn, x):
    """d sum(fn(x)) / dx with an independent GradientTape."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        value = fn(xt)
    return tape.gradient(value, xt).numpy()


@pytest.mark.parametrize("direction", ["value", "decrease"])
def test_regression_saliency_is_the_gradient_of_the_output(direction):
    model = _regressor()
    x = RNG.random((4, 8, 8, 1)).astype("float32")
    head = with_head(model, HeadOptions(kind="regression", output_index=1, direction=direction))
    sign = -1.0 if direction == "decrease" else 1.0
    grads = _tape_gradient(lambda t: sign * model(t)[:, 1], x)
    np.testing.assert_allclose(saliency(head, x, 0).maps, np.abs(grads).max(-1), atol=1e-6)
    ig = integrated_gradients(head, x, 0, steps=64)
    # Completeness: IG sums to the score's change from the zero baseline.
    change = sign * (model(x)[:, 1] - model(np.zeros_like(x))[:, 1]).numpy()
    np.testing.assert_allclose(ig.maps.reshape(4, -1).sum(1), change, rtol=2e-2, atol=1e-3)
    # Deletion/insertion and the sanity check follow the same score.
    curves = deletion_insertion(head, x, 0, np.ones((4, 8, 8)), steps=4)
    np.testing.assert_allclose(curves.deletion[:, 0], sign * model(x)[:, 1], atol=1e-5)
    layers, correlations = randomization_sanity(head, x, 0, saliency, steps=2)
    assert layers == ["value", "conv"] and len(correlations) == 2
    assert model.layers[-1].activation is keras.activations.linear  # the model is untouched


def test_regression_score_logits_and_probabilities():
    """score: logits sums under a final sigmoid; probabilities explains the output."""
    model = _regressor(activation="sigmoid")
    x = RNG.random((3, 8, 8, 1)).astype("float32")
    options = HeadOptions(kind="regression", output_index=0)
    probabilities = with_head(model, options, "probabilities")
    logits = with_head(model, options, "logits")
    dense = model.get_layer("value")
    features = keras.Model(model.inputs, dense.input)
    z = lambda t: (tf.matmul(features(t), dense.kernel) + dense.bias)[:, 0]  # noqa: E731
    np.testing.assert_allclose(
        saliency(logits, x, 0).maps, np.abs(_tape_gradient(z, x)).max(-1), atol=1e-6
    )
    np.testing.assert_allclose(
        saliency(probabilities, x, 0).maps,
        np.abs(_tape_gradient(lambda t: model(t)[:, 0], x)).max(-1),
        atol=1e-6,
    )
    curves = deletion_insertion(probabilities, x, 0, np.ones((3, 8, 8)), steps=2)
    np.testing.assert_allclose(curves.deletion[:, 0], model(x)[:, 0], atol=1e-5)


def test_multilabel_explains_the_sum_of_the_set():
    model = _regressor(units=4, activation="sigmoid")
    x = RNG.random((3, 8, 8, 1)).astype("float32")
    head = with_head(model, HeadOptions(kind="multilabel", classes=[0, 2]), "probabilities")
    grads = _tape_gradient(lambda t: model(t)[:, 0] + model(t)[:, 2], x)
    np.testing.assert_allclose(saliency(head, x, 0).maps, np.abs(grads).max(-1), atol=1e-6)


def _pixel_segmenter():
    """Per-pixel 2-class logits from a 1x1 convolution: class 0 is x, class 1 is -x,
    so a pixel's scores depend on that pixel only."""
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(2, 1, activation="softmax", name="seg"),
        ]
    )
    model.get_layer("seg").set_weights([np.float32([[[[1.0, -1.0]]]]), np.zeros(2, "float32")])
    return model


def test_segmentation_region_score_attributes_to_its_pixels_only():
    model = _pixel_segmenter()
    x = RNG.uniform(-1, 1, (3, 8, 8, 1)).astype("float32")
    box = with_head(model, HeadOptions(kind="segmentation", class_index=0, region="box",
                                       box=[2, 5, 1, 4]))  # fmt: skip
    inside = np.zeros((8, 8), bool)
    inside[2:5, 1:4] = True
    maps = saliency(box, x, 0).maps
    # d(sum of class-0 logits over the box)/dx = 1 inside the box, 0 elsewhere.
    np.testing.assert_allclose(maps, np.broadcast_to(inside, maps.shape).astype("float32"))
    predicted = with_head(model, HeadOptions(kind="segmentation", class_index=1))
    maps = saliency(predicted, x, 0).maps
    np.testing.assert_allclose(maps, (x[..., 0] < 0).astype("float32"))  # class 1 where x < 0
    # The score is the sum of the class's logits over its predicted mask.
    expected = np.where(x[..., 0] < 0, -x[..., 0], 0).sum(axis=(1, 2))
    np.testing.assert_allclose(explained_scores(predicted, x)[:, 0], expected, atol=1e-5)


@register_score("test_reconstruction_error")
def _reconstruction_error(outputs, inputs):
    return tf.reduce_sum(tf.square(outputs - inputs), axis=[1, 2, 3])


def test_registered_score_gets_the_inputs_and_survives_cloning():
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 3, padding="same", name="decode")]
    )
    x = RNG.random((2, 8, 8, 1)).astype("float32")
    head = with_head(model, HeadOptions(kind="registered", name="test_reconstruction_error"))
    grads = _tape_gradient(lambda t: tf.reduce_sum(tf.square(model(t) - t), axis=[1, 2, 3]), x)
    np.testing.assert_allclose(saliency(head, x, 0).maps, np.abs(grads)[..., 0], rtol=1e-5)
    clone = keras.models.clone_model(head)
    assert clone.layers[-1].options.name == "test_reconstruction_error"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (HeadOptions(kind="boxes"), "invalid head.kind 'boxes'; valid: class, regression"),
        (HeadOptions(kind="multilabel"), "head.kind=multilabel needs head.classes"),
        (HeadOptions(kind="segmentation", region="box", box=[3, 1]), "needs head.box"),
        (HeadOptions(kind="registered"), "head.kind=registered needs head.name"),
        (HeadOptions(direction="up"), "invalid head.direction 'up'; valid: value, increase"),
    ],
)
def test_head_options_are_checked_in_one_line(options, message):
    with pytest.raises(KerascopeError, match=message):
        options.check()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (HeadOptions(kind="registered", name="nope"), "no registered score 'nope'"),
        (HeadOptions(kind="multilabel", classes=[5]), "class 5 is out of range; valid: 0..3"),
        (HeadOptions(kind="regression", output_index=9), "output_index 9 is out of range"),
    ],
)
def test_head_refuses_what_the_model_cannot_give(options, message):
    with pytest.raises(KerascopeError, match=message):
        with_head(_regressor(units=4), options)


@pytest.mark.slow
def test_regression_model_through_the_attribute_stage(tmp_path):
    """`python -m pipeline.stages.attribute model=pretrained attribute.head.kind=...` on a
    one-output regression model: maps, curves and the stored score are its output."""
    model = _regressor(units=3)
    params, x, _ = write_tiny_project(tmp_path, n=6, model=model)
    params["attribute"].update(methods=["saliency", "integrated_gradients", "gradcam"])
    params["attribute"]["integrated_gradients"]["steps"] = 8
    params["attribute"]["faithfulness"]["steps"] = 4
    params["attribute"]["sanity"].update(max_layers=2, steps=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "conf").symlink_to(REPO / "conf")
    settings = [
        "attribute.head.kind=regression",
        "attribute.head.output_index=2",
        "attribute.head.direction=decrease",
    ]
    run(python_cmd("-m", "pipeline.stages.attribute", *settings), tmp_path, timeout=300)
    expected = -model.predict(x, verbose=0)[:, 2]
    grads = _tape_gradient(lambda t: -model(t)[:, 2], x)
    with h5py.File(params["paths"]["attributions"]) as f:
        np.testing.assert_allclose(f["probabilities"][()][:, 0], expected, atol=1e-5)
        np.testing.assert_array_equal(f["targets"][()], 0)
        assert f.attrs["target_mode"] == "regression output 2 (decrease)"
        np.testing.assert_allclose(f["methods/saliency/maps"][()], np.abs(grads).max(-1), atol=1e-6)
        np.testing.assert_allclose(
            f["faithfulness/saliency/deletion"][()][:, 0], expected, atol=1e-5
        )
    metrics = json.loads((tmp_path / "outputs" / "metrics" / "attribute.json").read_text())
    assert {"saliency", "integrated_gradients", "gradcam"} <= set(metrics)
    assert "sanity_passed" in metrics["saliency"]
    refused = run(
        python_cmd("-m", "pipeline.stages.attribute", "attribute.head.kind=multilabel"),
        tmp_path,
        check=False,
    )
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "needs attribute.head.classes" in lines[0]


def test_segmentation_box_through_the_attribute_stage(tmp_path):
    """A fully convolutional segmenter: the CAM layer is the features before the
    class-score map, and the stored score is the class's logits summed over the box."""
    from pipeline.stages.attribute import _main as attribute

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="feat"),
            keras.layers.Conv2D(4, 1, activation="softmax", name="seg"),
        ]
    )
    params, x, _ = write_tiny_project(tmp_path, n=6, model=model)
    params["model"] = {"name": "pretrained", "path": "unused.keras"}
    params["attribute"].update(methods=["saliency", "gradcam"])
    params["attribute"]["head"] = {
        "kind": "segmentation", "class_index": 2, "region": "box", "box": [0, 4, 4, 8]
    }  # fmt: skip
    params["attribute"]["sanity"].update(max_layers=1, steps=1)
    params["attribute"]["faithfulness"]["steps"] = 4
    attribute(params)
    seg = model.get_layer("seg")
    features = keras.Model(model.inputs, seg.input)(x)
    logits = (tf.tensordot(features, seg.kernel[0, 0], 1) + seg.bias).numpy()
    expected = logits[:, 0:4, 4:8, 2].sum(axis=(1, 2))
    with h5py.File(params["paths"]["attributions"]) as f:
        assert f["methods/gradcam"].attrs["layer"] == "feat"
        assert f.attrs["target_mode"] == "segmentation class 2 over the box [0, 4, 4, 8]"
        np.testing.assert_allclose(f["probabilities"][()][:, 0], expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            f["faithfulness/saliency/deletion"][()][:, 0], expected, atol=1e-4
        )
