"""Figures: arrays in, matplotlib figures out. No file or HDF5 access here.

Every figure states its colour scale (a colorbar or a caption) and keeps text at 8 pt or
larger, so grids of 64 channels stay readable when the page shows them at full width.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import LogFormatter  # noqa: E402

# text.parse_math off: layer and class names come from model files, and a name with "$"
# would otherwise be parsed as mathtext (garbled, or a ValueError that kills the stage).
plt.rcParams.update(
    {"font.size": 9, "axes.titlesize": 9, "figure.dpi": 100, "text.parse_math": False}
)


def _short(text: str, width: int = 60) -> str:
    """Wrap long names (nested layer paths) so titles never run past the figure."""
    return "\n".join(textwrap.wrap(str(text), width, break_on_hyphens=False)) or str(text)


def _grid(n: int, max_cols: int = 8) -> tuple[int, int]:
    cols = min(max_cols, max(1, math.ceil(math.sqrt(n))))
    return math.ceil(n / cols), cols


def _show_image(ax, image: np.ndarray, cmap: str = "gray") -> None:
    """Draw an input: RGB stretched to [0, 1] for three channels, else grey (their mean)."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] != 3:
        image = image.mean(axis=-1)  # one channel, or channels that are not a colour image
    if image.ndim == 3:
        lo, hi = float(image.min()), float(image.max())
        ax.imshow((image - lo) / (hi - lo) if hi > lo else image * 0)
    elif image.ndim == 2:
        ax.imshow(image, cmap=cmap)
    else:
        ax.plot(image)
    ax.set_xticks([])
    ax.set_yticks([])


def _elide(text: str, width: int) -> str:
    """Shorten a long name in the middle, keeping its start and end readable."""
    text = str(text)
    if len(text) <= width:
        return text
    keep = (width - 1) // 2
    return f"{text[:keep]}\u2026{text[-keep:]}"


def architecture_diagram(
    layers: Sequence[tuple[str, str, str]], edges: Sequence[tuple[int, int]] | None = None
) -> Figure:
    """Boxes per layer (name, type, output shape) with arrows along the data flow.

    Drawn with matplotlib only, so no graphviz binary is needed. Boxes are stacked in
    execution order; an edge between neighbours is a straight arrow, any other edge (a
    skip connection, a branch) is an arc on the right so it never crosses a box.

    Args:
        layers: (path, class name, output shape) in execution order.
        edges: (from, to) index pairs; default: a chain in execution order.
    """
    n = len(layers)
    edges = list(edges) if edges is not None else [(i, i + 1) for i in range(n - 1)]
    skips = [(a, b) for a, b in edges if b != a + 1]
    fig, ax = plt.subplots(figsize=(5.6 + (0.8 if skips else 0), 0.75 * n + 0.6))
    ax.set_xlim(0, 1.25 if skips else 1)
    ax.set_ylim(-n + 0.4, 0.8)
    ax.axis("off")
    palette = {
        "Conv": "#cfe2f3",
        "Pool": "#d9ead3",
        "Dense": "#fce5cd",
        "LSTM": "#ead1dc",
        "GRU": "#ead1dc",
        "RNN": "#ead1dc",
        "Functional": "#fff2cc",
        "Sequential": "#fff2cc",
    }
    for i, (path, kind, shape) in enumerate(layers):
        color = next((c for k, c in palette.items() if k in kind), "#eeeeee")
        ax.add_patch(
            plt.Rectangle((0.08, -i - 0.3), 0.84, 0.6, facecolor=color, edgecolor="#555555")
        )
        label = f"{_elide(path, 44)}  ({kind})"
        ax.text(0.5, -i + 0.08, label, ha="center", va="center", fontsize=8.5)
        ax.text(0.5, -i - 0.17, shape, ha="center", va="center", fontsize=8, color="#333333")
    for a, b in edges:
        if b == a + 1:
            ax.annotate(
                "",
                xy=(0.5, -b + 0.3),
                xytext=(0.5, -a - 0.3),
                arrowprops={"arrowstyle": "->", "color": "#555555"},
            )
        else:
            ax.annotate(
                "",
                xy=(0.92, -b),
                xytext=(0.92, -a),
                arrowprops={
                    "arrowstyle": "->",
                    "color": "#1a5fb4",
                    "connectionstyle": f"arc3,rad={-0.25 if b > a else 0.25}",
                },
            )
    ax.set_title("Architecture (execution order; blue arcs: branches and skips)")
    fig.tight_layout()
    return fig


def training_curves(history: dict[str, np.ndarray]) -> Figure:
    """Loss and accuracy per epoch, training and validation."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            if key in history and len(history[key]):
                epochs = np.arange(1, len(history[key]) + 1)
                ax.plot(epochs, history[key], style, label=key.replace("_", " "), markersize=3)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        else:
            ax.text(0.5, 0.5, f"no {metric} recorded", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def confusion_matrix(
    labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]
) -> Figure:
    """Counts of true (rows) against predicted (columns) classes."""
    k = len(class_names)
    matrix = np.zeros((k, k), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    size = max(4.0, 0.45 * k + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                ax.text(j, i, matrix[i, j], ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"Confusion matrix (test accuracy {accuracy:.3f})")
    fig.colorbar(image, ax=ax, label="count", shrink=0.8)
    fig.tight_layout()
    return fig


def prediction_grid(
    inputs: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]
) -> Figure:
    """Probe inputs with true and predicted labels; misclassifications framed in red."""
    n = len(inputs)
    rows, cols = _grid(n, 10)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.7 * rows + 0.5), squeeze=False)
    predicted = probabilities.argmax(axis=-1)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        ax.axis("on")
        _show_image(ax, inputs[i])
        wrong = labels[i] >= 0 and predicted[i] != labels[i]
        true = class_names[labels[i]] if labels[i] >= 0 else "?"
        ax.set_title(
            f"true {true}\npred {class_names[predicted[i]]} {probabilities[i].max():.2f}",
            fontsize=8,
            color="#c00000" if wrong else "black",
        )
        for spine in ax.spines.values():
            spine.set_edgecolor("#c00000" if wrong else "#999999")
            spine.set_linewidth(3 if wrong else 0.5)
    fig.suptitle("Probe set predictions (red: misclassified; images scaled to their own range)")
    fig.tight_layout(h_pad=0.8)
    return fig


def regression_scatter(targets: np.ndarray, outputs: np.ndarray) -> Figure:
    """Predicted against true values on the test split, one panel per target."""
    targets = np.asarray(targets, np.float64).reshape(len(targets), -1)
    outputs = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    k = min(targets.shape[1], 4)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.2), squeeze=False)
    for j, ax in enumerate(axes[0]):
        ax.scatter(targets[:, j], outputs[:, j], s=10, alpha=0.7)
        lo = float(min(targets[:, j].min(), outputs[:, j].min()))
        hi = float(max(targets[:, j].max(), outputs[:, j].max()))
        ax.plot([lo, hi], [lo, hi], color="#999999", linewidth=1)  # perfect predictions
        ax.set_xlabel(f"true (output {j})")
        ax.set_ylabel("predicted")
    fig.suptitle("Test split: predicted against true (grey: predicted = true)")
    fig.tight_layout()
    return fig


def segmentation_grid(
    inputs: np.ndarray, masks: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]
) -> Figure:
    """Probe inputs beside their true and predicted masks (one colour per class)."""
    n = len(inputs)
    k = max(len(class_names), int(max(masks.max(initial=0), predicted.max(initial=0))) + 1)
    cmap, norm = _class_colours(k)
    fig, axes = plt.subplots(
        n, 3, figsize=(5.6, 1.7 * n + 0.8), squeeze=False, layout="constrained"
    )
    for i in range(n):
        _show_image(axes[i, 0], inputs[i])
        for ax, mask in ((axes[i, 1], masks[i]), (axes[i, 2], predicted[i])):
            image = ax.imshow(mask, cmap=cmap, norm=norm, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        accuracy = float(np.mean(masks[i] == predicted[i]))
        axes[i, 2].set_title(f"predicted ({accuracy:.0%} right)", fontsize=8)
        axes[i, 1].set_title("true", fontsize=8)
    bar = fig.colorbar(image, ax=axes[:, 2].tolist(), label="class", shrink=0.6, ticks=range(k))
    names = [*class_names, *[str(c) for c in range(len(class_names), k)]]
    bar.ax.set_yticklabels([_elide(name, 16) for name in names[:k]])
    fig.suptitle("Probe set: input, true and predicted masks")
    return fig


def _class_colours(k: int):
    """A colour per class index 0..k-1 (tab10, then tab20), with its norm."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    base = plt.get_cmap("tab10" if k <= 10 else "tab20").colors
    colours = [base[i % len(base)] for i in range(max(k, 1))]
    return ListedColormap(colours), BoundaryNorm(np.arange(-0.5, max(k, 1)), max(k, 1))


def tile_mosaic(tiles: np.ndarray, cols: int, gap: int = 1, fill: float = np.nan) -> np.ndarray:
    """Lay (n, h, w, ...) tiles out row by row in one array, ``fill`` between and after.

    Args:
        tiles: The tiles; trailing axes (colour) are kept.
        cols: Tiles per row.
        gap: Pixels between tiles.
        fill: Value of the gaps and of the unused tiles (NaN draws as blank).

    Returns:
        An (rows * (h + gap) - gap, cols * (w + gap) - gap, ...) array.
    """
    n, h, w = tiles.shape[:3]
    rows = math.ceil(n / cols)
    mosaic = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *tiles.shape[3:]), fill)
    for i in range(n):
        r, c = divmod(i, cols)
        mosaic[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = tiles[i]
    return mosaic


def _tile_centres(count: int, size: int, gap: int) -> list[float]:
    """Pixel coordinates of the centres of ``count`` tiles of ``size`` along a mosaic."""
    return [i * (size + gap) + (size - 1) / 2 for i in range(count)]


def _panel_figure(
    width: float,
    aspect: float,
    title: str,
    left: float = 0.45,
    colorbar: bool = True,
    max_height: float = 7.0,
):
    """A figure holding one image axes (and a colorbar axes) placed by hand.

    A layout engine measures every text artist twice per save; for the hundreds of
    per-layer figures of a big model that was most of the render stage. Margins are in
    inches, so labels keep their size whatever the mosaic's shape; ``_draw`` still trims
    the saved image to its contents.

    Args:
        width: Figure width in inches (narrower when the image would pass ``max_height``).
        aspect: Height over width of the image.
        title: Figure title.
        left: Left margin in inches (row labels).
        colorbar: Add a colorbar axes at the right.
        max_height: Largest image height in inches: a tall image gets narrower instead.

    Returns:
        ``(figure, image_axes, colorbar_axes_or_None)``.
    """
    right = 1.0 if colorbar else 0.15
    lines = title.count("\n") + 1
    top, bottom = 0.3 + 0.2 * lines, 0.3
    axes_width = max(1.0, width - left - right)
    axes_height = axes_width * aspect
    if axes_height > max_height:
        axes_height, axes_width = max_height, max_height / aspect
        width = left + axes_width + right
    height = axes_height + top + bottom
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((left / width, bottom / height, axes_width / width, axes_height / height))
    cax = None
    if colorbar:
        bar_height = max(1.0, 0.6 * axes_height)  # readable even beside a flat image
        cax = fig.add_axes(
            (
                (left + axes_width + 0.15) / width,
                (bottom + (axes_height - bar_height) / 2) / height,
                0.12 / width,
                bar_height / height,
            )
        )
    fig.suptitle(title, y=1 - 0.1 / height, va="top")
    return fig, ax, cax


def feature_maps(
    maps: np.ndarray,
    title: str,
    cmap: str = "viridis",
    scale: str = "shared",
    max_channels: int = 64,
) -> Figure:
    """One tile per channel of a conv/pooling output for one input.

    The tiles are drawn as one image (a mosaic) on one axes: a figure of 64 separate
    axes takes seconds to lay out, a mosaic a few milliseconds. Channels are numbered
    in the margins (row: first channel of the row; column: offset), so no label covers
    a tile's pixels.

    Args:
        maps: (h, w, channels).
        title: Figure title.
        cmap: Colormap.
        scale: ``shared`` (one colour scale, one colorbar) or ``per_channel`` (each
            tile stretched to its own range; the caption says so).
        max_channels: Show at most this many channels.
    """
    channels = min(maps.shape[-1], max_channels)
    rows, cols = _grid(channels, 8)
    tiles = np.moveaxis(np.asarray(maps, np.float64)[..., :channels], -1, 0)
    if scale != "shared":
        lo = tiles.min(axis=(1, 2), keepdims=True)
        span = tiles.max(axis=(1, 2), keepdims=True) - lo
        tiles = np.where(span > 0, (tiles - lo) / np.where(span > 0, span, 1), 0.0)
    h, w = tiles.shape[1:]
    gap = max(1, round(max(h, w) / 12))
    mosaic = tile_mosaic(tiles, cols, gap)
    lo, hi = float(np.nanmin(tiles)), float(np.nanmax(tiles))
    if scale == "shared":
        suffix = f"shared scale {lo:.2g} to {hi:.2g}"
    else:
        suffix = "each tile scaled to its own range"
    more = f", first {channels} of {maps.shape[-1]} channels" if channels < maps.shape[-1] else ""
    caption = _short(f"{title} ({suffix}{more}; channel = row + column)", 80)
    width = min(9.0, 1.1 * cols + 1.6)
    fig, ax, cax = _panel_figure(
        width, mosaic.shape[0] / mosaic.shape[1], caption, colorbar=scale == "shared"
    )
    colormap = plt.get_cmap(cmap).with_extremes(bad="white")
    image = ax.imshow(mosaic, cmap=colormap, vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_xticks(_tile_centres(cols, w, gap), [f"+{c}" for c in range(cols)])
    # Label every row while labels fit (8 pt is about 0.14 in), else every k-th row.
    pitch = ax.get_position().height * fig.get_figheight() / rows
    every = max(1, math.ceil(0.16 / pitch))
    ax.set_yticks(
        _tile_centres(rows, h, gap)[::every], [str(r * cols) for r in range(0, rows, every)]
    )
    ax.tick_params(length=0, labelsize=8, labeltop=True, labelbottom=False, pad=2)
    ax.set_frame_on(False)
    if cax is not None:
        fig.colorbar(image, cax=cax, label="activation")
    return fig


def _bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Histogram bin edges that also work for a (nearly) constant array.

    An untrained net's BatchNorm can output one value up to float32 rounding: numpy
    cannot split such a range into ``bins`` bins, so it gets one bin around the value.
    """
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if hi - lo <= 1e-6 * max(1.0, abs(lo), abs(hi)):
        return np.array([lo - 0.5, hi + 0.5])
    return np.histogram_bin_edges(values, bins=bins)


def health_strip(
    paths: Sequence[str],
    dead: Sequence[float],
    saturated: Sequence[float],
    groups: Sequence[tuple[str, int]],
) -> Figure:
    """Per layer, the share of dead, saturated and healthy units as one stacked bar.

    Args:
        paths: Layer paths in model order.
        dead: Dead fraction per layer.
        saturated: Saturated fraction per layer.
        groups: (title, first layer index) of each block, for the axis labels.
    """
    n = len(paths)
    dead = np.nan_to_num(np.asarray(dead, float))
    saturated = np.nan_to_num(np.asarray(saturated, float))
    healthy = np.clip(1 - dead - saturated, 0, 1)
    fig, ax = plt.subplots(figsize=(min(12.0, 4 + 0.09 * n), 2.9), layout="constrained")
    x = np.arange(n)
    ax.bar(x, dead, width=1.0, color="#c62828", label="dead")
    ax.bar(x, saturated, width=1.0, bottom=dead, color="#ef6c00", label="saturated")
    ax.bar(x, healthy, width=1.0, bottom=dead + saturated, color="#a5d6a7", label="healthy")
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of units")
    if n <= 30:
        ax.set_xticks(x, [_elide(p, 18) for p in paths], rotation=60, ha="right", fontsize=8)
    else:
        # One label per block: 200 layer names would overlap.
        step = max(1, math.ceil(len(groups) / 30))
        shown = groups[::step]
        ax.set_xticks([i for _, i in shown], [_elide(t, 18) for t, _ in shown], rotation=60)
        ax.tick_params(axis="x", labelsize=8)
        for _, i in groups:
            ax.axvline(i - 0.5, color="white", linewidth=0.4)
        ax.set_xlabel(f"{n} layers in model order, labelled by block")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    ax.set_title("Unit health per layer")
    return fig


def dense_activations(
    acts: np.ndarray,
    title: str,
    dead: np.ndarray,
    saturated: np.ndarray,
    max_inputs: int = 4,
    row_labels: Sequence[str] | None = None,
) -> Figure:
    """Activation vectors of a few inputs, and histograms over the probe set.

    Dead units (never above zero over the probe set, Lu et al. 2019, "Dying ReLU and
    initialization") are drawn grey, saturated ones red, in every panel: as bar colours
    (up to 128 units) or as rug ticks under the line (wider layers), and as stacked
    classes in the per-unit histogram.

    Args:
        acts: (N, units) activations of the probe set.
        title: Figure title.
        dead: (units,) bool.
        saturated: (units,) bool.
        max_inputs: Number of inputs drawn as vectors.
        row_labels: Label per drawn input (default ``input i``).
    """
    units = acts.shape[-1]
    shown = min(max_inputs, len(acts))
    dead = np.asarray(dead, bool)
    saturated = np.asarray(saturated, bool) & ~dead
    fig = plt.figure(figsize=(8, 1.3 * shown + 2.6), layout="constrained")
    grid = fig.add_gridspec(shown + 1, 2, height_ratios=[1] * shown + [1.5])
    x = np.arange(units)
    colors = np.where(dead, "#999999", np.where(saturated, "#c00000", "#1f77b4"))
    for i in range(shown):
        ax = fig.add_subplot(grid[i, :])
        if units <= 128:
            ax.bar(x, acts[i], color=colors, width=0.9)
        else:
            ax.plot(x, acts[i], lw=0.7, color="#1f77b4")
        # Rug ticks on the axis: a dead unit's bar has zero height, and past 128 units
        # coloured bars are too thin to see.
        lo = ax.get_ylim()[0]
        ax.plot(x[dead], np.full(dead.sum(), lo), "|", color="#999999", ms=6)
        ax.plot(x[saturated], np.full(saturated.sum(), lo), "|", color="#c00000", ms=6)
        label = row_labels[i] if row_labels is not None else f"input {i}"
        ax.set_ylabel(label, fontsize=8)
        ax.set_xlim(-1, units)
        ax.grid(alpha=0.3)
        if i == shown - 1:
            ax.set_xlabel("unit")
        else:
            ax.tick_params(labelbottom=False)
    values = fig.add_subplot(grid[shown, 0])
    finite = acts[np.isfinite(acts)]
    values.hist(finite, bins=_bin_edges(finite, 50), color="#1f77b4")
    values.set_xlabel("activation value (all inputs, all units)")
    values.set_ylabel("count")
    values.set_yscale("log")
    # Plain tick labels: the default log formatter writes mathtext, which is off here.
    values.yaxis.set_major_formatter(LogFormatter())
    per_unit = fig.add_subplot(grid[shown, 1])
    means = np.nanmean(np.where(np.isfinite(acts), acts, np.nan), axis=0)
    alive = ~dead & ~saturated
    bins = _bin_edges(means[np.isfinite(means)], 30)
    per_unit.hist(
        [means[alive], means[dead], means[saturated]],
        bins=bins,
        stacked=True,
        color=["#1f77b4", "#999999", "#c00000"],
        label=[f"alive ({alive.sum()})", f"dead ({dead.sum()})", f"saturated ({saturated.sum()})"],
    )
    per_unit.set_xlabel("mean activation per unit")
    per_unit.set_ylabel("units")
    per_unit.legend(fontsize=7)
    fig.suptitle(
        f"{_short(title)}: {int(dead.sum())} dead (grey), {int(saturated.sum())} saturated"
        f" (red) of {units} units"
    )
    return fig


def recurrent_activations(acts: np.ndarray, title: str, cmap: str = "RdBu_r") -> Figure:
    """Hidden units over time for one input: lines and a heatmap. acts: (T, units)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8.5, 5.4), layout="constrained")
    shown = min(acts.shape[1], 12)
    for u in range(shown):
        top.plot(acts[:, u], lw=1, label=f"unit {u}")
    top.set_xlabel("time step")
    top.set_ylabel("activation")
    top.grid(alpha=0.3)
    # Outside the axes: inside, a 12-line legend hides the lines it explains.
    top.legend(ncol=1, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    top.set_title(f"first {shown} units over time")
    bound = float(np.abs(acts).max()) or 1.0
    image = bottom.imshow(acts.T, aspect="auto", cmap=cmap, vmin=-bound, vmax=bound)
    bottom.set_xlabel("time step")
    bottom.set_ylabel("unit")
    bottom.yaxis.get_major_locator().set_params(integer=True)
    fig.colorbar(image, ax=bottom, label=f"activation (symmetric scale +/-{bound:.2g})")
    fig.suptitle(_short(title))
    return fig


def projection(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    title: str,
    method: str = "pca",
) -> Figure:
    """2-D projection of high-dimensional activations, coloured by class (PCA or t-SNE)."""
    flat = features.reshape(len(features), -1).astype(np.float64)
    if method == "tsne" and len(flat) > 5:
        from sklearn.manifold import TSNE

        points = TSNE(
            2, perplexity=min(30, len(flat) - 1), init="pca", random_state=0
        ).fit_transform(flat)
        axes_names = ("t-SNE 1", "t-SNE 2")
    else:
        centered = flat - flat.mean(axis=0)
        _, _, vt = np.linalg.svd(centered, full_matrices=False)
        points = (
            centered @ vt[:2].T
            if vt.shape[0] >= 2
            else np.c_[centered @ vt[:1].T, np.zeros(len(flat))]
        )
        axes_names = ("PC 1", "PC 2")
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for k, name in enumerate(class_names):
        mask = labels == k
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=18, color=cmap(k % cmap.N), label=name)
    if (labels < 0).any():
        ax.scatter(*points[labels < 0].T, s=18, color="#777777", label="unlabelled")
    ax.set_xlabel(axes_names[0])
    ax.set_ylabel(axes_names[1])
    ax.legend(fontsize=7, ncol=2, loc="best")
    ax.set_title(_short(title, 50))
    fig.tight_layout()
    return fig


def _resize(maps: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from scipy.ndimage import zoom

    factors = (shape[0] / maps.shape[0], shape[1] / maps.shape[1])
    return zoom(maps, factors, order=1)


def _display_rgb(image: np.ndarray) -> np.ndarray:
    """An input as (H, W, 3) in [0, 1], for blending.

    Three channels are RGB, stretched as :func:`_show_image` draws them; one channel, or
    a count that is not a colour image (2, 4 or more), is grey: their mean.
    """
    image = np.asarray(image, np.float64)
    if image.ndim == 3 and image.shape[-1] != 3:
        image = image.mean(axis=-1)
    lo, hi = float(image.min()), float(image.max())
    if image.ndim == 3:
        return (image - lo) / (hi - lo) if hi > lo else image * 0
    grey = (image - lo) / (hi - lo) if hi > lo else image * 0
    return np.repeat(grey[..., None], 3, axis=-1)


def heatmap_overlays(
    inputs: np.ndarray, acts: np.ndarray, title: str, cmap: str = "inferno", alpha: float = 0.5
) -> Figure:
    """A conv layer's mean activation upsampled and blended over each input.

    The blends are computed here (``alpha`` x colour + (1 - ``alpha``) x input) and drawn
    as one image, one panel per input.

    Args:
        inputs: (N, H, W, C).
        acts: (N, h, w, channels).
        title: Figure title.
        cmap: Colormap of the heatmap.
        alpha: Opacity of the heatmap.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    n = len(inputs)
    colormap = plt.get_cmap(cmap)
    panels = []
    nonfinite = False
    for i in range(n):
        heat = _resize(acts[i].mean(axis=-1), inputs.shape[1:3])
        finite = np.isfinite(heat)
        top = float(heat[finite].max()) if finite.any() else 0.0
        heat = np.clip(np.where(finite, heat, 0.0) / (top or 1.0), 0, 1)
        shown = _display_rgb(inputs[i])
        blend = alpha * colormap(heat)[..., :3] + (1 - alpha) * shown
        # Where the activation is NaN or infinite the input shows alone.
        panels.append(np.where(finite[..., None], blend, shown))
        nonfinite |= not finite.all()
    if nonfinite:
        title = f"{title} (no heat where the activation is not finite)"
    h, w = inputs.shape[1:3]
    gap = max(1, round(max(h, w) / 12))
    mosaic = tile_mosaic(np.stack(panels), cols=n, gap=gap, fill=1.0)  # white gaps
    fig, ax, cax = _panel_figure(
        1.7 * n + 1.3, mosaic.shape[0] / mosaic.shape[1], _short(title), left=0.15
    )
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks(_tile_centres(n, w, gap), [f"input {i}" for i in range(n)])
    ax.set_yticks([])
    ax.tick_params(length=0, labelsize=8)
    ax.set_frame_on(False)
    fig.colorbar(ScalarMappable(Normalize(0, 1), colormap), cax=cax, label="mean activation / max")
    return fig


def attribution_grid(
    inputs: np.ndarray,
    maps: dict[str, np.ndarray],
    targets: np.ndarray,
    class_names: Sequence[str],
    cmap: str = "magma",
    alpha: float = 0.6,
    masks: np.ndarray | None = None,
) -> Figure:
    """Rows: inputs. Columns: the input, then each method's map blended over it.

    Each map is scaled to its own maximum |value| (the colorbar's 0 to 1); signed maps
    (Integrated Gradients) show their magnitude. ``masks`` (a segmentation model's
    predicted masks, (N, H, W)) adds a column after the input, one colour per class.
    """
    methods = list(maps)
    n = len(inputs)
    first = 1 if masks is None else 2
    cols = first + len(methods)
    fig, axes = plt.subplots(
        n, cols, figsize=(1.55 * cols + 1.0, 1.5 * n + 0.6), squeeze=False, layout="constrained"
    )
    image = None
    for r in range(n):
        _show_image(axes[r, 0], inputs[r])
        axes[r, 0].set_ylabel(f"target {class_names[targets[r]]}", fontsize=8)
        if masks is not None:
            cmap_k, norm = _class_colours(max(len(class_names), int(masks.max(initial=0)) + 1))
            axes[r, 1].imshow(masks[r], cmap=cmap_k, norm=norm, interpolation="nearest")
            axes[r, 1].set_xticks([])
            axes[r, 1].set_yticks([])
            if r == 0:
                axes[r, 1].set_title("predicted\nmask", fontsize=8)
        for c, method in enumerate(methods, start=first):
            ax = axes[r, c]
            heat = np.abs(np.asarray(maps[method][r], dtype=np.float64))
            if heat.ndim == 1:
                heat = heat[:, None]
            if inputs.ndim == 4:
                _show_image(ax, inputs[r])
                heat = _resize(heat, inputs.shape[1:3]) if heat.shape != inputs.shape[1:3] else heat
            else:
                ax.set_xticks([])
                ax.set_yticks([])
            heat = heat / (heat.max() or 1.0)
            image = ax.imshow(
                heat,
                cmap=cmap,
                alpha=alpha if inputs.ndim == 4 else 1.0,
                vmin=0,
                vmax=1,
                aspect="auto",
            )
            if r == 0:
                ax.set_title(textwrap.fill(method.replace("_", " "), 12), fontsize=8)
    axes[0, 0].set_title("input", fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="|attribution| / max per map")
    return fig


def faithfulness_curves(
    fractions: np.ndarray,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    aucs: dict[str, tuple[float, float]] | None = None,
) -> Figure:
    """Mean deletion and insertion curves per method, with the random baseline dashed.

    The metrics are those of Petsiuk et al. 2018 (RISE, "Randomized input sampling for
    explanation of black-box models"): probability of the target class while the most
    important pixels are removed (deletion) or restored (insertion).

    Args:
        fractions: (steps+1,) fraction of pixels changed at each step.
        curves: method -> (deletion (N, steps+1), insertion (N, steps+1)).
        aucs: method -> (deletion AUC, insertion AUC) as the attribute stage stored them;
            shown in the legend (read, not recomputed). Default: area under the mean curve.
    """
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    lines = []
    for index, ax, name in (
        (0, axes[0], "deletion (lower AUC is better)"),
        (1, axes[1], "insertion (higher AUC is better)"),
    ):
        for method, pair in curves.items():
            mean = np.asarray(pair[index]).mean(axis=0)
            is_random = method == "random"
            (line,) = ax.plot(
                fractions,
                mean,
                "--" if is_random else "-",
                color="black" if is_random else None,
                lw=1.6 if is_random else 1.2,
            )
            if index == 0:
                lines.append((line, method))
        ax.set_xlabel("fraction of pixels removed" if index == 0 else "fraction of pixels inserted")
        ax.set_ylabel("target-class probability")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.set_title(name)
    labels = []
    for _, method in lines:
        if aucs and method in aucs:
            deletion, insertion = aucs[method]
        else:
            deletion, insertion = (
                float(np.trapezoid(np.asarray(curves[method][i]).mean(axis=0), fractions))
                for i in (0, 1)
            )
        labels.append(f"{method} (AUC del {deletion:.3f} / ins {insertion:.3f})")
    # One legend under both panels: inside the axes it hides the curves.
    fig.legend(
        [line for line, _ in lines],
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=2,
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout()
    return fig


def sanity_bars(correlations: dict[str, float], threshold: float) -> Figure:
    """Spearman correlation with the original maps after randomising the model.

    The model-parameter randomisation test of Adebayo et al. 2018 ("Sanity checks for
    saliency maps"): a method whose maps survive randomisation does not explain the model.
    """
    methods = list(correlations)
    values = [correlations[m] for m in methods]
    fig, ax = plt.subplots(figsize=(7, 3.3))
    colors = ["#c00000" if abs(v) >= threshold else "#2ca02c" for v in values]
    bars = ax.bar(range(len(methods)), values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value:.2f}",
            (bar.get_x() + bar.get_width() / 2, value),
            xytext=(0, 3 if value >= 0 else -10),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.axhline(threshold, color="black", ls="--", lw=1, label=f"|rho| = {threshold}: fail above")
    ax.axhline(-threshold, color="black", ls="--", lw=1)
    ax.set_xticks(range(len(methods)), [m.replace("_", "\n") for m in methods], fontsize=8)
    ax.set_ylabel("Spearman rank correlation")
    ax.set_ylim(-1.1, 1.1)
    ax.set_title("Model randomisation sanity check (red: maps survive randomisation = fail)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def maximization_grid(
    images: np.ndarray,
    units: np.ndarray,
    reach: np.ndarray,
    title: str,
    labels: Sequence[str] | None = None,
) -> Figure:
    """Optimised images, labelled with the unit (or class) and its reach ratio."""
    n = len(images)
    rows, cols = _grid(n, 8)
    fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols, 1.75 * rows + 0.6), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.axis("off")
            continue
        _show_image(ax, images[i])
        name = labels[i] if labels is not None else f"unit {int(units[i])}"
        ratio = "n/a" if not np.isfinite(reach[i]) else f"{reach[i]:.2f}"
        ax.set_title(f"{_short(name, 18)}\nreach {ratio}", fontsize=8)
    fig.suptitle(
        f"{_short(title)}\n(reach = activation reached / best probe input;"
        " each image scaled to its own range)"
    )
    fig.tight_layout(h_pad=0.8)
    return fig
