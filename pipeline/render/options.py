"""The report's options (the ``render`` config section) and per-layer views."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from pipeline.errors import KerascopeError, check_choice, check_positive
from pipeline.render.layers import LAYER_SELECTIONS

#: The views a layer can get (``auto`` picks one from its output shape and type).
LAYER_VIEWS = ("auto", "conv", "dense", "recurrent", "projection", "skip")


@dataclass
class RenderOptions:
    """How the report draws (the ``render`` config section).

    Attributes:
        cmap: Colormap of feature maps.
        attribution_cmap: Colormap of attribution maps.
        overlay_cmap: Colormap of heatmap overlays.
        diverging_cmap: Colormap of signed values (recurrent units).
        color_scale: ``shared`` (one scale per figure) or ``per_channel``.
        max_inputs: Inputs drawn per layer.
        max_channels: Channels drawn per feature-map grid.
        max_attribution_inputs: Inputs in the attribution grid.
        max_prediction_inputs: Probe inputs in the prediction grid.
        volume_slices: Depth slices per row in the figures of volumes (D, H, W, C):
            evenly spaced, the first and last included.
        projection: ``pca`` or ``tsne`` for 2-D projections of wide layers.
        projection_min_units: Project dense layers with at least this many units.
        layer_views: View per layer path, glob or class name (see :func:`choose_view`).
        formats: ``png`` and/or ``svg``.
        dpi: Resolution of PNG figures.
        layers: ``inspected`` (convolution, dense, recurrent layers and block outputs get
            figures; the rest are rows of the health table) or ``all``.
        workers: Processes drawing figures: ``auto`` (one per CPU) or a number.
        cache: Reuse figures whose inputs did not change since the last render.
    """

    cmap: str = "viridis"
    attribution_cmap: str = "magma"
    overlay_cmap: str = "inferno"
    diverging_cmap: str = "RdBu_r"
    color_scale: str = "shared"
    max_inputs: int = 3
    max_channels: int = 64
    max_attribution_inputs: int = 8
    max_prediction_inputs: int = 100
    volume_slices: int = 6
    projection: str = "pca"
    projection_min_units: int = 64
    layer_views: dict[str, str] = field(default_factory=dict)
    formats: list[str] = field(default_factory=lambda: ["png"])
    dpi: int = 90
    layers: str = "inspected"
    workers: str = "auto"
    cache: bool = True

    def worker_count(self) -> int:
        """The number of drawing processes ``workers`` asks for."""
        from pipeline.render.report import default_workers

        return default_workers() if self.workers == "auto" else int(self.workers)

    def check(self, prefix: str = "render") -> None:
        """Raise a one-line error for an invalid value."""
        import matplotlib

        check_choice(f"{prefix}.color_scale", self.color_scale, ["shared", "per_channel"])
        check_choice(f"{prefix}.projection", self.projection, ["pca", "tsne"])
        check_choice(f"{prefix}.layers", self.layers, list(LAYER_SELECTIONS))
        if self.workers != "auto" and not (str(self.workers).isdigit() and int(self.workers)):
            raise KerascopeError(
                f"'{prefix}.workers' must be auto or a positive integer, got {self.workers!r}"
            )
        for fmt in self.formats:
            check_choice(f"{prefix} format", fmt, ["png", "svg"])
        # The perceptually uniform and diverging colormaps first: error hints list these.
        suggested = ("viridis", "magma", "inferno", "plasma", "cividis", "gray", "RdBu_r")
        colormaps = [*suggested, *sorted(set(matplotlib.colormaps) - set(suggested))]
        for key in ("cmap", "attribution_cmap", "overlay_cmap", "diverging_cmap"):
            check_choice(f"{prefix}.{key}", getattr(self, key), colormaps)
        for layer, view in self.layer_views.items():
            check_choice(f"{prefix}.layer_views view for '{layer}'", view, LAYER_VIEWS)
        # Upper bounds that keep a figure's pixel buffer in memory (a dpi of 10,000
        # would ask for gigabytes per figure).
        drawn = 4096
        limits = {
            "max_inputs": drawn,
            "max_channels": drawn,
            "max_attribution_inputs": drawn,
            "max_prediction_inputs": drawn,
            "volume_slices": 64,
            "dpi": 600,
            "projection_min_units": 10**9,
        }
        for key, limit in limits.items():
            check_positive(f"{prefix}.{key}", getattr(self, key), at_most=limit)


def _layer_view(shape: tuple, class_name: str) -> str:
    """The automatic view of a layer from its output shape (without batch) and type."""
    if class_name in ("LSTM", "GRU", "SimpleRNN") and len(shape) == 2:
        return "recurrent"
    if len(shape) in (3, 4):  # (h, w, channels), or (d, h, w, channels) of a Conv3D
        return "conv"
    if len(shape) == 2:
        return "projection" if class_name == "Embedding" else "recurrent"
    return "dense"


def choose_view(overrides: dict[str, str], path: str, class_name: str, shape: tuple) -> str:
    """The view of one layer: an override by exact path, then by glob, then by class name.

    Args:
        overrides: ``render.layer_views``: key = layer path, glob (``base/block*``) or
            layer class name (``Dense``); value = a view of :data:`LAYER_VIEWS`.
        path: The layer path.
        class_name: The layer's class name.
        shape: The layer's output shape without the batch axis.

    Returns:
        A view other than ``auto``.
    """
    view = overrides.get(path)
    if view is None:
        globbed = [v for k, v in overrides.items() if fnmatch.fnmatchcase(path, k)]
        view = globbed[0] if globbed else overrides.get(class_name, "auto")
    if view == "auto":
        view = _layer_view(shape, class_name)
    # A view that cannot draw this shape falls back to the generic flattened view.
    if view == "conv" and len(shape) not in (3, 4) or view == "recurrent" and len(shape) != 2:
        view = "dense"
    return view
