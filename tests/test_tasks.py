"""Regression and segmentation data and models through the whole pipeline (issue 17):
targets and masks in the npz source, task metrics in the train stage, the report's
summary. Numbers are checked against scikit-learn and an independent GradientTape."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import SHRINK, copy_repo, run

from pipeline.data import DataOptions, RawData, load_npz, make_splits
from pipeline.errors import KerascopeError
from pipeline.tasks import predicted_masks, regression_metrics, segmentation_metrics

RNG = np.random.default_rng(0)


def test_regression_metrics_match_scikit_learn():
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    targets = RNG.normal(size=(30, 2))
    outputs = targets + RNG.normal(scale=0.5, size=(30, 2))
    got = regression_metrics(targets, outputs)
    assert got["mse"] == pytest.approx(mean_squared_error(targets, outputs))
    assert got["mae"] == pytest.approx(mean_absolute_error(targets, outputs))
    assert got["r2"] == pytest.approx(r2_score(targets, outputs))
    # One target per input as (N,) against a (N, 1) output.
    one = regression_metrics(targets[:, 0], outputs[:, :1])
    assert one["r2"] == pytest.approx(r2_score(targets[:, 0], outputs[:, 0]))
    with pytest.raises(KerascopeError, match="targets have 2 value"):
        regression_metrics(targets, outputs[:, :1])


def test_segmentation_metrics_match_a_hand_count():
    masks = np.array([[[0, 0], [1, 2]]])
    scores = np.zeros((1, 2, 2, 3))
    for (i, j), cls in np.ndenumerate(np.array([[0, 1], [1, 1]])):
        scores[0, i, j, cls] = 1.0
    predicted = predicted_masks(scores)
    np.testing.assert_array_equal(predicted, [[[0, 1], [1, 1]]])
    got = segmentation_metrics(masks, predicted)
    # Class 0: 1/2, class 1: 1/3, class 2: 0/1 (in the truth, never predicted).
    assert got["pixel_accuracy"] == pytest.approx(2 / 4)
    assert got["mean_iou"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    # One sigmoid channel: class 1 above 0.5.
    np.testing.assert_array_equal(predicted_masks(np.full((1, 1, 2, 1), 0.6), "sigmoid"), 1)
    with pytest.raises(KerascopeError, match="masks are"):
        segmentation_metrics(masks, predicted[:, :1])


def test_npz_targets_and_masks_are_checked(tmp_path):
    x = RNG.random((20, 6, 6, 1)).astype("float32")
    np.savez(tmp_path / "r.npz", x=x, y=RNG.normal(size=20), bad=np.full(20, np.nan))
    raw = load_npz(tmp_path / "r.npz", task="regression")
    assert raw.y.dtype == np.float32 and raw.class_names == [] and raw.task == "regression"
    with pytest.raises(KerascopeError, match="NaN or Inf"):
        load_npz(tmp_path / "r.npz", y_key="bad", task="regression")
    with pytest.raises(KerascopeError, match="needs its targets"):
        load_npz(tmp_path / "r.npz", y_key=None, task="regression")
    masks = RNG.integers(0, 3, (20, 6, 6))
    np.savez(tmp_path / "s.npz", x=x, y=masks, flat=masks[:, 0], half=masks / 2)
    raw = load_npz(tmp_path / "s.npz", task="segmentation")
    assert raw.class_names == ["0", "1", "2"] and raw.y.shape == (20, 6, 6)
    with pytest.raises(KerascopeError, match=r"expected \(N, H, W\)"):
        load_npz(tmp_path / "s.npz", y_key="flat", task="segmentation")
    with pytest.raises(KerascopeError, match="whole numbers"):
        load_npz(tmp_path / "s.npz", y_key="half", task="segmentation")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (DataOptions(name="npz", path="d.npz", task="ranking"), "invalid data.task 'ranking'"),
        (DataOptions(task="regression"), "data.task=regression needs your own arrays"),
    ],
)
def test_data_task_is_checked_in_one_line(options, message):
    with pytest.raises(KerascopeError, match=message):
        options.check()


def test_regression_splits_and_probe_span_the_target_range():
    y = np.arange(200, dtype="float32")
    raw = RawData(RNG.random((200, 2)).astype("float32"), y, [], task="regression")
    splits = make_splits(raw, seed=0, val_fraction=0.2, test_fraction=0.2, probe_per_class=1)
    test_y = splits.test[1]
    # Stratified by quintile: every fifth of the range is in the test split (8 each).
    np.testing.assert_array_equal(np.bincount((test_y // 40).astype(int)), [8] * 5)
    probe = test_y[splits.probe_index]
    np.testing.assert_array_equal(np.sort(probe // 40), [0, 1, 2, 3, 4])
    masks = RawData(raw.x, np.zeros((200, 2, 2), np.int64), ["a"], task="segmentation")
    splits = make_splits(masks, seed=0, val_fraction=0.2, test_fraction=0.2, probe_per_class=1)
    assert len(splits.probe_index) == 10  # drawn like unlabeled data: 10 x probe_per_class


def _exp_run(repo, *settings, check=True):
    cmd = ["dvc", "exp", "run"]
    for setting in settings:
        cmd += ["-S", setting]
    return run(cmd, repo, check=check, timeout=600)


def _test_predictions(repo, model):
    with h5py.File(repo / "data" / "dataset.h5") as f:
        x, y = f["test/x"][()], f["test/y"][()]
    return model.predict(x, verbose=0), y


FAST = [
    "attribute.methods=[saliency,integrated_gradients,gradcam]",
    "attribute.sanity.max_layers=1",
    "maximize.steps=8",
]


@pytest.mark.slow
def test_regression_model_through_dvc(tmp_path):
    """`dvc exp run -S data=npz -S data.task=regression -S model=pretrained -S
    attribute.head.kind=regression`: R², MSE, MAE in train.json; saliency of the output."""
    import keras
    import tensorflow as tf
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    # Images of random brightness; the target is the top-left quadrant's mean.
    x = (RNG.random((80, 12, 12, 1)) * RNG.random((80, 1, 1, 1))).astype("float32")
    y = x[:, :6, :6, 0].mean(axis=(1, 2)) * 4 - 1
    np.savez(tmp_path / "reg.npz", x=x, y=y)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, keras.layers.Dense(1, name="value")(h))
    model.compile(keras.optimizers.Adam(0.01), "mse")
    model.fit(x, y, epochs=40, batch_size=16, verbose=0)
    model.save(tmp_path / "reg.keras")
    repo = copy_repo(tmp_path / "repo", SHRINK)
    data = ["data=npz", f"data.path={tmp_path / 'reg.npz'}", "data.task=regression"]
    proc = _exp_run(
        repo,
        *data,
        "model=pretrained",
        f"model.path={tmp_path / 'reg.keras'}",
        "attribute.head.kind=regression",
        *FAST,
    )
    assert "regression, 1 target(s)" in proc.stdout
    outputs, targets = _test_predictions(repo, model)
    metrics = json.loads((repo / "outputs" / "metrics" / "train.json").read_text())
    assert metrics["accuracy"] is None and metrics["pixel_accuracy"] is None
    assert metrics["mse"] == pytest.approx(mean_squared_error(targets, outputs[:, 0]), rel=1e-4)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(targets, outputs[:, 0]), rel=1e-4)
    assert metrics["r2"] == pytest.approx(r2_score(targets, outputs[:, 0]), rel=1e-4, abs=1e-5)
    with h5py.File(repo / "outputs" / "attributions.h5") as f:
        explained, maps = f["inputs"][()], f["methods/saliency/maps"][()]
        assert f.attrs["target_mode"] == "regression output 0 (value)"
        np.testing.assert_allclose(f["probabilities"][()][:, 0], model(explained)[:, 0], atol=1e-5)
    xt = tf.constant(explained)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        value = model(xt)[:, 0]
    np.testing.assert_allclose(maps, np.abs(tape.gradient(value, xt).numpy())[..., 0], atol=1e-6)
    page = (repo / "outputs" / "report" / "index.html").read_text()
    assert f"Regression: test R² {metrics['r2']:.3f}" in page and "Test accuracy" not in page
    assert metrics["r2"] > 0.5  # a model that learned: the report explains something
    # A zoo model cannot be trained on regression targets: one line, no traceback.
    refused = _exp_run(repo, *data, "model=mnist_cnn", check=False)
    assert "is a zoo classifier and cannot be trained for data.task=regression" in (
        refused.stdout + refused.stderr
    )
    assert "Traceback" not in refused.stdout + refused.stderr


@pytest.mark.slow
def test_segmentation_model_through_dvc(tmp_path):
    """`dvc exp run -S data=npz -S data.task=segmentation -S attribute.head.kind=
    segmentation`: pixel accuracy and mean IoU in train.json, predicted masks in the report."""
    import keras
    import tensorflow as tf
    from sklearn.metrics import jaccard_score

    x = RNG.random((60, 12, 12, 1)).astype("float32")
    masks = np.digitize(x[..., 0], [0.4, 0.7])  # 3 classes by brightness
    np.savez(tmp_path / "seg.npz", x=x, y=masks.astype("uint8"))
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="feat")(inputs)
    outputs = keras.layers.Conv2D(3, 1, activation="softmax", name="seg")(h)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.03), "sparse_categorical_crossentropy")
    model.fit(x, masks, epochs=30, batch_size=16, verbose=0)
    model.save(tmp_path / "seg.keras")
    repo = copy_repo(tmp_path / "repo", SHRINK)
    settings = [
        "data=npz",
        f"data.path={tmp_path / 'seg.npz'}",
        "data.task=segmentation",
        "data.class_names=[dark,mid,bright]",
        "model=pretrained",
        f"model.path={tmp_path / 'seg.keras'}",
        *FAST,
    ]
    head = ["attribute.head.kind=segmentation", "attribute.head.class_index=2"]
    proc = _exp_run(repo, *settings, *head)
    assert "segmentation masks (12, 12), 3 classes" in proc.stdout
    scores, truth = _test_predictions(repo, model)
    predicted = scores.argmax(-1)
    metrics = json.loads((repo / "outputs" / "metrics" / "train.json").read_text())
    assert metrics["accuracy"] is None and metrics["r2"] is None
    assert metrics["pixel_accuracy"] == pytest.approx(np.mean(predicted == truth))
    iou = jaccard_score(truth.reshape(-1), predicted.reshape(-1), average="macro")
    assert metrics["mean_iou"] == pytest.approx(iou)
    with h5py.File(repo / "outputs" / "attributions.h5") as f:
        explained, stored = f["inputs"][()], f["probabilities"][()][:, 0]
        maps = f["methods/saliency/maps"][()]
        assert f.attrs["target_mode"].startswith("segmentation class 2")
        assert json.loads(f.attrs["class_names"]) == ["dark", "mid", "bright"]
    # The explained score: class 2's logits (before the softmax) summed where class 2 is
    # predicted; its gradient from an independent GradientTape (the region held fixed).
    seg = model.get_layer("seg")
    features = keras.Model(model.inputs, seg.input)
    xt = tf.constant(explained)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = tf.tensordot(features(xt), seg.kernel[0, 0], 1) + seg.bias
        region = tf.cast(tf.argmax(logits, -1) == 2, tf.float32)
        score = tf.reduce_sum(logits[..., 2] * region, axis=[1, 2])
    np.testing.assert_allclose(stored, score.numpy(), rtol=1e-4, atol=1e-4)
    grads = np.abs(tape.gradient(score, xt).numpy())[..., 0]
    np.testing.assert_allclose(maps, grads, rtol=1e-4, atol=1e-5)
    page = (repo / "outputs" / "report" / "index.html").read_text()
    assert f"mean IoU {metrics['mean_iou']:.3f} on" in page and "Test accuracy" not in page
    assert "Probe inputs with their true and predicted masks" in page
    # Without a head the attribute stage stops in one line: masks are not classes.
    refused = _exp_run(repo, *settings, check=False)
    assert "data.task=segmentation, which has no classes to explain" in (
        refused.stdout + refused.stderr
    )
    assert "Traceback" not in refused.stdout + refused.stderr
