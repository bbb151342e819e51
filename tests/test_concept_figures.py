"""The concepts stage's figures: arrays in, a matplotlib figure out, significance shown."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from pipeline.render.concept_figures import (
    EXPLANATIONS,
    cka_heatmap,
    class_attribution_grid,
    tcav_bar_chart,
)


def _texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_tcav_bar_chart_marks_significance():
    rng = np.random.default_rng(0)
    scores = np.clip(rng.normal([[0.9], [0.5], [0.1]], 0.05, (3, 10)), 0, 1)
    random_scores = rng.uniform(0.3, 0.7, (3, 10))
    fig = tcav_bar_chart(
        scores, random_scores, np.array([1e-6, 0.6, np.nan]), np.array([True, False, False]),
        ["zero", "one", "two"], title="stripes at conv2", level=0.05,
    )  # fmt: skip
    assert isinstance(fig, Figure)
    texts = _texts(fig)
    assert texts.count("*") == 1 and texts.count("n.s.") == 2
    assert "p=1e-06" in texts and "p=–" in texts
    bars = fig.axes[0].patches
    heights = [bar.get_height() for bar in bars[:3]]
    np.testing.assert_allclose(heights, scores.mean(axis=1))
    assert bars[1].get_hatch() == "//" and not bars[0].get_hatch()
    assert "two-sided t-test" in fig.axes[0].get_title()


def test_cka_heatmap_has_a_fixed_scale_and_blank_nan():
    matrix = np.array([[1.0, 0.4, np.nan], [0.4, 1.0, 0.2], [np.nan, 0.2, 1.0]])
    fig = cka_heatmap(matrix, ["conv1", "conv2", "dense"], title="run a")
    image = fig.axes[0].images[0]
    assert image.get_clim() == (0.0, 1.0)
    assert image.get_array().mask[0, 2]
    assert "0.40" in _texts(fig) and len(_texts(fig)) == 7
    cross = cka_heatmap(np.eye(2, 3), ["a1", "a2"], ["b1", "b2", "b3"], annotate=False)
    labels = [t.get_text() for t in cross.axes[0].get_xticklabels()]
    assert labels == ["b1", "b2", "b3"] and not _texts(cross)


def test_class_attribution_grid_and_explanations():
    maps = np.random.default_rng(1).random((3, 6, 6))
    fig = class_attribution_grid(
        maps, ["a", "b", "c"], np.array([4, 2, 1]), np.array([0.1, 0.2, 0.3]),
        np.array([0.7, 0.6, 0.5]), title="saliency", max_cols=2,
    )  # fmt: skip
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "a (n=4)\ndel 0.10 / ins 0.70" and len(fig.axes) == 4
    for key in ("tcav", "tcav_significance", "cav_accuracy", "cka", "cka_cross_run"):
        assert len(EXPLANATIONS[key]) > 100
    assert "not significant" in EXPLANATIONS["tcav_significance"]
