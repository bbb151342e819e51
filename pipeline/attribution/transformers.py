"""Vision transformers: patch tokens as a grid, and attention rollout.

A ViT's layers output token sequences (N, tokens, C), not maps (N, h, w, C): a CAM on
them needs the class token dropped and the patch tokens reshaped to their grid
(pytorch-grad-cam #76, #511). Attention rollout (Abnar & Zuidema 2020, "Quantifying
Attention Flow in Transformers") explains a transformer by its attention alone: each
layer's head-fused attention, mixed with the identity for the residual connection and
renormalised, multiplied from the first layer to the last. Pure functions of arrays,
except :func:`attention_scores`, which reads the scores a model's attention layers return.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.attribution.options import HEAD_FUSIONS
from pipeline.errors import KerascopeError, check_choice


def tokens_to_grid(tokens: np.ndarray, class_token: bool = True) -> np.ndarray:
    """Patch tokens (N, [1 +] P, C) as a grid (N, h, w, C), the class token dropped.

    Args:
        tokens: A transformer layer's output; patches in row-major order.
        class_token: The first token is a class token (dropped) rather than a patch.

    Raises:
        KerascopeError: The patch count is not a square (say which).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 3:
        raise KerascopeError(f"token sequences are (N, tokens, C), got shape {tokens.shape}")
    patches = tokens[:, 1:] if class_token else tokens
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise KerascopeError(
            f"{patches.shape[1]} patch tokens"
            + (" (class token dropped)" if class_token else "")
            + " do not form a square grid; set the class token setting to match the model"
        )
    return patches.reshape(len(tokens), side, side, tokens.shape[-1])


def attention_rollout(
    attentions: Sequence[np.ndarray], head_fusion: str = "mean", discard_ratio: float = 0.0
) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020): joint attention across the layers.

    Per layer, the heads' attention (N, heads, T, T) is fused (mean, max or min), the
    smallest ``discard_ratio`` of each row's weights are zeroed (Gildenblat's variant, 0
    keeps all), the identity is added for the residual path, ``0.5 (A + I)``, rows are
    renormalised, and the layers are multiplied: ``R = A_L ... A_2 A_1``.

    Args:
        attentions: One array (N, heads, T, T) per layer, first layer first (rows are
            queries, columns keys; rows sum to 1).
        head_fusion: ``mean``, ``max`` or ``min`` over heads.
        discard_ratio: Share of each row's lowest weights set to 0, in [0, 1).

    Returns:
        (N, T, T): row ``i`` is how much each input token flows into output token ``i``.
    """
    check_choice("attention rollout head_fusion", head_fusion, HEAD_FUSIONS)
    if not 0.0 <= discard_ratio < 1.0:
        raise KerascopeError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
    if not attentions:
        raise KerascopeError("attention rollout needs the attention of at least one layer")
    result = None
    for attention in attentions:
        attention = np.asarray(attention, np.float64)
        if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
            raise KerascopeError(
                f"attention scores are (N, heads, T, T), got shape {attention.shape}"
            )
        fused = getattr(attention, head_fusion)(axis=1)  # (N, T, T)
        if discard_ratio:
            drop = int(discard_ratio * fused.shape[-1])
            low = np.argsort(fused, axis=-1)[..., :drop]
            np.put_along_axis(fused, low, 0.0, axis=-1)
        eye = np.eye(fused.shape[-1])[None]
        mixed = 0.5 * (fused + eye)
        mixed = mixed / mixed.sum(axis=-1, keepdims=True)
        result = mixed if result is None else mixed @ result
    return result


def rollout_map(rollout: np.ndarray, class_token: bool = True) -> np.ndarray:
    """The rollout as one map over the patch grid (N, h, w).

    With a class token, its row over the patch tokens (what the classifier reads);
    without one, the mean over all output tokens (a pooled head).
    """
    rollout = np.asarray(rollout)
    row = rollout[:, 0, 1:] if class_token else rollout.mean(axis=1)
    return tokens_to_grid(row[..., None], class_token=False)[..., 0]


def attention_scores(model, x: np.ndarray, layers: Sequence[str]) -> list[np.ndarray]:
    """The attention scores (N, heads, T, T) of ``layers``, first layer first.

    Each layer must be a ``keras.layers.MultiHeadAttention``; it is called with
    ``return_attention_scores=True`` whether or not the model asks for them (see
    :class:`pipeline.graph.LayerForward`).

    Raises:
        KerascopeError: A layer that returns no attention scores.
    """
    from pipeline.graph import SCORES, LayerForward

    taps = LayerForward(model, attention=list(layers))(np.asarray(x, np.float32))[1]
    return [np.asarray(taps[layer + SCORES]) for layer in layers]
