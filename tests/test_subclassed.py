"""Subclassed models (issue 17, tf-explain #55): a keras.Model subclass with a custom
call, and a .keras file of a registered custom class, through the library and DVC."""

from __future__ import annotations

import json
import sys
import textwrap

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SHRINK, copy_repo, run, write_tiny_project

from pipeline.attribution import gradcam, integrated_gradients, occlusion, saliency
from pipeline.errors import KerascopeError
from pipeline.graph import functional_of, list_layers

RNG = np.random.default_rng(0)

#: A user's module registering a subclassed model (imported via model.custom_modules).
MODULE = '''
import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="kinds_test")
class SubNet(keras.Model):
    """Conv -> (optional TensorFlow op) -> pooling -> logits, in a custom call."""

    def __init__(self, classes=4, tf_ops=False, **kwargs):
        super().__init__(**kwargs)
        self.classes, self.tf_ops = classes, tf_ops
        self.conv = keras.layers.Conv2D(4, 3, activation="relu", name="conv")
        self.pool = keras.layers.GlobalAveragePooling2D(name="gap")
        self.head = keras.layers.Dense(classes, name="logits")

    def call(self, x):
        h = self.conv(x)
        if self.tf_ops:  # a raw TensorFlow op: the call cannot be traced symbolically
            h = tf.nn.relu(h - 0.1)
        return self.head(self.pool(h))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes, "tf_ops": self.tf_ops}
'''


@pytest.fixture
def subnet(tmp_path, monkeypatch):
    """The SubNet class, from a module on sys.path (as a user's custom module)."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "kinds_subnet.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    sys.modules.pop("kinds_subnet", None)
    import kinds_subnet

    return kinds_subnet.SubNet


def _built(cls, tf_ops=False):
    keras.utils.set_random_seed(4)
    model = cls(tf_ops=tf_ops)
    model(np.zeros((1, 8, 8, 1), "float32"))
    return model


def _tape_saliency(model, x, target):
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        score = model(xt)[:, target]
    return np.abs(tape.gradient(score, xt).numpy()).max(-1)


def test_a_traceable_call_exposes_its_layers(subnet):
    model = _built(subnet)
    graph = functional_of(model)
    assert [i.path for i in list_layers(graph)] == ["conv", "gap", "logits"]
    x = RNG.random((3, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(graph(x), model(x), atol=1e-6)  # same variables
    np.testing.assert_allclose(saliency(graph, x, 2).maps, _tape_saliency(model, x, 2), atol=1e-6)
    cam = gradcam(graph, x, 2)
    assert cam.layer == "conv" and cam.maps.shape == (3, 8, 8)


def test_an_opaque_call_explains_by_model_x_and_refuses_cams_in_one_line(subnet):
    model = _built(subnet, tf_ops=True)
    graph = functional_of(model)
    x = RNG.random((3, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(saliency(graph, x, 1).maps, _tape_saliency(model, x, 1), atol=1e-6)
    assert integrated_gradients(graph, x, 1, steps=4).maps.shape == (3, 8, 8)
    assert occlusion(graph, x, 1, patch_size=4, stride=4).maps.shape == (3, 8, 8)
    with pytest.raises(KerascopeError, match="layers of subclassed model .* are out of reach"):
        gradcam(graph, x, 1)


def test_an_unbuilt_subclassed_model_is_refused_in_one_line(subnet):
    with pytest.raises(KerascopeError, match="was never built"):
        functional_of(subnet())
    assert functional_of(subnet(), (8, 8, 1)).inputs[0].shape[1:] == (8, 8, 1)


def test_opaque_keras_file_through_the_attribute_stage(tmp_path, subnet):
    """A .keras file of the registered class, loaded with model.custom_modules: gradient
    and black-box methods run; a CAM is refused in one line naming what to do."""
    from pipeline.stages.attribute import _main as attribute

    params, x, _ = write_tiny_project(tmp_path, n=6, model=_built(subnet, tf_ops=True))
    params["model"] = {"name": "pretrained", "path": "unused.keras"}
    params["model"]["custom_modules"] = ["kinds_subnet"]
    params["attribute"].update(methods=["saliency", "occlusion"])
    params["attribute"]["sanity"]["enabled"] = False
    params["attribute"]["faithfulness"]["steps"] = 4
    attribute(params)
    with h5py.File(params["paths"]["attributions"]) as f:
        assert f["methods/saliency/maps"].shape == (6, 8, 8)
    params["attribute"]["methods"] = ["gradcam"]
    with pytest.raises(KerascopeError, match="out of reach .* gradient and black-box methods"):
        attribute(params)


@pytest.mark.slow
def test_subclassed_keras_file_through_dvc(tmp_path, subnet):
    """`dvc exp run -S model=pretrained -S model.custom_modules=[...]` on a subclassed
    .keras file: its call is traced, so activations and CAMs reach its layers."""
    # 28x28 MNIST digits go in as they are: a SubNet for that shape, 10 classes.
    keras.utils.set_random_seed(4)
    model = subnet(classes=10)
    model(np.zeros((1, 28, 28, 1), "float32"))
    model.save(tmp_path / "subnet.keras")
    repo = copy_repo(tmp_path / "repo", SHRINK)
    run(
        [
            "dvc",
            "exp",
            "run",
            "-S",
            "model=pretrained",
            "-S",
            f"model.path={tmp_path / 'subnet.keras'}",
            "-S",
            "model.custom_modules=[kinds_subnet]",
            "-S",
            "attribute.methods=[saliency,gradcam]",
            "-S",
            "attribute.sanity.max_layers=1",
            "-S",
            "maximize.steps=4",
            "-S",
            "extract.layers=[conv,gap]",
        ],  # fmt: skip
        repo,
        env={"PYTHONPATH": str(tmp_path / "mods")},
        timeout=600,
    )
    with h5py.File(repo / "outputs" / "activations.h5") as f:
        x = f["inputs"][()]
        stored = {g.attrs["layer_path"]: g for g in f["activations"].values()}
        np.testing.assert_allclose(
            stored["conv"][()], model.conv(tf.constant(x)).numpy(), rtol=1e-4, atol=1e-5
        )
    with h5py.File(repo / "outputs" / "attributions.h5") as f:
        assert f["methods/gradcam"].attrs["layer"] == "conv"
        targets, maps = f["targets"][()], f["methods/saliency/maps"][()]
    expected = np.stack([_tape_saliency(model, x[i : i + 1], t)[0] for i, t in enumerate(targets)])
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    assert json.loads((repo / "outputs" / "metrics" / "attribute.json").read_text())["gradcam"]
    assert (repo / "outputs" / "report" / "index.html").exists()
