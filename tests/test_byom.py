"""Bring your own model and data: class names, input spaces, output kinds, unlabeled
data and several outputs, as a user configures them."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from conftest import REPO, copy_repo, python_cmd, run, write_tiny_project
from PIL import Image

from pipeline.errors import KerascopeError

RNG = np.random.default_rng(0)


def _face_model(classes=7):
    """A small 7-class grey 32x32 classifier (like a face-expression net)."""
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((32, 32, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(classes, activation="softmax", name="predictions"),
        ]
    )


def _folder(root: Path, classes: dict[str, int]) -> Path:
    """RGB 40x40 PNG images, one sub-folder per class."""
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_folder_classes_are_matched_by_name_through_dvc(tmp_path):
    """A 2-class folder against a 7-class model: refused in the train stage unless the
    model's classes are named; then labels map by name and inputs reach the model as
    resized grey images in its [-1, 1] range."""
    folder = _folder(tmp_path / "faces", {"happy": 6, "sad": 6})
    model = _face_model()
    model.save(tmp_path / "faces.keras")
    names = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    repo = copy_repo(tmp_path / "repo")
    base = [
        "dvc", "exp", "run",
        "-S", "data=image_folder", "-S", f"data.path={folder}", "-S", "data.image_size=[40,40]",
        "-S", "data.probe_per_class=2", "-S", "data.test_fraction=0.34",
        "-S", "model=pretrained", "-S", f"model.path={tmp_path / 'faces.keras'}",
        "-S", "model.preprocessing={range:[-1,1]}",
        "-S", "attribute.methods=[saliency,gradcam]", "-S", "attribute.sanity.max_layers=1",
        "-S", "maximize.steps=4", "-S", "extract.layers=[conv,gap]",
    ]  # fmt: skip
    refused = run(base, repo, check=False)
    assert refused.returncode != 0
    assert "the data have 2 classes (happy, sad) but the model outputs 7" in refused.stderr
    assert not (repo / "outputs" / "model.keras").exists()
    run([*base, "-S", f"model.class_names={tmp_path / 'classes.txt'}"], repo, timeout=900)
    with h5py.File(repo / "data" / "dataset.h5") as f:
        test_y = f["test/y"][()]
        probe_x = f["probe/x"][()]
    with h5py.File(repo / "outputs" / "evaluation.h5") as f:
        # happy (data 0) is the model's 3, sad (data 1) its 4.
        np.testing.assert_array_equal(f["test/labels"][()], np.where(test_y == 0, 3, 4))
        assert json.loads(f.attrs["class_names"]) == names
    expected = keras.ops.image.resize(
        probe_x @ np.float32([0.299, 0.587, 0.114])[:, None], (32, 32)
    )
    with h5py.File(repo / "outputs" / "activations.h5") as f:
        np.testing.assert_allclose(f["inputs"][()], 2 * np.asarray(expected) - 1, atol=1e-4)
        np.testing.assert_allclose(
            f["predictions"][()], model.predict(f["inputs"][()], verbose=0), atol=1e-5
        )
    page = (repo / "outputs" / "report" / "index.html").read_text()
    assert "happy" in page and "CAM layers" in page


@pytest.mark.slow
def test_unlabeled_data_and_a_logits_model_through_dvc(tmp_path):
    """No labels: targets are the predicted classes, no accuracy anywhere. A model
    without softmax: stored probabilities are the softmax of its logits."""
    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(3, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(4, name="logits"),
        ]
    )
    model.save(tmp_path / "logits.keras")
    np.savez(tmp_path / "x.npz", x=RNG.random((200, 6, 6, 1)).astype("float32"))
    repo = copy_repo(tmp_path / "repo")
    run(
        [
            "dvc",
            "exp",
            "run",
            "-S",
            "data=npz",
            "-S",
            f"data.path={tmp_path / 'x.npz'}",
            "-S",
            "data.y_key=null",
            "-S",
            "model=pretrained",
            "-S",
            f"model.path={tmp_path / 'logits.keras'}",
            "-S",
            "attribute.methods=[saliency,gradcam]",
            "-S",
            "attribute.sanity.max_layers=1",
            "-S",
            "maximize.steps=4",
        ],  # fmt: skip
        repo,
        timeout=900,
    )
    metrics = json.loads((repo / "outputs" / "live" / "metrics.json").read_text())
    assert "test" not in metrics  # no accuracy or loss without labels
    with h5py.File(repo / "outputs" / "attributions.h5") as f:
        x, probs, targets = f["inputs"][()], f["probabilities"][()], f["targets"][()]
        assert len(x) == 20  # ten times probe_per_class for unlabeled data
    logits = model.predict(x, verbose=0)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, softmax, atol=1e-5)
    np.testing.assert_array_equal(targets, logits.argmax(axis=1))
    page = (repo / "outputs" / "report" / "index.html").read_text()
    assert "unlabeled" in page


def test_logits_model_loss_uses_the_logits(tmp_path):
    from pipeline.models import evaluate

    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, name="z")])
    x, y = RNG.random((20, 5)).astype("float32"), np.arange(20) % 3
    scores = evaluate(model, x, y)
    z = model.predict(x, verbose=0)
    expected = keras.losses.sparse_categorical_crossentropy(y, z, from_logits=True).numpy().mean()
    assert scores.loss == pytest.approx(float(expected), rel=1e-5)


def test_binary_sigmoid_head_explains_both_classes():
    """A one-unit sigmoid head is a two-class classifier: class 1's logit is z, class 0's
    is -z, and probabilities are (1 - p, p)."""
    from pipeline.attribution import saliency
    from pipeline.models import class_probabilities

    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid", name="p")]
    )
    x = RNG.random((3, 4)).astype("float32")
    w = model.get_layer("p").kernel.numpy()[:, 0]
    # d z / d x = w: both classes' saliency is |w| (d(-z)/dx = -w).
    np.testing.assert_allclose(saliency(model, x, 1).maps, np.tile(np.abs(w), (3, 1)), atol=1e-6)
    np.testing.assert_allclose(saliency(model, x, 0).maps, np.tile(np.abs(w), (3, 1)), atol=1e-6)
    p = model.predict(x, verbose=0)[:, 0]
    np.testing.assert_allclose(class_probabilities(p[:, None], "sigmoid"), np.c_[1 - p, p])


def test_several_outputs_and_inputs(tmp_path):
    from pipeline.stages.attribute import _main as attribute
    from pipeline.stages.extract import _main as extract

    inputs = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(3, 3, activation="relu", name="conv")(inputs)
    flat = keras.layers.Flatten(name="flat")(conv)
    a = keras.layers.Dense(4, activation="softmax", name="kind")(flat)
    b = keras.layers.Dense(2, activation="softmax", name="side")(flat)
    model = keras.Model(inputs, [a, b])
    params, x, _ = write_tiny_project(tmp_path, n=8, model=model)
    params["model"] = {"name": "pretrained", "path": "unused.keras", "output": "side"}
    params["attribute"]["methods"] = ["saliency"]
    params["attribute"]["sanity"]["enabled"] = False
    params["attribute"]["faithfulness"]["enabled"] = False
    extract(params)
    attribute(params)
    with h5py.File(params["paths"]["activations"]) as f:
        assert set(f["predictions"]) == {"0", "1"}  # extraction keeps every output
    with h5py.File(params["paths"]["attributions"]) as f:
        np.testing.assert_allclose(
            f["probabilities"][()], model.predict(x, verbose=0)[1], atol=1e-6
        )
        assert f["targets"][()].max() <= 1  # the 2-class output is explained
    params["model"]["output"] = "nope"
    with pytest.raises(KerascopeError, match="has no output 'nope'; .*valid: kind, side"):
        attribute(params)
    left, right = keras.Input((8, 8, 1)), keras.Input((8, 8, 1))
    two = keras.Model([left, right], keras.layers.Dense(4)(keras.layers.Flatten()(left + right)))
    two.save(params["paths"]["model"])
    params["model"]["output"] = None
    with pytest.raises(KerascopeError, match="takes 2 inputs"):
        attribute(params)


def test_preprocessing_settings_are_checked_in_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "conf").symlink_to(REPO / "conf")
    for setting, fragment in (
        ("model.preprocessing=bgr", "invalid model.preprocessing 'bgr'; valid: none, tf"),
        ("model.preprocessing={range:[1,-1]}", "needs low < high"),
        ("model.class_names=/no/file.txt", "neither a list nor an existing text file"),
    ):
        proc = run(
            python_cmd("-m", "pipeline.stages.extract", "model=pretrained", setting),
            tmp_path,
            check=False,
        )
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0], proc.stderr


def test_class_names_mismatch_names_the_class():
    from pipeline.data import align_classes

    with pytest.raises(KerascopeError, match="data class 'dog' is not among model.class_names"):
        align_classes(["cat", "dog"], ["cat", "cow"], 2)
    with pytest.raises(KerascopeError, match="lists 3 names but the model outputs 2"):
        align_classes(["cat"], ["a", "b", "c"], 2)
    aligned = align_classes(["sad", "happy"], ["happy", "neutral", "sad"], 3)
    np.testing.assert_array_equal(aligned.map_labels(np.array([0, 1, -1])), [2, 0, -1])
