"""Regularizers and transformation robustness for readable feature visualizations.

Penalties (per image, so images in a batch never interact): an Lp norm (Simonyan et al.
2013 use L2), total variation (Mahendran & Vedaldi 2015), and a blur penalty, the
distance to a Gaussian-blurred copy (a soft form of the blurring of Yosinski et al.
2015). Transformation robustness (Olah et al. 2017): between steps the image is jittered,
scaled and rotated at random, so only patterns that survive small transformations grow.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf


def lp_norm(images: tf.Tensor, p: float, center: float) -> tf.Tensor:
    """Mean |x - center|^p per image."""
    return tf.reduce_mean(tf.abs(images - center) ** p, axis=[1, 2, 3])


def total_variation(images: tf.Tensor) -> tf.Tensor:
    """Mean squared difference of neighbouring pixels per image."""
    dy = images[:, 1:, :, :] - images[:, :-1, :, :]
    dx = images[:, :, 1:, :] - images[:, :, :-1, :]
    return tf.reduce_mean(dy**2, axis=[1, 2, 3]) + tf.reduce_mean(dx**2, axis=[1, 2, 3])


def _gaussian_kernel(sigma: float, channels: int) -> tf.Tensor:
    radius = max(1, int(round(2 * sigma)))
    grid = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel_1d = np.exp(-(grid**2) / (2 * sigma**2))
    kernel = np.outer(kernel_1d, kernel_1d)
    kernel /= kernel.sum()
    return tf.constant(np.tile(kernel[:, :, None, None], (1, 1, channels, 1)))


def blur_penalty(images: tf.Tensor, sigma: float = 1.0) -> tf.Tensor:
    """Mean squared distance to a Gaussian-blurred copy, per image."""
    kernel = _gaussian_kernel(sigma, images.shape[-1])
    blurred = tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "SAME")
    return tf.reduce_mean((images - tf.stop_gradient(blurred)) ** 2, axis=[1, 2, 3])


def shift_pixels(images: tf.Tensor, seed: tf.Tensor, jitter: int, wrap: bool = False) -> tf.Tensor:
    """Shift all images of a batch by one random whole-pixel offset.

    Args:
        images: (B, H, W, C).
        seed: Stateless seed, shape (2,).
        jitter: Maximum shift in pixels along each axis (both directions).
        wrap: Wrap around instead of reflecting at the borders: the exact translation
            of a periodic image (a Fourier parametrization makes one), and a roll,
            which is cheaper than a reflecting pad and a slice.

    Returns:
        Images of the same shape: pixel (y, x) holds the input's (y + dy, x + dx),
        reflected (or wrapped) at the borders, with dx, dy uniform in [-jitter, jitter].
        The same seed gives the same (dy, dx) either way.
    """
    if jitter < 1:
        return images
    height, width = images.shape[1], images.shape[2]
    reach = min(jitter, height - 1, width - 1)  # REFLECT pads less than the image size
    if reach < 1:
        return images
    offset = tf.random.stateless_uniform(
        [2], seed=seed, minval=0, maxval=2 * reach + 1, dtype=tf.int32
    )
    if wrap:  # offset - reach is (dy, dx); roll moves content the other way
        return tf.roll(images, reach - offset, axis=[1, 2])
    padded = tf.pad(images, [[0, 0], [reach, reach], [reach, reach], [0, 0]], mode="REFLECT")
    shifted = padded[:, offset[0] : offset[0] + height, offset[1] : offset[1] + width, :]
    # A slice at a traced offset has unknown height and width; restoring the static shape
    # lets every layer after it use its fixed-shape kernels (the default recipe on
    # mnist_cnn took 1.5x its floor without this).
    shifted.set_shape(images.shape)
    return shifted


def random_transform(
    images: tf.Tensor,
    seed: tf.Tensor,
    jitter: int = 0,
    scale: tuple[float, float] = (1.0, 1.0),
    rotate: float = 0.0,
    wrap: bool = False,
) -> tf.Tensor:
    """Jitter, scale and rotate all images of a batch by one random affine transform.

    The transform depends only on ``seed`` (the step), not on the batch, so a unit sees
    the same transforms whether it is optimised alone or with others. Jitter alone (no
    zoom, no rotation) shifts by whole pixels with reflected borders, as Lucid's jitter
    (Olah et al. 2017): a pad and a slice, whose gradient is a slice, instead of a
    bilinear resampling, which cost a third of a small model's optimisation step.

    Args:
        images: (B, H, W, C).
        seed: Stateless seed, shape (2,).
        jitter: Maximum shift in pixels.
        scale: Range of the zoom factor.
        rotate: Maximum rotation in degrees.
        wrap: Fill from the opposite border instead of reflecting (periodic images).
    """
    if not jitter and scale == (1.0, 1.0) and not rotate:
        return images
    if scale == (1.0, 1.0) and not rotate:
        return shift_pixels(images, seed, int(jitter), wrap)
    u = tf.random.stateless_uniform([4], seed=seed, minval=-1.0, maxval=1.0)
    height, width = images.shape[1], images.shape[2]
    angle = u[0] * rotate * math.pi / 180.0
    zoom = scale[0] + (u[1] + 1.0) / 2.0 * (scale[1] - scale[0])
    dx, dy = u[2] * float(jitter), u[3] * float(jitter)
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2).
    a2 = cx - cos * cx + sin * cy + dx
    b2 = cy - sin * cx - cos * cy + dy
    transform = tf.stack([cos, -sin, a2, sin, cos, b2, 0.0, 0.0])[None]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=tf.tile(transform, [tf.shape(images)[0], 1]),
        output_shape=tf.constant([height, width]),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="WRAP" if wrap else "REFLECT",
    )
