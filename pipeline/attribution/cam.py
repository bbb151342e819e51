"""Class activation maps: Grad-CAM, Grad-CAM++, LayerCAM, Score-CAM and Faster-ScoreCAM.

Selvaraju et al. 2017; Chattopadhay et al. 2018; Jiang et al. 2021; Wang et al. 2020;
Faster-ScoreCAM as tf-keras-vis defines it.

Each returns an :class:`Attribution` whose ``raw`` maps are at the layer's resolution,
(N, h, w) for 2-D layers, (N, d, h, w) for 3-D ones or (N, T) for temporal ones, and
whose ``maps`` are upsampled to the input: (N, H, W) for images, (N, D, H, W) for
volumes (trilinearly), (N, T) for sequences.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.batching import (
    compile_step,
    forward_rows,
    gradient_rows,
    run_batched,
    spec,
)
from pipeline.attribution.options import resolve
from pipeline.attribution.result import Attribution
from pipeline.attribution.scoring import check_targets, forward, target_score
from pipeline.errors import KerascopeError
from pipeline.graph import TokenGrid, default_cam_layer, is_spatial, layer_info, token_grids


def cam_layer(model: keras.Model, layer: str | None) -> str:
    """Resolve the CAM layer: the given one (checked) or :func:`default_cam_layer`.

    Raises:
        KerascopeError: Unknown layer, or one without a spatial or time axis.
    """
    if layer is None:
        return default_cam_layer(model)
    info = layer_info(model, layer)
    if not is_spatial(info):
        raise KerascopeError(
            f"layer '{layer}' has output shape {info.output_shape}, with no spatial or time "
            f"axis for a class activation map; use a conv or recurrent layer such as "
            f"'{default_cam_layer(model)}'"
        )
    return layer


def token_grid(model: keras.Model, layer: str) -> TokenGrid | None:
    """The patch grid of a ViT token layer (see :func:`pipeline.graph.token_grids`)."""
    return token_grids(model).get(layer)


def on_grid(acts, grid: TokenGrid | None):
    """Token activations (b, [1 +] P, C) as a map (b, h, w, C), class token dropped.

    A CAM over a ViT layer needs its patch tokens where the patches are (Chefer et al.
    2021 and pytorch-grad-cam's ``reshape_transform`` do the same); the class token
    has no place on the image. Other layers' activations are returned as they are.
    """
    if grid is None:
        return acts
    patches = acts[:, 1:] if grid.class_token else acts
    return tf.reshape(patches, (-1, grid.height, grid.width, acts.shape[-1]))


def check_cam_shapes(model: keras.Model, layer: str, input_shape: tuple) -> None:
    """Raise a one-line error if ``layer``'s map cannot be laid over the input.

    2-D maps (h, w) go over images; 3-D maps (d, h, w) over volumes; 1-D maps over
    time (T) go over sequences, or over the rows of an image (for models that read
    image rows as time steps). A ViT's token layer (T, C) over images is mapped on its
    patch grid.
    """
    if len(input_shape) == 3 and token_grid(model, layer) is not None:
        return
    shape = layer_info(model, layer).output_shape
    if shape is None or len(shape) not in (2, 3, 4):
        raise KerascopeError(
            f"layer '{layer}' has output shape {shape}; class activation maps need a "
            "(time, channels), (height, width, channels) or (depth, height, width, "
            "channels) output"
        )
    if len(shape) == 4 and len(input_shape) != 4:
        raise KerascopeError(
            f"layer '{layer}' has a 3-D output {shape} but the inputs have shape "
            f"{tuple(input_shape)}, not volumes (D, H, W, C); choose a layer whose map "
            "has the inputs' axes"
        )
    if len(shape) == 3 and len(input_shape) != 3:
        kind = "volumes" if len(input_shape) == 4 else "sequences"
        raise KerascopeError(
            f"layer '{layer}' has a 2-D output {shape} but the inputs are {kind} "
            f"{tuple(input_shape)}; choose a layer with "
            + ("a depth axis (a Conv3D)" if kind == "volumes" else "a time axis")
        )


def upsample_tf(raw, input_shape: tuple):
    """Resize raw maps to the input's size with bilinear interpolation (graph op).

    Volume maps (n, d, h, w) are resized trilinearly: bilinearly over (h, w) in each
    depth slice, then linearly along depth (linear interpolation is separable, so the
    two passes are exactly trilinear, with ``tf.image.resize``'s half-pixel centres).
    Temporal maps (n, T) over an image input are stretched along the rows and repeated
    across the columns.
    """
    if len(input_shape) == 4:
        depth, height, width = input_shape[:3]
        d, h, w = raw.shape[1:]
        # (n, d, h, w) -> (n * d, h, w, 1): every depth slice resized over (H, W).
        planes = tf.image.resize(tf.reshape(raw, (-1, h, w, 1)), (height, width))
        planes = tf.reshape(planes, (-1, d, height * width, 1))
        # Depth against the flattened (H * W) axis, which keeps its size.
        full = tf.image.resize(planes, (depth, height * width))
        return tf.reshape(full, (-1, depth, height, width))
    if len(input_shape) == 3:
        height, width = input_shape[:2]
        if raw.shape.rank == 3:
            return tf.image.resize(raw[..., None], (height, width))[..., 0]
        rows = tf.image.resize(raw[:, :, None, None], (height, 1))[..., 0]
        return tf.repeat(rows, width, axis=2)
    return tf.image.resize(raw[:, :, None, None], (input_shape[0], 1))[:, :, 0, 0]


def combine(acts, weights):
    """ReLU of the channel-weighted sum of activations: (n, ..., K) x (n, K) -> (n, ...)."""
    shape = tf.concat([tf.shape(weights)[:1], tf.ones(acts.shape.rank - 2, tf.int32), [-1]], 0)
    return tf.nn.relu(tf.reduce_sum(acts * tf.reshape(weights, shape), axis=-1))


def _cam_weights(variant: str, acts, grads):
    """Channel weights of Grad-CAM or Grad-CAM++ from activations and their gradients."""
    axes = list(range(1, acts.shape.rank - 1))
    if variant == "gradcam":
        # Selvaraju et al. eq. 1: global-average-pooled gradients.
        return tf.reduce_mean(grads, axis=axes)
    # Chattopadhay et al. eq. 19, closed form for an exponential score:
    # alpha = g^2 / (2 g^2 + sum(A) g^3), weights = sum(alpha * relu(g)).
    g2, g3 = grads**2, grads**3
    denominator = 2.0 * g2 + tf.reduce_sum(acts, axis=axes, keepdims=True) * g3
    alphas = tf.math.divide_no_nan(g2, denominator)
    return tf.reduce_sum(alphas * tf.nn.relu(grads), axis=axes)


def _cam_map(variant: str, acts, grads):
    """The raw map of a gradient CAM method from activations and their gradients."""
    if variant == "layercam":
        # Jiang et al. eq. 5-6: every position weights its own activation by its own
        # positive gradient, instead of one weight per channel.
        return tf.nn.relu(tf.reduce_sum(tf.nn.relu(grads) * acts, axis=-1))
    return combine(acts, _cam_weights(variant, acts, grads))


def _cam_step(model, layer, score, input_shape, variant):
    grid = token_grid(model, layer) if len(input_shape) == 3 else None

    def build():
        fwd = forward(model, score, [layer])

        def step(batch, target):
            with tf.GradientTape() as tape:
                outputs, taps = fwd(batch)
                value = target_score(outputs, target)
            acts = taps[layer]
            grads = on_grid(tape.gradient(value, acts), grid)
            raw = _cam_map(variant, on_grid(acts, grid), grads)
            return raw, upsample_tf(raw, input_shape)

        return step

    return compile_step(
        model,
        (variant, layer, score, input_shape),
        build,
        [spec(input_shape), spec((), tf.int32)],
    )


def _prepare(model: keras.Model, x, targets, layer: str | None):
    """Checked targets, the CAM layer and float inputs, shared by every CAM method."""
    targets = check_targets(model, targets, len(x), x)
    layer = cam_layer(model, layer)
    x = np.asarray(x, np.float32)
    check_cam_shapes(model, layer, x.shape[1:])
    return targets, layer, x


def _gradient_cam(variant: str, model: keras.Model, x, targets, options: dict) -> Attribution:
    _, common = resolve(variant, options)
    targets, layer, x = _prepare(model, x, targets, common["layer"])
    fn = _cam_step(model, layer, common["score"], x.shape[1:], variant)
    raw, maps = run_batched(
        fn, [x, targets], gradient_rows(model, x.shape[1:], common["batch_size"])
    )
    return Attribution(maps, raw=raw, layer=layer, note=_note(model, layer, x))


def _note(model: keras.Model, layer: str, x: np.ndarray) -> str:
    """What the report says about a token layer's map: its grid, the class token dropped."""
    grid = token_grid(model, layer) if x.ndim == 4 else None
    return f"'{layer}' as {grid.describe()}" if grid is not None else ""


def gradcam(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """Grad-CAM: activations weighted by their spatially averaged gradients, then ReLU.

    Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra (2017), "Grad-CAM: Visual
    Explanations from Deep Networks via Gradient-based Localization".

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C), volumes (N, D, H, W, C) or sequences (N, T, F).
        targets: One class per input (or one for all); None: the predicted class.
        **options: ``layer`` (a layer path; default
            :func:`pipeline.graph.default_cam_layer`), ``score`` (``logits``, the default,
            or ``probabilities``) and ``batch_size`` (inputs per compiled step).

    Returns:
        :class:`Attribution` with raw and upsampled maps and the layer used.
    """
    return _gradient_cam("gradcam", model, x, targets, options)


def gradcam_plus_plus(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """Grad-CAM++: pixel-wise weighting of positive gradients.

    Chattopadhay, Sarkar, Howlader & Balasubramanian (2018), "Grad-CAM++: Generalized
    Gradient-Based Visual Explanations for Deep Convolutional Networks". Uses the paper's
    closed form for an exponential output, alpha = g^2 / (2 g^2 + sum(A) g^3).

    Args and returns as :func:`gradcam`.
    """
    return _gradient_cam("gradcam_plus_plus", model, x, targets, options)


def layercam(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """LayerCAM: activations weighted position by position by their positive gradients.

    Jiang, Zhang, Hou, Cheng & Wei (2021), "LayerCAM: Exploring Hierarchical Class
    Activation Maps for Localization": ReLU(sum_k ReLU(dS/dA_k) * A_k). Per-position
    weights keep fine detail, so it also maps shallow layers well.

    Args and returns as :func:`gradcam`.
    """
    return _gradient_cam("layercam", model, x, targets, options)


def _scorecam_step(model, layer, input_shape, keep):
    grid = token_grid(model, layer) if len(input_shape) == 3 else None

    def build():
        fwd = forward(model, "logits", [layer])

        def step(batch, target):
            acts = on_grid(fwd(batch)[1][layer], grid)  # (b, ..., K)
            channels = acts.shape[-1]
            axes = list(range(1, acts.shape.rank - 1))
            # The `keep` channels whose activations vary the most over positions, per
            # input (tf-keras-vis's max_N; all of them when keep == channels).
            if keep == channels:  # every channel, in order: no ranking to pay for
                top = tf.broadcast_to(tf.range(channels), (tf.shape(acts)[0], channels))
                chosen = acts
            else:
                importance = tf.math.reduce_variance(acts, axis=axes)
                top = tf.math.top_k(importance, keep).indices  # (b, keep)
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
            probs = target_score(fwd.probabilities(logits), tf.repeat(target, keep))
            # Softmax of the channels' scores, as in the paper's reference code.
            weights = tf.nn.softmax(tf.reshape(probs, (-1, keep)), axis=1)
            if keep == channels:
                full = weights
            else:
                full = tf.reduce_sum(tf.one_hot(top, channels) * weights[..., None], axis=1)
            raw = combine(acts, full)
            return raw, upsample_tf(raw, input_shape), top

        return step

    return compile_step(
        model,
        ("scorecam", layer, input_shape, keep),
        build,
        [spec(input_shape), spec((), tf.int32)],
    )


def scorecam(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """Score-CAM: weight each channel by the target probability of the input it masks.

    Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu (2020). Each channel's map is
    upsampled to the input, scaled to [0, 1] and multiplied with the input; the softmax
    probability of the target on that masked input is the channel's score, and the
    scores' softmax over channels weights the activations. Gradient-free, so it needs
    no differentiable path.

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C), volumes (N, D, H, W, C) or sequences (N, T, F).
        targets: One class per input (or one for all); None: the predicted class.
        **options: :class:`~pipeline.attribution.options.ScoreCamOptions`
            (``max_channels``: above this many channels, only this many per input, those
            whose activations vary the most over positions, as in tf-keras-vis; None
            uses all), ``layer`` (as :func:`gradcam`) and
            ``batch_size`` (masked inputs per compiled step; inputs per step = this
            divided by the number of channels used, at least 1).

    Returns:
        :class:`Attribution` with raw and upsampled maps and the layer used.
    """
    return _score_cam("scorecam", model, x, targets, options)[0]


def _score_cam(method: str, model: keras.Model, x, targets, options: dict):
    """Score-CAM over the ``max_channels`` most varying channels; and their indices."""
    opts, common = resolve(method, options)
    targets, layer, x = _prepare(model, x, targets, common["layer"])
    channels = int(layer_info(model, layer).output_shape[-1])
    keep = channels if opts.max_channels is None else min(int(opts.max_channels), channels)
    fn = _scorecam_step(model, layer, x.shape[1:], keep)
    rows = forward_rows(model, x.shape[1:], common["batch_size"])
    raw, maps, top = run_batched(fn, [x, targets], max(1, rows // keep))
    return Attribution(maps, raw=raw, layer=layer, note=_note(model, layer, x)), top


def faster_scorecam(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """Faster-ScoreCAM: Score-CAM over the channels whose activations vary the most.

    Score-CAM (Wang et al. 2020) as :func:`scorecam` computes it, restricted to the
    ``max_channels`` channels of highest spatial variance per input, as tf-keras-vis's
    Faster-ScoreCAM does (a channel that is the same everywhere cannot say where).
    Gradient-free, so it works on models without gradients, and on sequences over a
    temporal layer.

    Args:
        model: A classifier.
        x: Inputs (N, H, W, C), volumes (N, D, H, W, C) or sequences (N, T, F).
        targets: One class per input (or one for all); None: the predicted class.
        **options: :class:`~pipeline.attribution.options.FasterScoreCamOptions`
            (``max_channels``, default 10: :func:`scorecam` with the same value gives
            the same maps, only the defaults differ), ``layer`` (as :func:`gradcam`)
            and ``batch_size`` (masked inputs per compiled step).

    Returns:
        :class:`Attribution` with raw and upsampled maps, the layer used and the extra
        ``channels`` (N, channels used): each input's chosen channels, highest variance
        first.
    """
    result, top = _score_cam("faster_scorecam", model, x, targets, options)
    result.extras["channels"] = top
    return result
