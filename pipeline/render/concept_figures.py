"""Figures of the concepts stage: arrays in, matplotlib figures out. No file access here.

:func:`tcav_bar_chart` draws one concept's TCAV scores per class with the significance
test marked, :func:`cka_heatmap` a layer-by-layer (or run-by-run) CKA matrix, and
:func:`class_attribution_grid` the mean attribution map of each class. Plain-language
captions for the report are in :data:`EXPLANATIONS`.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

EXPLANATIONS: dict[str, str] = {
    "tcav": (
        "TCAV (Kim et al. 2018) asks whether a human concept, given as a folder of "
        "example images, matters to the model's decision for a class. A linear classifier "
        "separates the concept's activations at a layer from those of random images; its "
        "normal is the concept activation vector (CAV). The TCAV score of a class is the "
        "share of that class's inputs whose class score rises when the layer's activation "
        "moves along the CAV: 1.0 means the concept pushes every input of the class towards "
        "it, 0.0 that it always pushes away, and about 0.5 that it does not matter."
    ),
    "tcav_significance": (
        "A score alone can be luck: a CAV learnt against one random set may point anywhere. "
        "The test is therefore repeated against several random counter-example sets and "
        "compared, with a two-sided t-test, to the scores of CAVs that separate one random "
        "set from another (which carry no concept at all). Only a starred bar (p below the "
        "level shown) says the concept matters; a grey, hatched bar marked 'n.s.' is not "
        "significant: the concept's score cannot be told apart from chance, whatever its "
        "height, and should not be read as evidence either way."
    ),
    "cav_accuracy": (
        "The CAV's held-out accuracy says whether the layer can tell the concept from random "
        "images at all. Near 0.5 the layer does not represent the concept, and its TCAV "
        "scores mean little even when significant."
    ),
    "cka": (
        "Linear CKA (centered kernel alignment, Kornblith et al. 2019) measures how similar "
        "two layers' representations of the same inputs are, from 0 (unrelated) to 1 (the "
        "same up to a rotation and a scale). It compares which inputs each layer finds "
        "alike, so it works between layers of different widths. Blocks of high CKA along "
        "the diagonal are stages of the network that compute much the same thing; a large "
        "block at the end of a wide or deep network can mean redundant layers (Nguyen et "
        "al. 2021). The estimate is unbiased and computed in minibatches, so small "
        "differences (a few hundredths) are within its noise."
    ),
    "cka_cross_run": (
        "Across experiments, the matrix compares each layer of one run with each layer of "
        "another on the same inputs. A bright diagonal means the two trainings learnt the "
        "same representations layer for layer; a dim one, that a change (data, "
        "architecture, training) altered what those layers compute."
    ),
    "class_attribution": (
        "Each map is the mean, over every explained input of the class, of its attribution "
        "map scaled to a largest value of 1: where the model looks for that class across "
        "the data, not for a single input. Deletion AUC (lower is better) and insertion AUC "
        "(higher is better) per class say how faithful the maps are for that class "
        "(Petsiuk et al. 2018); a class with few inputs gives a noisy mean."
    ),
}
"""Plain-language captions for the report, by figure.

``tcav`` (what a TCAV score means) and ``tcav_significance`` (when it is not significant)
go with :func:`tcav_bar_chart`, ``cav_accuracy`` with the CAV accuracies, ``cka`` with a
layer-by-layer :func:`cka_heatmap` and ``cka_cross_run`` with a cross-run one, and
``class_attribution`` with :func:`class_attribution_grid`.
"""


def tcav_bar_chart(
    scores: np.ndarray,
    random_scores: np.ndarray,
    p_values: np.ndarray,
    significant: np.ndarray,
    class_names: Sequence[str],
    title: str = "",
    level: float = 0.05,
) -> Figure:
    """One concept at one layer: the TCAV score of each class, significance marked.

    Args:
        scores: (classes, runs) TCAV score of each of the concept's CAVs.
        random_scores: (classes, runs) scores of the random-versus-random CAVs.
        p_values: (classes,) the two-sided t-test's p-values.
        significant: (classes,) whether each p-value is below ``level``.
        class_names: One name per row.
        title: The figure's title (the concept and layer).
        level: The significance level the p-values were compared with.

    Returns:
        A figure: per class, the concept's mean score (coloured, starred when
        significant; grey, hatched and "n.s." otherwise) beside the random CAVs' mean,
        each with its standard deviation over the runs, and a line at 0.5.
    """
    scores, random_scores = np.atleast_2d(scores), np.atleast_2d(random_scores)
    count = len(scores)
    positions = np.arange(count)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * count + 2.0), 3.2))
    width = 0.38
    colors = ["tab:blue" if s else "lightgray" for s in significant]
    bars = ax.bar(
        positions - width / 2,
        scores.mean(axis=1),
        width,
        yerr=scores.std(axis=1),
        color=colors,
        edgecolor="black",
        linewidth=0.5,
        capsize=2,
        label="concept",
    )
    for bar, sig in zip(bars, significant, strict=True):
        if not sig:
            bar.set_hatch("//")
    ax.bar(
        positions + width / 2,
        random_scores.mean(axis=1),
        width,
        yerr=random_scores.std(axis=1),
        color="white",
        edgecolor="gray",
        linewidth=0.5,
        capsize=2,
        label="random CAVs",
    )
    for x, sig, p in zip(positions, significant, p_values, strict=True):
        top = min(1.0, float(scores[x].mean() + scores[x].std())) + 0.03
        text = "*" if sig else "n.s."
        ax.text(x - width / 2, top, text, ha="center", va="bottom", fontsize=9)
        ax.text(
            x - width / 2, -0.02, f"p={p:.2g}" if np.isfinite(p) else "p=–", ha="center",
            va="top", fontsize=6, color="dimgray",
        )  # fmt: skip
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=0.8)
    ax.set_xticks(positions, [str(n) for n in class_names], rotation=45 if count > 6 else 0)
    ax.tick_params(axis="x", pad=12)
    ax.set_ylim(-0.12, 1.15)
    ax.set_ylabel("TCAV score")
    ax.set_title(f"{title}  (* p < {level:.2g}, two-sided t-test)" if title else "")
    ax.legend(fontsize=7, loc="upper right", ncols=2, frameon=False)
    fig.tight_layout()
    return fig


def cka_heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str] | None = None,
    title: str = "Linear CKA",
    cmap: str = "magma",
    annotate: bool | None = None,
) -> Figure:
    """A CKA matrix as a heatmap on the fixed scale [0, 1].

    Args:
        matrix: (rows, columns) CKA values (NaN: a constant layer, drawn blank).
        row_labels: Row layer names (for a cross-run matrix: the first run's layers).
        col_labels: Column names; None: the row labels (a layer-by-layer matrix).
        title: The title (for example ``run a (rows) vs run b (columns)``).
        cmap: The colormap.
        annotate: Print each value in its cell; None: when there are 12 or fewer rows
            and columns.

    Returns:
        The figure (the colour scale is fixed, so figures of different runs compare).
    """
    matrix = np.asarray(matrix, np.float64)
    col_labels = list(row_labels if col_labels is None else col_labels)
    rows, cols = matrix.shape
    size = max(3.5, 0.38 * max(rows, cols) + 2.2)
    fig, ax = plt.subplots(figsize=(size + 0.8, size))
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=0.0, vmax=1.0)
    ax.set_xticks(range(cols), col_labels, rotation=90, fontsize=7)
    ax.set_yticks(range(rows), list(row_labels), fontsize=7)
    if annotate if annotate is not None else max(rows, cols) <= 12:
        for i in range(rows):
            for j in range(cols):
                if np.isfinite(matrix[i, j]):
                    shade = "black" if matrix[i, j] > 0.6 else "white"
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center",
                            fontsize=6, color=shade)  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="CKA")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def class_attribution_grid(
    mean_maps: np.ndarray,
    class_names: Sequence[str],
    counts: np.ndarray | None = None,
    deletion_auc: np.ndarray | None = None,
    insertion_auc: np.ndarray | None = None,
    title: str = "",
    cmap: str = "magma",
    max_cols: int = 8,
) -> Figure:
    """Mean attribution map of each class, with its input count and faithfulness.

    Args:
        mean_maps: (classes, H, W) mean maps (or (classes, T) for sequences, or
            (classes, D, H, W) for volumes: drawn as their mean over depth, so each
            tile lies as a depth slice does).
        class_names: One name per map.
        counts: (classes,) inputs averaged per class.
        deletion_auc: (classes,) mean deletion AUC per class.
        insertion_auc: (classes,) mean insertion AUC per class.
        title: The figure's title (the method).
        cmap: The colormap; each map is drawn on a shared scale.
        max_cols: Maps per row.

    Returns:
        The figure.
    """
    maps = np.asarray(mean_maps, np.float64)
    count = len(maps)
    cols = max(1, min(max_cols, count))
    rows = int(np.ceil(count / cols)) if count else 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.9 * rows + 0.4), squeeze=False)
    finite = maps[np.isfinite(maps)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    for index, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= count:
            ax.axis("off")
            continue
        item = maps[index]
        if item.ndim == 1:
            ax.plot(item)
        else:
            flat = item if item.ndim == 2 else item.mean(axis=0)  # a volume: over depth
            ax.imshow(flat, cmap=cmap, vmin=lo, vmax=hi)
        lines = [str(class_names[index])]
        if counts is not None:
            lines[0] += f" (n={int(counts[index])})"
        if deletion_auc is not None and insertion_auc is not None:
            lines.append(f"del {deletion_auc[index]:.2f} / ins {insertion_auc[index]:.2f}")
        ax.set_title("\n".join(lines), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
