"""Render figures and the HTML builder: every figure drawn, non-blank, right tile counts.

Numbers shown in figures are checked against independent computations (scikit-learn's
confusion matrix and PCA, hand-set activations).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from PIL import Image

from pipeline.render import figures as fig_lib
from pipeline.render.report import Section, anchor, build_html, esc

RNG = np.random.default_rng(0)


CLASSES = ["zero", "one", "two", "three"]


def _pixels(figure) -> np.ndarray:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=50)
    return np.asarray(Image.open(buffer).convert("L"), dtype=np.float64)


def _image_axes(figure):
    return [ax for ax in figure.axes if ax.images]


def _texts(figure) -> str:
    parts = [t.get_text() for t in figure.findobj(lambda o: hasattr(o, "get_text"))]
    return "\n".join(p for p in parts if isinstance(p, str))


def _all_figures():
    n, k = 6, len(CLASSES)
    inputs = RNG.random((n, 8, 8, 1))
    labels = np.arange(n) % k
    probabilities = RNG.dirichlet(np.ones(k), size=n)
    acts = np.maximum(RNG.normal(size=(n, 20)), 0)
    maps = {"saliency": RNG.random((n, 8, 8)), "gradcam": RNG.random((n, 8, 8))}
    curves = {m: (RNG.random((n, 5)), RNG.random((n, 5))) for m in ("saliency", "random")}
    return {
        "health_strip": fig_lib.health_strip(
            ["a", "b", "c"], [0.1, 0.0, 0.6], [0.0, 0.3, 0.0], [("a", 0)]
        ),
        "architecture": fig_lib.architecture_diagram(
            [("a", "Conv2D", "(6,6,3)"), ("b", "Dense", "(4,)")]
        ),
        "training_curves": fig_lib.training_curves(
            {"loss": np.array([1.0, 0.5]), "val_loss": np.array([1.2, 0.8])}
        ),
        "confusion_matrix": fig_lib.confusion_matrix(labels, probabilities.argmax(1), CLASSES),
        "prediction_grid": fig_lib.prediction_grid(inputs, labels, probabilities, CLASSES),
        "feature_maps": fig_lib.feature_maps(RNG.random((6, 6, 5)), "conv"),
        "dense": fig_lib.dense_activations(acts, "dense", acts.max(0) <= 0, np.zeros(20, bool), 2),
        "recurrent": fig_lib.recurrent_activations(RNG.normal(size=(7, 5)), "lstm"),
        "projection": fig_lib.projection(RNG.normal(size=(n, 12)), labels, CLASSES, "pca"),
        "overlay": fig_lib.heatmap_overlays(inputs[:3], RNG.random((3, 4, 4, 2)), "conv"),
        "attributions": fig_lib.attribution_grid(inputs[:2], maps, labels[:2], CLASSES),
        "faithfulness": fig_lib.faithfulness_curves(np.linspace(0, 1, 5), curves),
        "sanity": fig_lib.sanity_bars({"saliency": 0.2, "gradcam": 0.9}, 0.5),
        "maximization": fig_lib.maximization_grid(
            RNG.random((4, 8, 8, 1)), np.arange(4), np.ones(4), "out", CLASSES
        ),
    }


def test_every_figure_is_drawn_and_not_blank():
    for name, figure in _all_figures().items():
        assert _pixels(figure).var() > 1.0, name


def test_tile_counts():
    # 64 channels: one mosaic image of 8 x 8 tiles; each tile is its channel, unchanged
    # under the shared scale, and the gaps are blank (NaN).
    maps = RNG.random((6, 6, 64))
    grid = fig_lib.feature_maps(maps, "conv64")
    (image,) = _image_axes(grid)[0].images
    mosaic = np.ma.filled(image.get_array(), np.nan)
    gap = 1
    for channel in (0, 9, 63):
        r, c = divmod(channel, 8)
        tile = mosaic[r * (6 + gap) : r * (6 + gap) + 6, c * (6 + gap) : c * (6 + gap) + 6]
        np.testing.assert_array_equal(tile, maps[..., channel])
    assert mosaic.shape == (8 * 6 + 7 * gap, 8 * 6 + 7 * gap)
    assert np.isnan(mosaic[6, :]).all() and np.isnan(mosaic[:, 6]).all()
    assert "shared scale" in grid._suptitle.get_text()
    # Per channel: 10 tiles (4 columns: ceil(sqrt(10))), each stretched to [0, 1].
    per_channel = fig_lib.feature_maps(maps, "c", "gray", "per_channel", 10)
    tiles = np.ma.filled(_image_axes(per_channel)[0].images[0].get_array(), np.nan)
    first = tiles[:6, :6]
    expected = (maps[..., 0] - maps[..., 0].min()) / np.ptp(maps[..., 0])
    np.testing.assert_allclose(first, expected)
    assert tiles.shape == (3 * 6 + 2 * gap, 4 * 6 + 3 * gap)
    assert "first 10 of 64 channels" in per_channel._suptitle.get_text()
    assert "own range" in per_channel._suptitle.get_text()
    inputs = RNG.random((3, 8, 8, 1))
    maps = {m: RNG.random((3, 8, 8)) for m in ("saliency", "gradcam", "scorecam")}
    # One row per input: the input, then one overlay per method.
    assert len(_image_axes(fig_lib.attribution_grid(inputs, maps, np.zeros(3, int), CLASSES))) == 12
    probs = np.eye(4)[[0, 1, 2, 0, 1, 2, 0, 1, 2, 3]]
    preds = fig_lib.prediction_grid(RNG.random((10, 8, 8, 1)), np.arange(10) % 4, probs, CLASSES)
    assert len(_image_axes(preds)) == 10
    # Exactly the misclassified inputs (3, 7, 9... where label != argmax) are red.
    red = [ax for ax in _image_axes(preds) if ax.title.get_color() == "#c00000"]
    wrong = int((np.arange(10) % 4 != probs.argmax(1)).sum())
    assert len(red) == wrong
    # Class logits: one image per class, labelled with the class name.
    images = RNG.random((4, 8, 8, 1))
    classes = fig_lib.maximization_grid(
        images, np.arange(4), np.array([1.0, 0.5, np.nan, 2.0]), "out", CLASSES
    )
    titles = [ax.get_title() for ax in _image_axes(classes)]
    assert titles == ["zero\nreach 1.00", "one\nreach 0.50", "two\nreach n/a", "three\nreach 2.00"]


def test_heatmap_overlays_blend_each_input_with_its_heat():
    import matplotlib.pyplot as plt

    viridis = plt.get_cmap("viridis")
    # 2x2 activation maps whose channel mean is a ramp: bilinear upsampling to 8x8 gives
    # the ramp k/7 in closed form (the corners map onto the corners). Input 0 ramps left
    # to right, input 1 top to bottom, input 2 right to left (scaled by 3, which the
    # division by the maximum removes).
    ramp = np.linspace(0, 1, 8)
    expected = [np.tile(ramp, (8, 1)), np.tile(ramp, (8, 1)).T, np.tile(ramp[::-1], (8, 1))]
    means = [np.array([[0, 1], [0, 1]]), np.array([[0, 0], [1, 1]]), 3 * np.array([[1, 0], [1, 0]])]
    acts = np.stack([np.stack([2 * m, 0 * m], axis=-1) for m in means]).astype(float)
    inputs = RNG.random((3, 8, 8, 1))
    figure = fig_lib.heatmap_overlays(inputs, acts, "conv", cmap="viridis", alpha=0.3)
    (mosaic,) = [np.asarray(im.get_array()) for ax in _image_axes(figure) for im in ax.images]
    gap = 1
    assert mosaic.shape == (8, 3 * 8 + 2 * gap, 3)
    for i in range(3):
        panel = mosaic[:, i * (8 + gap) : i * (8 + gap) + 8]
        grey = (inputs[i, ..., 0] - inputs[i].min()) / np.ptp(inputs[i])
        blend = 0.3 * viridis(expected[i])[..., :3] + 0.7 * grey[..., None]
        np.testing.assert_allclose(panel, blend, atol=1e-9)
    labels = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert labels == ["input 0", "input 1", "input 2"]
    # Five channels are not a colour image: the input is drawn as the grey of their mean.
    five = np.repeat(inputs[:1], 5, axis=-1) * np.arange(1, 6)
    figure = fig_lib.heatmap_overlays(five, acts[:1], "conv", cmap="viridis", alpha=0.3)
    (panel,) = [np.asarray(im.get_array()) for ax in _image_axes(figure) for im in ax.images]
    grey = (inputs[0, ..., 0] - inputs[0].min()) / np.ptp(inputs[0])
    blend = 0.3 * viridis(expected[0])[..., :3] + 0.7 * grey[..., None]
    np.testing.assert_allclose(panel, blend, atol=1e-9)
    # A NaN activation: no heat there, the input alone, and the title says so.
    figure = fig_lib.heatmap_overlays(inputs[:1], np.full((1, 2, 2, 2), np.nan), "conv")
    (panel,) = [np.asarray(im.get_array()) for ax in _image_axes(figure) for im in ax.images]
    grey = (inputs[0, ..., 0] - inputs[0].min()) / np.ptp(inputs[0])
    np.testing.assert_allclose(panel, np.repeat(grey[..., None], 3, axis=-1), atol=1e-9)
    assert "not finite" in figure._suptitle.get_text()


def test_feature_map_channels_are_numbered_in_the_margins():
    # 64 channels of 6x6: rows labelled by their first channel, columns by the offset,
    # each label at its tile's centre (tile pitch 6 + a 1-pixel gap).
    figure = fig_lib.feature_maps(RNG.random((6, 6, 64)), "conv")
    ax = _image_axes(figure)[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(8 * r) for r in range(8)]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"+{c}" for c in range(8)]
    np.testing.assert_allclose(ax.get_xticks(), [7 * c + 2.5 for c in range(8)])
    np.testing.assert_allclose(ax.get_yticks(), [7 * r + 2.5 for r in range(8)])
    # 10 channels: 4 columns (ceil(sqrt(10))), rows start at channels 0, 4 and 8.
    figure = fig_lib.feature_maps(RNG.random((6, 6, 10)), "conv")
    ax = _image_axes(figure)[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "4", "8"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["+0", "+1", "+2", "+3"]
    # Maps one pixel high: 8 rows would overlap, so only some are labelled; the figure
    # stays small and a tall map makes a narrower, not a taller, figure.
    flat = fig_lib.feature_maps(RNG.random((1, 40, 64)), "conv")
    labels = [t.get_text() for t in _image_axes(flat)[0].get_yticklabels()]
    assert labels[0] == "0" and 1 < len(labels) < 8
    tall = fig_lib.feature_maps(RNG.random((400, 2, 4)), "conv")
    assert tall.get_figheight() < 9 and tall.get_figwidth() < 3


def test_confusion_matrix_counts_match_scikit_learn():
    from sklearn.metrics import confusion_matrix

    labels = RNG.integers(0, 4, 50)
    predicted = np.where(RNG.random(50) < 0.7, labels, RNG.integers(0, 4, 50))
    figure = fig_lib.confusion_matrix(labels, predicted, CLASSES)
    shown = np.asarray(_image_axes(figure)[0].images[0].get_array())
    np.testing.assert_array_equal(shown, confusion_matrix(labels, predicted, labels=range(4)))
    accuracy = (labels == predicted).mean()
    assert f"test accuracy {accuracy:.3f}" in figure.axes[0].get_title()


def test_pca_projection_matches_scikit_learn_up_to_sign():
    from sklearn.decomposition import PCA

    features = RNG.normal(size=(30, 10)) * np.arange(1, 11)
    labels = np.arange(30) % 3
    figure = fig_lib.projection(features, labels, CLASSES[:3], "pca")
    points = np.concatenate(
        [c.get_offsets() for c in figure.axes[0].collections if isinstance(c, PathCollection)]
    )
    order = np.concatenate([np.flatnonzero(labels == k) for k in range(3)])
    expected = PCA(2).fit_transform(features)[order]
    for axis in range(2):
        sign = np.sign(points[0, axis] * expected[0, axis])
        np.testing.assert_allclose(points[:, axis], sign * expected[:, axis], rtol=1e-6, atol=1e-6)


def test_dense_figure_marks_the_given_units():
    acts = np.ones((5, 10))
    acts[:, 2] = 0
    acts[:, 7] = 9
    dead = np.zeros(10, bool)
    dead[2] = True
    saturated = np.zeros(10, bool)
    saturated[7] = True
    figure = fig_lib.dense_activations(acts, "d", dead, saturated, 1)
    bars = figure.axes[0].patches
    colors = [bar.get_facecolor()[:3] for bar in bars]
    grey, red = (0.6, 0.6, 0.6), (0.753, 0.0, 0.0)
    np.testing.assert_allclose(colors[2], grey, atol=0.01)
    np.testing.assert_allclose(colors[7], red, atol=0.01)
    assert "1 dead (grey), 1 saturated (red) of 10 units" in figure._suptitle.get_text()


def test_hostile_names_are_drawn_as_plain_text():
    # "$" would start mathtext: garbled or a ValueError at draw time without protection.
    name = r"$\frac{<script>$ layer_{1}"
    figure = fig_lib.feature_maps(RNG.random((4, 4, 2)), name)
    assert _pixels(figure).var() > 0
    assert name in _texts(figure)
    arch = fig_lib.architecture_diagram([(name, "Dense", "(2,)"), ("x" * 80, "Dense", "(2,)")])
    assert _pixels(arch).var() > 0
    assert "\u2026" in _texts(arch)  # long names shortened in the middle, not run off


@pytest.mark.parametrize(
    "name",
    ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", '"><svg onload=alert(1)>'],
)
def test_html_builder_escapes_every_string(name):
    sec = Section(name, anchor(name))
    sec.heading(name, anchor("layer", name))
    sec.table([name], [[name]], caption=name)
    sec.figure(f"figures/{anchor(name)}.png", caption=name)
    sec.text(name)
    sec.pre(name)
    page = build_html(name, name, [sec])
    assert name not in page
    for raw in ("<svg", "<img src=x"):
        assert raw not in page
    # The only script is the report's own table sorter.
    assert page.count("<script") == 1 and "alert(" not in page.split("<script>")[1]
    assert page.count(esc(name)) >= 7
    # Anchors are restricted to [A-Za-z0-9_-], so TOC targets are always valid ids.
    assert anchor("layer", name).replace("-", "").replace("_", "").isalnum()


def test_dense_figure_of_a_nearly_constant_layer():
    """An untrained BatchNorm can output one value up to float32 rounding: still drawn."""
    acts = np.full((5, 20), 0.1234567, np.float32)
    acts[0, 0] = np.nextafter(np.float32(0.1234567), np.float32(1))
    figure = fig_lib.dense_activations(acts, "bn", np.zeros(20, bool), np.zeros(20, bool), 2)
    histogram = next(ax for ax in figure.axes if ax.get_xlabel().startswith("activation value"))
    counts = [patch.get_height() for patch in histogram.patches]
    assert sum(counts) == acts.size  # every value in the histogram, none lost
    # Per-unit means one float32 step apart (numpy cannot bin that range): still drawn.
    steps = np.ones((5, 20), np.float32)
    steps[:, 0] = np.nextafter(np.float32(1), np.float32(2))
    figure = fig_lib.dense_activations(steps, "bn", np.zeros(20, bool), np.zeros(20, bool), 2)
    per_unit = next(ax for ax in figure.axes if ax.get_legend() is not None)
    assert sum(p.get_height() for p in per_unit.patches) == 20  # every unit counted
