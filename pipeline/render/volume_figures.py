"""Figures for 3-D inputs (volumes (D, H, W, C)): arrays in, matplotlib figures out.

A volume cannot be drawn at once; a reader of CT or MRI scans pages through its depth.
Every figure here shows a row of evenly spaced depth slices (the first and last among
them), with a map over the input's slices where there is one: inputs, a conv layer's
channels and mean activation, and each attribution method's map. Maps at another
resolution (a Conv3D layer's, a CAM's raw map) are resized trilinearly to the input's
(D, H, W) first, so a slice of the map lies over the same slice of the input. No file
or HDF5 access here, and no tensor computation: the arrays come from the outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pipeline.render.figures import _short, _show_image  # noqa: E402


def slice_indices(depth: int, count: int) -> np.ndarray:
    """``count`` evenly spaced depth indices from the first slice to the last.

    Args:
        depth: Slices in the volume.
        count: Slices wanted; all of them when the volume has fewer.

    Returns:
        Sorted distinct indices in [0, depth).
    """
    if depth < 1 or count < 1:
        raise ValueError(f"need a depth and a count of at least 1, got {depth} and {count}")
    return np.unique(np.round(np.linspace(0, depth - 1, min(count, depth))).astype(int))


def resize_volume(values: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A (d, h, w) map resized trilinearly to ``shape`` (D, H, W); as is if it fits."""
    values = np.asarray(values, np.float64)
    if values.ndim != 3:
        raise ValueError(f"a volume map is (D, H, W), got {values.shape}")
    if values.shape == tuple(shape):
        return values
    from scipy.ndimage import zoom

    factors = [s / v for s, v in zip(shape, values.shape, strict=True)]
    # grid_mode: voxels are cells whose outer edges line up (half-pixel centres, as the
    # attribute stage's tf.image.resize upsamples CAMs); edges repeat the border value.
    return zoom(values, factors, order=1, mode="nearest", grid_mode=True)


def _volume(volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume, np.float64)
    if volume.ndim == 3:
        volume = volume[..., None]
    if volume.ndim != 4:
        raise ValueError(f"a volume is (D, H, W, C), got {volume.shape}")
    return volume


def _slice_row(axes, volume, overlay, picks, cmap, alpha, labels) -> object:
    """Draw slices of ``volume`` (with ``overlay`` over them) on a row of axes."""
    image = None
    for ax, d in zip(axes, picks, strict=True):
        _show_image(ax, volume[d])
        if overlay is not None:
            image = ax.imshow(overlay[d], cmap=cmap, alpha=alpha, vmin=0, vmax=1)
        if labels:
            ax.set_title(f"slice {d}", fontsize=7)
    return image


def _normalised(values: np.ndarray) -> np.ndarray:
    """|values| scaled to [0, 1] by their own maximum (one scale for the whole volume)."""
    heat = np.abs(values)
    return heat / (heat.max() or 1.0)


def volume_slices(
    volume: np.ndarray,
    overlay: np.ndarray | None = None,
    *,
    count: int = 6,
    title: str = "",
    cmap: str = "magma",
    alpha: float = 0.6,
) -> Figure:
    """One volume as a row of depth slices, with a map blended over them.

    Args:
        volume: The input, (D, H, W, C) or (D, H, W).
        overlay: A map over it, (d, h, w), resized trilinearly to (D, H, W); its
            magnitude is scaled to [0, 1] over the whole volume, so slices compare.
        count: Slices shown (evenly spaced, first and last included).
        title: Figure title.
        cmap: Colormap of the overlay.
        alpha: Opacity of the overlay.

    Returns:
        The figure, one column per slice.
    """
    volume = _volume(volume)
    picks = slice_indices(len(volume), count)
    heat = None
    if overlay is not None:
        heat = _normalised(resize_volume(overlay, volume.shape[:3]))
    fig, axes = plt.subplots(
        1, len(picks), figsize=(1.4 * len(picks) + 1.0, 2.0), squeeze=False, layout="constrained"
    )
    image = _slice_row(axes[0], volume, heat, picks, cmap, alpha, labels=True)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="|map| / max over the volume")
    if title:
        fig.suptitle(_short(title))
    return fig


def volume_methods(
    volume: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    count: int = 6,
    title: str = "",
    cmap: str = "magma",
    alpha: float = 0.6,
) -> Figure:
    """One volume under several methods: the input's slices, then a row per method.

    Args:
        volume: The input, (D, H, W, C) or (D, H, W).
        maps: Method name -> its map for this input, (d, h, w) (resized trilinearly
            to (D, H, W) when smaller: a CAM at its layer's resolution).
        count: Slices per row (evenly spaced along depth).
        title: Figure title (the input and its explained class).
        cmap: Colormap of the maps.
        alpha: Opacity of the maps over the slices.

    Returns:
        The figure: rows are the input and the methods, columns the same slices.
    """
    volume = _volume(volume)
    picks = slice_indices(len(volume), count)
    rows = 1 + len(maps)
    fig, axes = plt.subplots(
        rows,
        len(picks),
        figsize=(1.3 * len(picks) + 1.4, 1.3 * rows + 0.6),
        squeeze=False,
        layout="constrained",
    )
    _slice_row(axes[0], volume, None, picks, cmap, alpha, labels=True)
    axes[0, 0].set_ylabel("input", fontsize=8)
    image = None
    for row, (method, values) in enumerate(maps.items(), start=1):
        heat = _normalised(resize_volume(values, volume.shape[:3]))
        image = _slice_row(axes[row], volume, heat, picks, cmap, alpha, labels=False)
        axes[row, 0].set_ylabel(_short(method.replace("_", " "), 14), fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="|attribution| / max per map")
    if title:
        fig.suptitle(_short(title))
    return fig


def volume_feature_maps(
    acts: np.ndarray,
    title: str,
    *,
    count: int = 6,
    cmap: str = "viridis",
    max_channels: int = 8,
) -> Figure:
    """A Conv3D output for one input: a row of depth slices per channel, one scale.

    Args:
        acts: The layer's output, (d, h, w, channels).
        title: Figure title.
        count: Slices per row (evenly spaced along the layer's depth).
        cmap: Colormap.
        max_channels: Channels drawn (the first ones).

    Returns:
        The figure: rows are channels, columns depth slices, one shared colour scale.
    """
    acts = np.asarray(acts, np.float64)
    if acts.ndim != 4:
        raise ValueError(f"volume feature maps are (d, h, w, channels), got {acts.shape}")
    channels = min(acts.shape[-1], max_channels)
    picks = slice_indices(acts.shape[0], count)
    lo, hi = float(acts[..., :channels].min()), float(acts[..., :channels].max())
    fig, axes = plt.subplots(
        channels,
        len(picks),
        figsize=(1.1 * len(picks) + 1.6, 1.1 * channels + 0.7),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for k in range(channels):
        for col, d in enumerate(picks):
            ax = axes[k, col]
            image = ax.imshow(acts[d, :, :, k], cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(f"slice {d}", fontsize=7)
        axes[k, 0].set_ylabel(f"ch {k}", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="activation")
    more = f", first {channels} of {acts.shape[-1]} channels" if channels < acts.shape[-1] else ""
    fig.suptitle(_short(f"{title} (shared scale {lo:.2g} to {hi:.2g}{more})", 80))
    return fig


def volume_grid(
    volumes: np.ndarray,
    titles: Sequence[str],
    *,
    count: int = 6,
    overlays: np.ndarray | None = None,
    cmap: str = "inferno",
    alpha: float = 0.5,
    colors: Sequence[str] | None = None,
) -> Figure:
    """Several volumes, one row of depth slices each (optionally with a map over them).

    Args:
        volumes: (N, D, H, W, C).
        titles: A row label per volume (for example true and predicted classes).
        count: Slices per row.
        overlays: Optional maps (N, d, h, w), resized trilinearly and scaled per volume.
        cmap: Colormap of the overlays.
        alpha: Opacity of the overlays.
        colors: A label colour per row (red for a misclassified input, say).

    Returns:
        The figure: rows are volumes, columns the same depth slices.
    """
    volumes = np.asarray(volumes, np.float64)
    if volumes.ndim != 5:
        raise ValueError(f"volumes are (N, D, H, W, C), got {volumes.shape}")
    picks = slice_indices(volumes.shape[1], count)
    n = len(volumes)
    fig, axes = plt.subplots(
        n,
        len(picks),
        figsize=(1.2 * len(picks) + 1.8, 1.2 * n + 0.6),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for i in range(n):
        heat = None
        if overlays is not None:
            heat = _normalised(resize_volume(overlays[i], volumes.shape[1:4]))
        drawn = _slice_row(axes[i], volumes[i], heat, picks, cmap, alpha, labels=i == 0)
        image = drawn if drawn is not None else image
        color = colors[i] if colors is not None else "black"
        axes[i, 0].set_ylabel(_short(titles[i], 18), fontsize=7, color=color)
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label="mean activation / max")
    return fig
