"""1-D inputs (issue 17): time series (T, F) through every stage, Grad-CAM on Conv1D
against a hand computation, and the sequence figures."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SHRINK, copy_repo, run

from pipeline.attribution import gradcam, saliency
from pipeline.render import sequence_figures as seqfig

RNG = np.random.default_rng(0)


def _hand_set_conv1d():
    """(6, 1) -> Conv1D(2, kernel 2, relu) -> GAP -> Dense(2, linear), weights by hand."""
    model = keras.Sequential(
        [
            keras.Input((6, 1)),
            keras.layers.Conv1D(2, 2, activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling1D(name="gap"),
            keras.layers.Dense(2, name="logits"),
        ]
    )
    kernel = np.float32([[[1.0, -1.0]], [[0.5, 2.0]]])  # (width 2, 1 feature, 2 channels)
    model.get_layer("conv").set_weights([kernel, np.float32([0.0, 0.1])])
    dense = np.float32([[2.0, -1.0], [1.0, 3.0]])  # (2 channels, 2 classes)
    model.get_layer("logits").set_weights([dense, np.zeros(2, "float32")])
    return model, kernel, dense


def test_gradcam_on_conv1d_matches_a_hand_computation():
    model, kernel, dense = _hand_set_conv1d()
    x = RNG.uniform(-1, 1, (3, 6, 1)).astype("float32")
    targets = np.array([0, 1, 1])
    result = gradcam(model, x, targets, layer="conv")
    # A[t, k] = relu(x[t] K[0, 0, k] + x[t + 1] K[1, 0, k] + b[k]), 5 positions.
    acts = np.maximum(
        x[:, :-1, :] * kernel[0, 0] + x[:, 1:, :] * kernel[1, 0] + np.float32([0.0, 0.1]), 0
    )
    # Through the average pooling, dS_c/dA[t, k] = W[k, c] / 5 at every t: the channel
    # weight (its mean over time) is W[k, c] / 5 (Selvaraju et al. 2017, eq. 1).
    weights = dense[:, targets].T / 5.0  # (N, K)
    expected = np.maximum(np.einsum("ntk,nk->nt", acts, weights), 0)
    assert result.raw.shape == (3, 5) and result.maps.shape == (3, 6)
    np.testing.assert_allclose(result.raw, expected, atol=1e-6)


def test_saliency_on_sequences_is_per_time_step_and_feature():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((10, 3)),
            keras.layers.Conv1D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, name="logits"),
        ]
    )
    x = RNG.normal(size=(2, 10, 3)).astype("float32")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        picked = model(xt)[:, 1]
    grads = np.abs(tape.gradient(picked, xt).numpy())
    maps = saliency(model, x, 1).maps
    assert maps.shape == (2, 10, 3)
    np.testing.assert_allclose(maps, grads, atol=1e-6)


def test_sequence_figures_draw_and_refuse_wrong_shapes():
    series = RNG.normal(size=(20, 2))
    fig = seqfig.series_attribution(series, RNG.random(20), title="saliency: class 1")
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
    assert len(fig.axes[0].patches) == 20  # one shaded column per time step
    cam = seqfig.series_attribution(series[:, 0], RNG.random(7))  # CAM at layer resolution
    assert len(cam.axes[0].patches) == 20
    heat = seqfig.series_heatmap(RNG.normal(size=(20, 2)), feature_names=["a", "b"])
    assert heat.axes[0].images[0].get_array().shape == (2, 20)
    grid = seqfig.series_methods(
        series, {"saliency": RNG.random((20, 2)), "gradcam": RNG.random(5)}
    )
    assert len(grid.axes) == 2
    with pytest.raises(ValueError, match=r"\(T,\) or \(T, F\)"):
        seqfig.series_attribution(series, RNG.random((2, 20, 2)))
    with pytest.raises(ValueError, match=r"needs a \(T, F\) map"):
        seqfig.series_heatmap(RNG.random(20))


@pytest.mark.slow
def test_time_series_through_dvc(tmp_path):
    """A Conv1D classifier of (32, 3) series from an npz file, through `dvc exp run`:
    activations over time, maps per time step and feature, Grad-CAM over time, and
    maximization skipped in one line (inputs are not images)."""
    x = RNG.normal(size=(200, 32, 3)).astype("float32")
    y = (x[:, 8:16, 0].sum(1) > 0).astype("int64")
    np.savez(tmp_path / "series.npz", x=x, y=y)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 3)),
            keras.layers.Conv1D(6, 5, activation="relu", name="conv1"),
            keras.layers.Conv1D(6, 3, activation="relu", name="conv2"),
            keras.layers.GlobalAveragePooling1D(name="gap"),
            keras.layers.Dense(2, activation="softmax", name="predictions"),
        ]
    )
    model.save(tmp_path / "series.keras")
    repo = copy_repo(tmp_path / "repo", SHRINK)
    proc = run(
        [
            "dvc",
            "exp",
            "run",
            "-S",
            "data=npz",
            "-S",
            f"data.path={tmp_path / 'series.npz'}",
            "-S",
            "model=pretrained",
            "-S",
            f"model.path={tmp_path / 'series.keras'}",
            "-S",
            "attribute.methods=[saliency,integrated_gradients,gradcam,occlusion]",
            "-S",
            "attribute.sanity.max_layers=1",
        ],  # fmt: skip
        repo,
        timeout=600,
    )
    assert "maximize: inputs of shape (32, 3) are not images (H, W, C); skipped" in proc.stdout
    with h5py.File(repo / "outputs" / "activations.h5") as f:
        stored = {g.attrs["layer_path"]: g for g in f["activations"].values()}
        assert stored["conv1"][()].shape[1:] == (28, 6)  # (time, channels)
    with h5py.File(repo / "outputs" / "attributions.h5") as f:
        inputs, targets = f["inputs"][()], f["targets"][()]
        assert f["methods/saliency/maps"].shape == (len(inputs), 32, 3)
        assert f["methods/gradcam/maps"].shape == (len(inputs), 32)
        assert f["methods/gradcam"].attrs["layer"] == "conv2"
        saliency_maps = f["methods/saliency/maps"][()]
    dense = model.get_layer("predictions")
    features = keras.Model(model.inputs, dense.input)
    xt = tf.constant(inputs)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = tf.matmul(features(xt), dense.kernel) + dense.bias
        picked = tf.gather(logits, targets, axis=1, batch_dims=1)
    grads = np.abs(tape.gradient(picked, xt).numpy())
    np.testing.assert_allclose(saliency_maps, grads, atol=1e-5)
    assert (repo / "outputs" / "report" / "index.html").exists()
    # The report draws each series with its maps over time, not image tiles.
    figures = {p.name for p in (repo / "outputs" / "report" / "figures").iterdir()}
    assert "attributions_0.png" in figures and "attributions.png" not in figures
    assert "prediction_grid.png" not in figures
