"""3-D inputs (issue 17): volumes (D, H, W, C) through every stage, Grad-CAM on Conv3D
against a hand computation, occlusion and deletion/insertion in closed form, and the
depth-slice figures."""

from __future__ import annotations

import json

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SHRINK, copy_repo, run

from pipeline.attribution import deletion_insertion, gradcam, occlusion, rise, saliency
from pipeline.data import load_npz, make_splits
from pipeline.errors import KerascopeError
from pipeline.graph import default_cam_layer
from pipeline.models import build_model
from pipeline.render import volume_figures as volfig
from pipeline.render.concept_figures import class_attribution_grid

RNG = np.random.default_rng(0)


def _linear_resize(values: np.ndarray, shape) -> np.ndarray:
    """Linear interpolation axis by axis with np.interp: half-pixel centres, edges held.

    Output voxel i of an axis of ``out`` voxels samples the input at
    (i + 0.5) * in / out - 0.5, clamped to the first and last voxel (np.interp holds
    the end values), which is what trilinear resizing of cells means.
    """
    out = np.asarray(values, np.float64)
    for axis, size in enumerate(shape):
        old = out.shape[axis]
        where = (np.arange(size) + 0.5) * old / size - 0.5
        out = np.apply_along_axis(
            lambda v, w=where, n=old: np.interp(w, np.arange(n), v), axis, out
        )
    return out


def _conv3d_model():
    """(5, 6, 4, 2) -> Conv3D(3, kernel 2, relu) -> Flatten -> Dense(2, linear)."""
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((5, 6, 4, 2)),
            keras.layers.Conv3D(3, 2, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(2, name="logits"),
        ]
    )


def test_gradcam_on_conv3d_matches_a_hand_computation():
    model = _conv3d_model()
    x = RNG.uniform(0, 1, (3, 5, 6, 4, 2)).astype("float32")
    targets = np.array([0, 1, 1])
    result = gradcam(model, x, targets, layer="conv")
    # The layer's activations A and dS_c/dA from a tape of our own, through the head.
    conv, flatten, dense = (model.get_layer(n) for n in ("conv", "flatten", "logits"))
    with tf.GradientTape() as tape:
        acts = conv(tf.constant(x))
        tape.watch(acts)
        logits = dense(flatten(acts))
        picked = tf.gather(logits, targets, axis=1, batch_dims=1)
    grads = tape.gradient(picked, acts).numpy()
    acts = acts.numpy()
    # Selvaraju et al. (2017) eq. 1-2: channel weights are the gradients' mean over
    # (d, h, w); the map is the ReLU of the channel-weighted sum of activations.
    weights = grads.mean(axis=(1, 2, 3))  # (N, K)
    expected = np.maximum(np.einsum("ndhwk,nk->ndhw", acts, weights), 0)
    assert result.layer == "conv"
    assert result.raw.shape == (3, 4, 5, 3) and result.maps.shape == (3, 5, 6, 4)
    assert expected.max() > 0  # the check is not between two all-zero maps
    np.testing.assert_allclose(result.raw, expected, atol=1e-5)
    # Upsampled trilinearly to the input's (D, H, W) (non-integer factors on each axis).
    upsampled = np.stack([_linear_resize(e, (5, 6, 4)) for e in expected])
    np.testing.assert_allclose(result.maps, upsampled, atol=1e-5)
    # The render stage's resizing (scipy) lays raw maps over the same voxels.
    np.testing.assert_allclose(
        volfig.resize_volume(expected[0], (5, 6, 4)), upsampled[0], atol=1e-6
    )


def test_default_cam_layer_is_the_last_conv3d_of_the_zoo_model():
    model = build_model("volume_cnn", (16, 16, 16, 1), 8)
    assert default_cam_layer(model) == "conv2"
    assert model.get_layer("conv2").output.shape == (None, 8, 8, 8, 16)
    with pytest.raises(KerascopeError, match=r"needs volumes \(D, H, W, C\)"):
        build_model("volume_cnn", (28, 28, 1), 10)


def test_saliency_on_volumes_is_the_max_gradient_over_channels():
    model = _conv3d_model()
    x = RNG.normal(size=(2, 5, 6, 4, 2)).astype("float32")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        picked = model(xt)[:, 1]
    grads = np.abs(tape.gradient(picked, xt).numpy()).max(axis=-1)
    maps = saliency(model, x, 1).maps
    assert maps.shape == (2, 5, 6, 4)
    np.testing.assert_allclose(maps, grads, atol=1e-6)


def _linear_volume_model(weights: np.ndarray):
    """logits = (x . w_0, x . w_1): a linear score, so occlusion has a closed form."""
    model = keras.Sequential(
        [keras.Input(weights.shape[:-1]), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    model.layers[-1].set_weights([weights.reshape(-1, 2), np.zeros(2, "float32")])
    return model


def test_occlusion_on_volumes_hides_cubes():
    w = RNG.normal(size=(4, 4, 4, 1, 2)).astype("float32")
    model = _linear_volume_model(w)
    x = RNG.uniform(0, 1, (2, 4, 4, 4, 1)).astype("float32")
    maps = occlusion(model, x, [0, 1], patch_size=2, stride=2, baseline=0.0).maps
    assert maps.shape == (2, 4, 4, 4)
    # Eight disjoint 2x2x2 cubes: hiding one (setting it to 0) drops the linear score
    # by the sum of w * x over it, and each voxel lies in exactly one cube.
    for n, target in enumerate([0, 1]):
        contrib = (x[n, ..., 0] * w[..., 0, target]).reshape(2, 2, 2, 2, 2, 2)
        per_cube = contrib.sum(axis=(1, 3, 5))
        expected = np.repeat(np.repeat(np.repeat(per_cube, 2, 0), 2, 1), 2, 2)
        np.testing.assert_allclose(maps[n], expected, atol=1e-5)


def test_grid_black_box_methods_refuse_volumes_in_one_line():
    model = _linear_volume_model(np.ones((4, 4, 4, 1, 2), "float32"))
    with pytest.raises(
        KerascopeError,
        match=r"^rise needs images .*; gradient and CAM methods work on volumes, .* use occlusion$",
    ):
        rise(model, np.zeros((1, 4, 4, 4, 1), "float32"), 0)


def test_deletion_insertion_on_volumes_follows_the_ranked_voxels():
    w = RNG.normal(size=(4, 4, 4, 1, 2)).astype("float32")
    model = _linear_volume_model(w)
    x = RNG.uniform(0, 1, (2, 4, 4, 4, 1)).astype("float32")
    maps = RNG.permutation(2 * 64).reshape(2, 4, 4, 4).astype("float32")  # distinct ranks
    targets = np.array([1, 0])
    curves = deletion_insertion(model, x, targets, maps, steps=4, substrate_kind="zeros")
    assert curves.deletion.shape == (2, 5)

    def probability(v, target):
        logits = v.reshape(-1) @ w.reshape(-1, 2)
        e = np.exp(logits - logits.max())
        return e[target] / e.sum()

    for n, target in enumerate(targets):
        order = np.argsort(-maps[n].ravel())
        for step, count in enumerate([0, 16, 32, 48, 64]):
            top = np.zeros(64, bool)
            top[order[:count]] = True
            top = top.reshape(4, 4, 4, 1)
            deleted = np.where(top, 0.0, x[n])  # the zeros substrate replaces the top voxels
            inserted = np.where(top, x[n], 0.0)
            assert curves.deletion[n, step] == pytest.approx(probability(deleted, target), abs=1e-5)
            assert curves.insertion[n, step] == pytest.approx(
                probability(inserted, target), abs=1e-5
            )


def test_volume_figures_draw_slices_and_refuse_wrong_shapes():
    np.testing.assert_array_equal(volfig.slice_indices(16, 6), [0, 3, 6, 9, 12, 15])
    np.testing.assert_array_equal(volfig.slice_indices(3, 6), [0, 1, 2])
    volume = RNG.random((16, 8, 8, 1))
    fig = volfig.volume_methods(
        volume, {"saliency": RNG.random((16, 8, 8)), "gradcam": RNG.random((4, 2, 2))}, count=5
    )
    grid = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(grid) == 3 * 5  # input row + one row per method, 5 slices each
    # A method's row: the slice, then its map resized to the slice's 8 x 8.
    assert grid[5].images[1].get_array().shape == (8, 8)
    acts = volfig.volume_feature_maps(RNG.random((4, 6, 6, 12)), "conv", count=3, max_channels=2)
    assert sum(1 for ax in acts.axes if ax.images) == 2 * 3
    rows = volfig.volume_grid(
        RNG.random((2, 16, 8, 8, 1)), ["a", "b"], count=4, overlays=RNG.random((2, 4, 4, 4))
    )
    assert sum(1 for ax in rows.axes if len(ax.images) == 2) == 2 * 4
    # Per-class mean maps of volumes (classes, D, H, W): each tile is the depth mean.
    means = RNG.random((2, 5, 4, 3))
    tiles = class_attribution_grid(means, ["a", "b"])
    np.testing.assert_allclose(tiles.axes[1].images[0].get_array(), means[1].mean(axis=0))
    with pytest.raises(ValueError, match=r"\(D, H, W, C\)"):
        volfig.volume_slices(RNG.random((8, 8)))
    with pytest.raises(ValueError, match=r"\(d, h, w, channels\)"):
        volfig.volume_feature_maps(RNG.random((8, 8, 3)), "conv")


def test_npz_volumes_load_scaled_and_split_with_a_probe_set(tmp_path):
    x = RNG.integers(0, 256, (40, 3, 4, 5, 2)).astype("uint8")
    y = np.arange(40) % 4
    np.savez(tmp_path / "v.npz", x=x, y=y)
    raw = load_npz(tmp_path / "v.npz")
    assert raw.x.shape == (40, 3, 4, 5, 2) and raw.x.dtype == np.float32
    np.testing.assert_allclose(raw.x, x / 255.0, atol=1e-7)  # 8-bit volumes as 8-bit images
    splits = make_splits(raw, seed=0, val_fraction=0.2, test_fraction=0.25, probe_per_class=2)
    xte, yte = splits.test
    assert xte.shape[1:] == (3, 4, 5, 2)
    # Two probe volumes per class, from the test split.
    np.testing.assert_array_equal(np.bincount(yte[splits.probe_index]), [2, 2, 2, 2])


def octant_volumes(n: int, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Noise volumes with one bright Gaussian blob; the class is the blob's octant (0-7)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 8
    x = rng.normal(0.2, 0.05, (n, size, size, size, 1))
    half = size // 2
    grid = np.indices((size,) * 3).transpose(1, 2, 3, 0)
    for i, c in enumerate(y):
        octant = np.array([(c >> 2) & 1, (c >> 1) & 1, c & 1])
        centre = octant * half + rng.uniform(1, half - 1, 3)
        x[i, ..., 0] += np.exp(-((grid - centre) ** 2).sum(-1) / 2.0)
    return np.clip(x, 0, 1).astype("float32"), y.astype("int64")


@pytest.mark.slow
def test_volumes_through_dvc(tmp_path):
    """The volume_cnn zoo model trained on (8, 8, 8, 1) volumes from an npz file, through
    `dvc exp run`: Conv3D activations (N, D, H, W, C), maps per voxel, Grad-CAM upsampled
    to the volume, occlusion by cubes, maximization skipped in one line, and a report of
    depth slices."""
    x, y = octant_volumes(240)
    np.savez(tmp_path / "volumes.npz", x=x, y=y)
    repo = copy_repo(tmp_path / "repo", SHRINK)
    proc = run(
        [
            "dvc",
            "exp",
            "run",
            "-S",
            "data=npz",
            "-S",
            f"data.path={tmp_path / 'volumes.npz'}",
            "-S",
            "model=volume_cnn",
            "-S",
            "train.epochs=6",
            "-S",
            "train.batch_size=32",
            "-S",
            "attribute.methods=[saliency,gradcam,occlusion]",
            # conv2's 4x4x4 map, upsampled to 8x8x8 (the default rule picks conv1 here,
            # the last layer of at least 7 positions per axis: checked below).
            "-S",
            "attribute.layer=conv2",
            "-S",
            "attribute.occlusion.patch_size=4",
            "-S",
            "attribute.sanity.max_layers=1",
            "-S",
            "render.volume_slices=4",
        ],  # fmt: skip
        repo,
        timeout=600,
    )
    assert "maximize: inputs of shape (8, 8, 8, 1) are not images (H, W, C); skipped" in proc.stdout
    scores = json.loads((repo / "outputs" / "metrics" / "train.json").read_text())
    assert scores["accuracy"] >= 0.8  # test accuracy: the octant rule was learned
    with h5py.File(repo / "outputs" / "activations.h5") as f:
        stored = {g.attrs["layer_path"]: g for g in f["activations"].values()}
        assert stored["conv1"][()].shape[1:] == (8, 8, 8, 8)  # (depth, height, width, channels)
        assert stored["conv2"][()].shape[1:] == (4, 4, 4, 16)
        # Health per channel over every voxel: a dead channel never rose above zero.
        health = json.loads((repo / "outputs" / "metrics" / "layer_health.json").read_text())
        for layer in ("conv1", "conv2"):
            never_positive = stored[layer][()].max(axis=(0, 1, 2, 3)) <= 0
            assert health["layers"][layer]["units"] == len(never_positive)
            assert health["layers"][layer]["dead_fraction"] == pytest.approx(never_positive.mean())
    with h5py.File(repo / "outputs" / "attributions.h5") as f:
        inputs, targets = f["inputs"][()], f["targets"][()]
        n = len(inputs)
        assert f["methods/saliency/maps"].shape == (n, 8, 8, 8)
        assert f["methods/occlusion/maps"].shape == (n, 8, 8, 8)
        assert f["methods/gradcam"].attrs["layer"] == "conv2"
        assert f["methods/gradcam/raw"].shape == (n, 4, 4, 4)
        raw, maps = f["methods/gradcam/raw"][()], f["methods/gradcam/maps"][()]
        assert f["faithfulness/gradcam/deletion"].shape[0] == n
        saliency_maps = f["methods/saliency/maps"][()]
    # The stored Grad-CAM is its raw map upsampled trilinearly (checked independently).
    for i in range(n):
        np.testing.assert_allclose(maps[i], _linear_resize(raw[i], (8, 8, 8)), atol=1e-5)
    # Saliency against a tape of our own on the trained model's logits.
    model = keras.saving.load_model(repo / "outputs" / "model.keras")
    assert default_cam_layer(model) == "conv1"
    dense = model.get_layer("predictions")
    features = keras.Model(model.inputs, dense.input)
    xt = tf.constant(inputs)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        logits = tf.matmul(features(xt), dense.kernel) + dense.bias
        picked = tf.gather(logits, targets, axis=1, batch_dims=1)
    grads = np.abs(tape.gradient(picked, xt).numpy()).max(axis=-1)
    # Nearly every voxel agrees to 1e-5. A handful may not: where two max-pool candidates
    # (or a ReLU input and zero) differ by rounding, summing in another order (another
    # process, thread count or batch) routes that unit's gradient elsewhere. One such
    # unit moved 12 of 8,192 voxels of one input under load.
    close = np.isclose(saliency_maps, grads, rtol=0, atol=1e-5)
    assert close.mean() >= 0.995, (close.mean(), np.argwhere(~close)[:5])
    assert np.corrcoef(saliency_maps.ravel(), grads.ravel())[0, 1] > 0.999
    # The report shows depth slices: per-input attribution rows, the probe volumes,
    # each Conv3D layer's channels; no image grid.
    figures = {p.name for p in (repo / "outputs" / "report" / "figures").iterdir()}
    assert {"attributions_0.png", "prediction_slices.png", "act_conv2_0.png"} <= figures
    assert "overlay_conv1.png" in figures
    assert "attributions.png" not in figures and "prediction_grid.png" not in figures
