"""The one result type every attribution method returns, and how maps are shaped."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import KerascopeError


@dataclass
class Attribution:
    """What an attribution method found for a batch of inputs.

    Attributes:
        maps: One map per input: (N, H, W) for images (channels reduced), (N, D, H, W)
            for volumes, (N, T, F) or (N, T) for sequences.
        raw: Class activation maps at the layer's own resolution (CAM methods only).
        layer: The layer a CAM method mapped.
        extras: Per-input arrays a method adds, for example Integrated Gradients'
            ``completeness_error``, ``score_difference`` and signed, input-shaped
            ``attributions``.
        note: What the report should say about how the map was made, for example that
            a ViT layer's class token was dropped and its patch tokens laid on the grid.

    The object behaves as its ``maps`` array where numpy expects one
    (``np.asarray(result)``), and its extras read as attributes
    (``result.completeness_error``).
    """

    maps: np.ndarray
    raw: np.ndarray | None = None
    layer: str | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    note: str = ""

    def __getattr__(self, name: str):
        extras = self.__dict__.get("extras") or {}
        if name in extras:
            return extras[name]
        raise AttributeError(f"'Attribution' has no attribute or extra '{name}'")

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.maps, dtype=dtype)

    def __len__(self) -> int:
        return len(self.maps)

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of ``maps``."""
        return self.maps.shape


def as_maps(maps) -> np.ndarray:
    """The maps of an :class:`Attribution`, or an array given directly, as float32."""
    return np.asarray(maps.maps if isinstance(maps, Attribution) else maps, dtype=np.float32)


def is_image(x: np.ndarray) -> bool:
    """Whether inputs are images (N, H, W, C) rather than sequences (N, T, F)."""
    return x.ndim == 4


def is_volume(x: np.ndarray) -> bool:
    """Whether inputs are volumes (N, D, H, W, C)."""
    return x.ndim == 5


def has_channels(x: np.ndarray) -> bool:
    """Whether the inputs' last axis is channels reduced in a map: images and volumes.

    A sequence's features (N, T, F) each keep their own row instead.
    """
    return x.ndim in (4, 5)


def spatial_sigmas(ndim: int, sigma: float) -> tuple[float, ...]:
    """Gaussian widths that blur every spatial or time axis and neither batch nor channels.

    (0, s, 0) for sequences (N, T, F), (0, s, s, 0) for images, (0, s, s, s, 0) for
    volumes.
    """
    return (0.0, *([float(sigma)] * (ndim - 2)), 0.0)


def reduce_channels(grads: np.ndarray, how: str = "max", image: bool = True) -> np.ndarray:
    """Reduce |gradients| over the channels of images and volumes (Simonyan et al. max).

    Sequences (N, T, F) are returned as they are: every feature is its own row.
    """
    if how not in ("max", "mean"):
        raise KerascopeError(f"invalid channel reduction '{how}'; valid: max, mean")
    if not image:
        return grads
    if how == "max":
        return over_channels(grads, np.maximum)
    return over_channels(grads, np.add) / np.float32(grads.shape[-1])


def over_channels(values: np.ndarray, ufunc=np.add) -> np.ndarray:
    """``ufunc.reduce(values, axis=-1)``, fast for the few channels of an image.

    NumPy reduces a short, innermost axis one strided element at a time: a max over the
    3 channels of 64 64x64 RGB gradients took 11 ms, channel by channel 0.5 ms, more than
    a tenth of a whole saliency call on a VGG-like net.
    """
    channels = values.shape[-1]
    if channels == 0 or channels > 16:
        return ufunc.reduce(values, axis=-1)
    out = np.array(values[..., 0])
    for c in range(1, channels):
        ufunc(out, values[..., c], out=out)
    return out
