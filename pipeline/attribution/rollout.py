"""Attention rollout as an attribution method: one map per input from the attention alone.

Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers". The attention
scores of every ``keras.layers.MultiHeadAttention`` layer are read in the same pass
(:class:`pipeline.graph.LayerForward` calls each with ``return_attention_scores=True``
and passes only its output on, so the model need not return them), rolled out inside one
compiled step per batch, and the class token's row over the patches becomes a map over
the patch grid, upsampled to the image. :func:`pipeline.attribution.transformers.
attention_rollout` is the same computation in numpy, for one set of matrices.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pipeline.attribution.batching import compile_step, forward_rows, run_batched, spec
from pipeline.attribution.cam import upsample_tf
from pipeline.attribution.options import resolve
from pipeline.attribution.result import Attribution
from pipeline.attribution.scoring import check_targets
from pipeline.errors import KerascopeError
from pipeline.graph import (
    SCORES,
    LayerForward,
    TokenGrid,
    attention_layers,
    layer_edges,
    list_layers,
    token_grids,
)


def rollout_tf(attentions, head_fusion: str = "mean", discard_ratio: float = 0.0):
    """Attention rollout of a batch in TensorFlow: (b, heads, T, T) per layer -> (b, T, T).

    Per layer: heads fused (mean, max or min), the lowest ``discard_ratio`` of each
    row's weights zeroed, ``0.5 (A + I)`` for the residual path, rows renormalised;
    then ``R = A_L ... A_1``.
    """
    fuse = {"mean": tf.reduce_mean, "max": tf.reduce_max, "min": tf.reduce_min}[head_fusion]
    result = None
    for attention in attentions:
        fused = fuse(tf.cast(attention, tf.float32), axis=1)  # (b, T, T)
        tokens = fused.shape[-1]
        drop = int(discard_ratio * tokens)
        if drop:
            low = tf.math.top_k(-fused, drop).indices  # each row's `drop` smallest
            mask = tf.reduce_max(tf.one_hot(low, tokens, dtype=fused.dtype), axis=-2)
            fused = fused * (1.0 - mask)
        mixed = 0.5 * (fused + tf.eye(tokens, dtype=fused.dtype))
        mixed = mixed / tf.reduce_sum(mixed, axis=-1, keepdims=True)
        result = mixed if result is None else tf.matmul(mixed, result)
    return result


def check_attention(model: keras.Model) -> list[str]:
    """The model's MultiHeadAttention layers, first first.

    Raises:
        KerascopeError: It has none (one line naming the method).
    """
    layers = attention_layers(model)
    if not layers:
        raise KerascopeError(
            f"attention_rollout needs keras.layers.MultiHeadAttention layers, and model "
            f"'{model.name}' has none; remove attention_rollout from attribute.methods"
        )
    return layers


def rollout_grid(model: keras.Model, layers: list[str]) -> TokenGrid:
    """The patch grid of the tokens the first attention layer reads.

    Raises:
        KerascopeError: Its tokens do not lie on a patch grid of the image.
    """
    grids = token_grids(model)
    infos = list_layers(model)
    index = {info.path: k for k, info in enumerate(infos)}
    first = index[layers[0]]
    feeding = [infos[a].path for a, b in layer_edges(model, infos) if b == first]
    for path in feeding:
        if path in grids:
            return grids[path]
    raise KerascopeError(
        f"attention_rollout: the tokens of '{layers[0]}' do not lie on a patch grid of the "
        "image (a ViT's patch tokens, optionally after a class token); it maps image models"
    )


def _step(model, layers, input_shape, head_fusion, discard_ratio, grid: TokenGrid):
    def build():
        forward = LayerForward(model, [], attention=layers)

        def step(batch):
            taps = forward(batch)[1]
            joint = rollout_tf([taps[p + SCORES] for p in layers], head_fusion, discard_ratio)
            # With a class token, its row (what the classifier reads) over the patches;
            # without one, the mean over output tokens (a pooled head reads them all).
            row = joint[:, 0, 1:] if grid.class_token else tf.reduce_mean(joint, axis=1)
            raw = tf.reshape(row, (-1, grid.height, grid.width))
            return raw, upsample_tf(raw, input_shape)

        return step

    return compile_step(
        model,
        ("attention_rollout", tuple(layers), input_shape, head_fusion, discard_ratio),
        build,
        [spec(input_shape)],
    )


def attention_rollout(model: keras.Model, x: np.ndarray, targets, **options) -> Attribution:
    """Attention rollout (Abnar & Zuidema 2020) over every MultiHeadAttention layer.

    Abnar & Zuidema (2020), "Quantifying Attention Flow in Transformers": each layer's
    attention, heads fused and mixed with the identity for the residual connection, is
    multiplied from the first layer to the last; the class token's row says how much
    each patch flows into what the classifier reads. The map does not depend on the
    target class (attention is computed before the head), so every class of an input
    gets the same map.

    Args:
        model: A transformer classifier over images with ``keras.layers.MultiHeadAttention``
            layers on patch tokens.
        x: Images (N, H, W, C).
        targets: Checked like any method's, but unused (the map is class-agnostic).
        **options: :class:`~pipeline.attribution.options.AttentionRolloutOptions`
            (``head_fusion``: mean, max or min; ``discard_ratio``: share of each row's
            lowest weights zeroed) and ``batch_size`` (inputs per compiled step).

    Returns:
        :class:`Attribution`: ``raw`` (N, h, w) over the patch grid, ``maps`` (N, H, W),
        ``layer`` the last attention layer, and a note on the class token.

    Raises:
        KerascopeError: The model has no MultiHeadAttention layer, or its tokens are
            not image patches.
    """
    opts, common = resolve("attention_rollout", options)
    layers = check_attention(model)
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise KerascopeError(
            f"attention_rollout maps images (N, H, W, C); the inputs have shape {x.shape[1:]}"
        )
    check_targets(model, targets, len(x), x)
    grid = rollout_grid(model, layers)
    fn = _step(model, layers, x.shape[1:], opts.head_fusion, float(opts.discard_ratio), grid)
    raw, maps = run_batched(fn, [x], forward_rows(model, x.shape[1:], common["batch_size"]))
    note = f"{grid.describe()}; rollout over {len(layers)} attention layers, class-agnostic"
    return Attribution(maps, raw=raw, layer=layers[-1], note=note)
