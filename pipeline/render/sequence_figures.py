"""Figures for 1-D inputs (time series (T, F)): arrays in, matplotlib figures out.

An image's attribution is drawn over the image; a time series' is drawn *along* it: each
feature as a line over time, with the attribution as a shaded band behind it (and, for
per-feature maps, as a time x feature heat map). No file or HDF5 access here, and no
tensor computation: the maps come from the attributions file (pytorch-grad-cam #233,
tf-keras-vis #23 ask for exactly these views).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from pipeline.render.figures import _short  # noqa: E402


def _per_time(attribution: np.ndarray, steps: int) -> np.ndarray:
    """An attribution as one value per time step: (T,) as is, (T, F) summed over F.

    A map of another length (a CAM at its layer's resolution) is stretched linearly.
    """
    values = np.asarray(attribution, np.float64)
    if values.ndim == 2:
        values = values.sum(axis=1)
    if values.ndim != 1:
        raise ValueError(f"a sequence attribution is (T,) or (T, F), got {values.shape}")
    if len(values) != steps:
        values = np.interp(np.linspace(0, 1, steps), np.linspace(0, 1, len(values)), values)
    return values


def _band(ax, per_time: np.ndarray, color: str) -> None:
    """Shade each time step's column by |attribution| (the largest fully opaque)."""
    scale = float(np.abs(per_time).max()) or 1.0
    for t, value in enumerate(per_time):
        ax.axvspan(t - 0.5, t + 0.5, color=color, alpha=0.6 * abs(value) / scale, lw=0)


def series_attribution(
    series: np.ndarray,
    attribution: np.ndarray,
    *,
    title: str = "",
    feature_names: Sequence[str] | None = None,
    color: str = "tab:red",
) -> Figure:
    """One time series with its attribution as a shaded band, and the attribution below.

    Args:
        series: The input, (T, F) (or (T,) for one feature).
        attribution: Its map, (T,) or (T, F) (summed over features for the band); a
            shorter map (a CAM at its layer's resolution) is stretched to T.
        title: Figure title (the method and the explained class or score).
        feature_names: A legend label per feature (default ``f0``, ``f1``, ...).
        color: The band's colour; positive and negative values shade alike, and the
            lower panel shows the signed values.

    Returns:
        A figure with the series (top) and the attribution per time step (bottom).
    """
    series = np.asarray(series, np.float64)
    if series.ndim == 1:
        series = series[:, None]
    steps, features = series.shape
    per_time = _per_time(attribution, steps)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(6.5, 3.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    _band(top, per_time, color)
    names = list(feature_names or [f"f{i}" for i in range(features)])
    for f in range(features):
        top.plot(np.arange(steps), series[:, f], lw=1.0, label=_short(names[f], 20))
    if features <= 8:
        top.legend(fontsize=8, loc="upper right", ncols=min(features, 4), frameon=False)
    top.set_ylabel("input")
    top.set_xlim(-0.5, steps - 0.5)
    if title:
        top.set_title(_short(title))
    bottom.bar(np.arange(steps), per_time, width=1.0, color=np.where(per_time >= 0, color, "grey"))
    bottom.axhline(0, color="black", lw=0.5)
    bottom.set_ylabel("attribution")
    bottom.set_xlabel("time step")
    fig.tight_layout()
    return fig


def series_heatmap(
    attribution: np.ndarray,
    *,
    title: str = "",
    feature_names: Sequence[str] | None = None,
    cmap: str = "RdBu_r",
) -> Figure:
    """A per-feature sequence map (T, F) as a feature x time heat map, zero at white.

    Args:
        attribution: The map, (T, F).
        title: Figure title.
        feature_names: A row label per feature.
        cmap: A diverging colour map (symmetric around zero).

    Returns:
        The figure, with a colorbar.
    """
    values = np.asarray(attribution, np.float64)
    if values.ndim != 2:
        raise ValueError(f"series_heatmap needs a (T, F) map, got {values.shape}")
    limit = float(np.abs(values).max()) or 1.0
    steps, features = values.shape
    fig, ax = plt.subplots(figsize=(6.5, 0.6 + 0.3 * min(features, 24)))
    image = ax.imshow(
        values.T, aspect="auto", cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest"
    )
    names = list(feature_names or [f"f{i}" for i in range(features)])
    if features <= 24:
        ax.set_yticks(range(features), [_short(n, 20) for n in names])
    ax.set_xlabel("time step")
    if title:
        ax.set_title(_short(title))
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="attribution")
    fig.tight_layout()
    return fig


def series_methods(
    series: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    title: str = "",
    feature_names: Sequence[str] | None = None,
) -> Figure:
    """One input under several methods: a row per method, each with its shaded band.

    Args:
        series: The input, (T, F) or (T,).
        maps: Method name -> its map for this input, (T,) or (T, F) (shorter maps are
            stretched to T).
        title: Figure title (the input and its explained class or score).
        feature_names: Legend labels (shown on the first row only).

    Returns:
        The figure (one row per method, shared time axis).
    """
    series = np.asarray(series, np.float64)
    if series.ndim == 1:
        series = series[:, None]
    steps, features = series.shape
    rows = max(1, len(maps))
    fig, axes = plt.subplots(rows, 1, figsize=(6.5, 0.4 + 1.3 * rows), sharex=True, squeeze=False)
    names = list(feature_names or [f"f{i}" for i in range(features)])
    for row, (ax, (method, attribution)) in enumerate(zip(axes[:, 0], maps.items(), strict=False)):
        _band(ax, _per_time(attribution, steps), "tab:red")
        for f in range(features):
            ax.plot(np.arange(steps), series[:, f], lw=0.9, label=_short(names[f], 20))
        ax.set_ylabel(_short(method, 14), fontsize=8)
        ax.set_xlim(-0.5, steps - 0.5)
        if row == 0 and features <= 8:
            ax.legend(fontsize=8, loc="upper right", ncols=min(features, 4), frameon=False)
    axes[-1, 0].set_xlabel("time step (shading: |attribution| per step, summed over features)")
    if title:
        fig.suptitle(_short(title))
    fig.tight_layout()
    return fig
