"""Vision transformers (issue 17): patch tokens as a grid, and attention rollout
(Abnar & Zuidema 2020) against a hand computation and on a tiny Keras ViT."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.attribution.transformers import (
    attention_rollout,
    attention_scores,
    rollout_map,
    tokens_to_grid,
)
from pipeline.errors import KerascopeError

RNG = np.random.default_rng(0)


def _rows(shape):
    a = RNG.random(shape)
    return a / a.sum(axis=-1, keepdims=True)


def test_rollout_matches_a_hand_computation():
    a1, a2 = _rows((2, 3, 5, 5)), _rows((2, 3, 5, 5))
    eye = np.eye(5)
    hand = []
    for n in range(2):
        m1 = 0.5 * (a1[n].mean(0) + eye)
        m2 = 0.5 * (a2[n].mean(0) + eye)
        hand.append(m2 @ m1)  # rows already sum to 1: 0.5 (A + I) keeps them so
    rollout = attention_rollout([a1, a2])
    np.testing.assert_allclose(rollout, np.stack(hand), atol=1e-12)
    np.testing.assert_allclose(rollout.sum(-1), 1.0)
    assert rollout_map(rollout).shape == (2, 2, 2)  # class token + 4 patches


def test_tokens_to_grid_drops_the_class_token_or_says_why_not():
    tokens = np.arange(2 * 10 * 3).reshape(2, 10, 3)
    grid = tokens_to_grid(tokens)
    assert grid.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(grid[:, 0, 1], tokens[:, 2])  # row-major patches
    with pytest.raises(KerascopeError, match="10 patch tokens do not form a square grid"):
        tokens_to_grid(tokens, class_token=False)
    with pytest.raises(KerascopeError, match="head_fusion"):
        attention_rollout([_rows((1, 1, 4, 4))], head_fusion="sum")


def test_attention_of_a_tiny_vit():
    """Conv patches (4x4 of an 8x8 image) -> one attention block -> pooled logits."""
    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 1))
    patches = keras.layers.Conv2D(8, 2, strides=2, name="patches")(images)
    tokens = keras.layers.Reshape((16, 8), name="tokens")(patches)
    attention = keras.layers.MultiHeadAttention(2, 4, name="mha")
    mixed, _ = attention(tokens, tokens, return_attention_scores=True)
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(tokens + mixed)
    model = keras.Model(images, keras.layers.Dense(3, name="logits")(pooled))
    x = RNG.random((2, 8, 8, 1)).astype("float32")
    (scores,) = attention_scores(model, x, ["mha"])
    assert scores.shape == (2, 2, 16, 16)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
    heat = rollout_map(attention_rollout([scores]), class_token=False)
    assert heat.shape == (2, 4, 4)
    with pytest.raises(KerascopeError, match="returns no attention scores"):
        attention_scores(model, x, ["patches"])
    # Stopping early waits for the attention scores as well as the layer taps.
    from pipeline.graph import SCORES, LayerForward

    outputs, taps = LayerForward(model, ["patches"], attention=["mha"], stop_early=True)(x)
    assert outputs is None and set(taps) == {"patches", "mha" + SCORES}
    np.testing.assert_allclose(taps["mha" + SCORES], scores, atol=1e-6)
