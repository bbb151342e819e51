"""Image parametrizations: plain pixels, or decorrelated Fourier space (Olah et al. 2017).

Optimising in a Fourier basis whose coefficients are scaled by 1/f^decay makes every
frequency equally easy to change, which removes the high-frequency noise that plain pixel
optimisation produces. For RGB inputs the colours can be decorrelated as well, using the
square root of ImageNet's colour covariance (from the Lucid library of Olah et al.).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline.errors import KerascopeError
from pipeline.maximization.settings import PARAMETRIZATIONS

# sqrt of the colour correlation (Cholesky/SVD) used by Lucid for ImageNet RGB images.
_COLOR_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)
_COLOR_SQRT = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))


def frequency_scale(height: int, width: int, decay: float = 1.0) -> np.ndarray:
    """1 / f^decay over the rfft2 frequency grid (the DC term uses the lowest frequency)."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    freqs = np.sqrt(fx**2 + fy**2)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(height, width)) ** decay
    return (scale * np.sqrt(height * width) / scale.max()).astype(np.float32)


def initial_params(kind: str, shape: tuple, seeds: np.ndarray, std: float = 0.01) -> np.ndarray:
    """Initial parameters for each image, from a per-image stateless seed.

    Each image's start depends only on its own seed, so a unit gets the same start
    whether it is optimised alone or in a batch.
    """
    if kind not in PARAMETRIZATIONS:
        raise KerascopeError(
            f"invalid parametrization '{kind}'; valid: {', '.join(PARAMETRIZATIONS)}"
        )
    height, width, channels = shape
    per_image = (channels, height, width // 2 + 1, 2) if kind == "fourier" else shape
    out = [
        tf.random.stateless_normal(per_image, seed=[int(s), 7], stddev=std).numpy() for s in seeds
    ]
    return np.stack(out).astype(np.float32)


def to_image(
    kind: str,
    params: tf.Tensor,
    shape: tuple,
    value_range: tuple[float, float],
    decay: float = 1.0,
    decorrelate: bool = True,
) -> tf.Tensor:
    """Turn parameters into images in the data's value range (sigmoid squashing).

    Args:
        kind: ``pixel`` or ``fourier``.
        params: The optimised variable.
        shape: (H, W, C) of one image.
        value_range: (lo, hi) of the data.
        decay: Frequency decay of the Fourier scale.
        decorrelate: Apply colour decorrelation (RGB only).

    Returns:
        (batch, H, W, C) images.
    """
    height, width, channels = shape
    if kind == "fourier":
        scale = tf.constant(frequency_scale(height, width, decay))
        spectrum = tf.complex(params[..., 0], params[..., 1]) * tf.cast(scale, tf.complex64)
        spatial = tf.signal.irfft2d(spectrum, fft_length=[height, width])  # (B, C, H, W)
        raw = tf.transpose(spatial, [0, 2, 3, 1]) * 4.0
    else:
        raw = params
    if decorrelate and channels == 3:
        raw = tf.einsum("bhwc,dc->bhwd", raw, tf.constant(_COLOR_SQRT))
    lo, hi = value_range
    return lo + (hi - lo) * tf.sigmoid(raw)
