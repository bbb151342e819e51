"""Score-CAM (Wang et al. 2020).

From "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks".
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.cam import (
    CamResult,
    cam_layer,
    check_cam_shapes,
    combine,
    upsample_tf,
)
from pipeline.attribution.scores import (
    check_targets,
    compile_step,
    forward,
    run_batched,
    spec,
    target_score,
)
from pipeline.errors import KerascopeError
from pipeline.graph import layer_info


def _scorecam_step(model, layer, input_shape, keep):
    def build():
        fwd = forward(model, "logits", [layer])

        def step(batch, target):
            acts = fwd(batch)[1][layer]  # (b, ..., K)
            channels = acts.shape[-1]
            axes = list(range(1, acts.shape.rank - 1))
            # The `keep` channels with the highest mean activation, per input.
            top = tf.math.top_k(tf.reduce_mean(acts, axis=axes), keep).indices  # (b, keep)
            chosen = tf.gather(acts, top, axis=-1, batch_dims=1)  # (b, ..., keep)
            perm = [0, acts.shape.rank - 1, *axes]
            chosen = tf.reshape(tf.transpose(chosen, perm), (-1, *acts.shape[1:-1]))
            masks = upsample_tf(chosen, input_shape)  # (b * keep, H, W) or (b * keep, T)
            # Each mask is scaled to [0, 1] (Wang et al. eq. 3's normalisation).
            m_axes = list(range(1, masks.shape.rank))
            lo = tf.reduce_min(masks, axis=m_axes, keepdims=True)
            hi = tf.reduce_max(masks, axis=m_axes, keepdims=True)
            masks = tf.math.divide_no_nan(masks - lo, hi - lo)
            # One mask value per position, shared by all its channels (features).
            masked = tf.repeat(batch, keep, axis=0) * masks[..., None]
            logits = fwd(masked)[0]
            probs = target_score(tf.nn.softmax(logits), tf.repeat(target, keep))
            # Softmax of the channels' scores, as in the paper's reference code.
            weights = tf.nn.softmax(tf.reshape(probs, (-1, keep)), axis=1)
            full = tf.reduce_sum(tf.one_hot(top, channels) * weights[..., None], axis=1)
            raw = combine(acts, full)
            return raw, upsample_tf(raw, input_shape)

        return step

    return compile_step(
        model,
        ("scorecam", layer, input_shape, keep),
        build,
        [spec(input_shape), spec((), tf.int32)],
    )


def scorecam(
    model: keras.Model,
    x: np.ndarray,
    targets,
    *,
    layer: str | None = None,
    max_channels: int | None = None,
    batch_size: int = 256,
) -> CamResult:
    """Score-CAM: weight each channel by the target probability of the input it masks.

    Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu (2020). Each channel's map is
    upsampled to the input, scaled to [0, 1] and multiplied with the input; the softmax
    probability of the target on that masked input is the channel's score, and the
    scores' softmax over channels weights the activations. Gradient-free, so it needs
    no differentiable path.

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C) or sequences (N, T, F).
        targets: One class per input (or one for all); None: the predicted class.
        layer: Layer path; default: the last layer with a spatial (or time) output.
        max_channels: Use only this many channels per input, those with the highest
            mean activation (a speed/fidelity trade-off); None uses all.
        batch_size: Masked inputs per compiled step (inputs per step = this divided by
            the number of channels used, at least 1).

    Returns:
        :class:`CamResult`.
    """
    targets = check_targets(model, targets, len(x), x)
    layer = cam_layer(model, layer)
    if max_channels is not None and max_channels <= 0:
        raise KerascopeError(f"scorecam.max_channels must be positive, got {max_channels}")
    x = np.asarray(x, np.float32)
    check_cam_shapes(model, layer, x.shape[1:])
    channels = int(layer_info(model, layer).output_shape[-1])
    keep = channels if max_channels is None else min(int(max_channels), channels)
    fn = _scorecam_step(model, layer, x.shape[1:], keep)
    raw, maps = run_batched(fn, [x, targets], max(1, batch_size // keep))
    return CamResult(raw, maps, layer)
