"""Image parametrizations: plain pixels, decorrelated Fourier space, or Fourier phase only.

Optimising in a Fourier basis whose coefficients are scaled by 1/f^decay makes every
frequency equally easy to change, which removes the high-frequency noise that plain pixel
optimisation produces (Olah et al. 2017). MaCo (Fel et al. 2023, "Unlocking Feature
Visualization for Deeper Networks with MAgnitude Constrained Optimization") goes
further: the magnitude of the spectrum is fixed at 1/f^decay and only the phase is
optimised, so every image keeps the power spectrum of natural images. For RGB inputs
the colours can be decorrelated as well, using the square root of ImageNet's colour
covariance (from the Lucid library of Olah et al.).
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


def maco_magnitude(height: int, width: int, decay: float = 1.0) -> np.ndarray:
    """MaCo's fixed magnitude over the rfft2 grid: 1/f^decay, scaled to unit-variance images.

    The DC term is zero (it has no phase to optimise), so images are centred in the
    value range; the scale makes the spatial image's standard deviation 1 (Parseval,
    counting the columns the rfft2 grid leaves out), which keeps the sigmoid out of
    saturation.
    """
    magnitude = frequency_scale(height, width, decay).astype(np.float64)
    magnitude[0, 0] = 0.0
    # Every column but the first (and the last for an even width) stands for two.
    counts = np.full(magnitude.shape[1], 2.0)
    counts[0] = 1.0
    if width % 2 == 0:
        counts[-1] = 1.0
    energy = float(np.sum(magnitude**2 * counts))
    return (magnitude * height * width / np.sqrt(energy)).astype(np.float32)


def _hermitian_phase(phase: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Phases whose spectrum is that of a real image, so its magnitude survives irfft2d.

    In the columns the rfft2 grid holds whole (the first, and the last for an even
    width), the coefficient at -ky must be the conjugate of the one at ky: there the
    phase is made odd in ky (0 where ky is its own mirror).
    """
    mirrored = tf.gather(phase, (height - np.arange(height)) % height, axis=-2)
    odd = (phase - mirrored) / 2.0
    whole = np.zeros(width // 2 + 1, bool)
    whole[0] = True
    if width % 2 == 0:
        whole[-1] = True
    return tf.where(tf.constant(whole), odd, phase)


def _spatial(spectrum: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """(B, C, H, W//2+1) rfft2 coefficients -> (B, H, W, C) real images."""
    spatial = tf.signal.irfft2d(spectrum, fft_length=[height, width])  # (B, C, H, W)
    return tf.transpose(spatial, [0, 2, 3, 1])


@tf.function(reduce_retracing=True)
def _seeded_starts(seeds: tf.Tensor, per_image: tuple, kind: str, std: float) -> tf.Tensor:
    """One stateless draw per seed, all in one call.

    Per-seed eager calls cost 0.4 ms each, a quarter of a small model's fixed cost per
    maximization.
    """

    def draw(seed):
        pair = tf.stack([seed, 7])
        if kind == "maco":
            return tf.random.stateless_uniform(per_image, pair, -np.pi, np.pi)
        return tf.random.stateless_normal(per_image, seed=pair, stddev=std)

    return tf.map_fn(draw, seeds, fn_output_signature=tf.float32)


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
    if kind == "maco":
        # Random phases (Fel et al. 2023): noise with a natural image's spectrum.
        per_image = (channels, height, width // 2 + 1)
    elif kind == "fourier":
        per_image = (channels, height, width // 2 + 1, 2)
    else:
        per_image = tuple(shape)
    seeds = tf.constant(np.asarray(seeds, dtype=np.int64))
    return _seeded_starts(seeds, per_image, kind, float(std)).numpy()


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
        kind: ``pixel``, ``fourier`` or ``maco``.
        params: The optimised variable: pixels (B, H, W, C), Fourier coefficients
            (B, C, H, W//2+1, 2), or MaCo's phases (B, C, H, W//2+1).
        shape: (H, W, C) of one image.
        value_range: (lo, hi) of the data.
        decay: Frequency decay of the Fourier scale (MaCo: of the fixed magnitude).
        decorrelate: Apply colour decorrelation (RGB only).

    Returns:
        (batch, H, W, C) images.
    """
    height, width, channels = shape
    if kind == "fourier":
        scale = tf.constant(frequency_scale(height, width, decay))
        spectrum = tf.complex(params[..., 0], params[..., 1]) * tf.cast(scale, tf.complex64)
        raw = _spatial(spectrum, height, width) * 4.0
    elif kind == "maco":
        magnitude = tf.constant(maco_magnitude(height, width, decay))
        phase = _hermitian_phase(params, height, width)
        spectrum = tf.complex(magnitude * tf.cos(phase), magnitude * tf.sin(phase))
        raw = _spatial(spectrum, height, width)
    else:
        raw = params
    if decorrelate and channels == 3:
        raw = tf.einsum("bhwc,dc->bhwd", raw, tf.constant(_COLOR_SQRT))
    lo, hi = value_range
    return lo + (hi - lo) * tf.sigmoid(raw)
