"""Vision transformers through every stage (issue 17): the zoo ViT, CAMs on its patch
tokens and attention rollout (Abnar & Zuidema 2020), each checked against a computation
written here, and `dvc exp run -S model=vit` from data to report."""

from __future__ import annotations

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.attribution import method
from pipeline.errors import KerascopeError
from pipeline.graph import default_cam_layer, token_grids
from pipeline.models import build_model

TINY = {"patch_size": 2, "dim": 8, "depth": 2, "heads": 2, "mlp_units": 16}


def _tiny_vit():
    """An 8x8x1 ViT: a 4x4 patch grid plus the class token (17 tokens), 4 classes."""
    keras.utils.set_random_seed(3)
    model = build_model("vit", (8, 8, 1), 4, **TINY)
    # Random position embeddings and class token, so the tokens differ from the start.
    rng = np.random.default_rng(4)
    for name in ("class_token", "position"):
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(0, 0.5, w.shape) for w in layer.get_weights()])
    return model


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _attention_by_hand(model, x, block):
    """softmax(Q K^T / sqrt(d)) of one block from its weights, in numpy (N, heads, T, T)."""
    tokens = keras.Model(model.inputs, model.get_layer(f"block{block}_norm1").output)(x)
    tokens = np.asarray(tokens, np.float64)
    mha = model.get_layer(f"block{block}_attention")
    wq, bq = (np.asarray(v, np.float64) for v in mha._query_dense.get_weights())
    wk, bk = (np.asarray(v, np.float64) for v in mha._key_dense.get_weights())
    q = np.einsum("ntd,dhk->nhtk", tokens, wq) + bq[None, :, None]
    k = np.einsum("ntd,dhk->nhtk", tokens, wk) + bk[None, :, None]
    return _softmax(q @ k.transpose(0, 1, 3, 2) / np.sqrt(wq.shape[-1]))


def test_attention_rollout_through_the_stage_equals_a_hand_computation(tmp_path):
    from conftest import write_tiny_project

    from pipeline.stages.attribute import _main

    model = _tiny_vit()
    params, x, _ = write_tiny_project(tmp_path, n=6, model=model)
    params["attribute"] = {
        "methods": ["attention_rollout"],
        "attention_rollout": {"head_fusion": "max", "discard_ratio": 0.25},
        "faithfulness": {"steps": 4},
        "sanity": {"enabled": False},
    }
    _main(params)
    with h5py.File(params["paths"]["attributions"]) as f:
        raw = f["methods/attention_rollout/raw"][()]
        maps = f["methods/attention_rollout/maps"][()]
        note = f["methods/attention_rollout"].attrs["note"]
        assert "attention_rollout" in f["faithfulness"]
    # Abnar & Zuidema's rollout, written out: per layer the heads' max, the lowest 25%
    # of each row zeroed (4 of 17), 0.5 (A + I) renormalised, then A2 @ A1; the class
    # token's row over the 16 patches, row-major on the 4x4 grid.
    joint = None
    for block in (1, 2):
        fused = _attention_by_hand(model, x, block).max(axis=1)
        for n in range(len(fused)):
            for row in range(17):
                fused[n, row, np.argsort(fused[n, row])[:4]] = 0.0
        mixed = 0.5 * (fused + np.eye(17))
        mixed /= mixed.sum(axis=-1, keepdims=True)
        joint = mixed if joint is None else mixed @ joint
    hand = joint[:, 0, 1:].reshape(len(x), 4, 4)
    np.testing.assert_allclose(raw, hand, rtol=1e-4, atol=1e-6)
    assert maps.shape == (6, 8, 8)
    assert "4x4 patch tokens, class token dropped" in note


def test_gradcam_on_patch_tokens_equals_a_hand_computation():
    model = _tiny_vit()
    x = np.random.default_rng(5).random((3, 8, 8, 1)).astype("float32")
    targets = np.array([0, 1, 3])
    # The default CAM layer of a ViT is the input of its last attention layer.
    assert default_cam_layer(model) == "block2_norm1"
    grids = token_grids(model)
    assert grids["block2_norm1"].class_token and "tokens" in grids and "patches" not in grids
    result = method("gradcam")(model, x, targets)
    # Grad-CAM (Selvaraju et al. 2017) by hand: the logit's gradient wrt the tokens,
    # the class token dropped, the 16 patch tokens on the 4x4 grid, channel weights
    # = mean gradient over the patches, ReLU of the weighted sum.
    tap = keras.Model(
        model.inputs,
        [model.get_layer(n).output for n in ("block2_norm1", "norm", "class_output")],
    )
    head = model.get_layer("predictions")
    with tf.GradientTape(persistent=True) as tape:
        acts, last, pooled = tap(tf.constant(x))
        logits = pooled @ head.kernel + head.bias
        score = tf.reduce_sum(tf.gather(logits, targets, batch_dims=1))
    grads = tape.gradient(score, acts).numpy()[:, 1:].reshape(3, 4, 4, 8)
    patches = acts.numpy()[:, 1:].reshape(3, 4, 4, 8)
    weights = grads.mean(axis=(1, 2))
    hand = np.maximum((patches * weights[:, None, None]).sum(-1), 0.0)
    np.testing.assert_allclose(result.raw, hand, rtol=1e-4, atol=1e-6)
    assert result.maps.shape == (3, 8, 8) and result.layer == "block2_norm1"
    assert result.note == "'block2_norm1' as 4x4 patch tokens, class token dropped"
    # Why not the last token layer: its patch tokens never reach the class score.
    assert not np.any(tape.gradient(score, last).numpy()[:, 1:])
    # A model without attention refuses rollout in one line naming the method.
    cnn = build_model("mnist_cnn", (28, 28, 1), 10)
    with pytest.raises(KerascopeError, match=r"^attention_rollout needs keras.layers.Multi"):
        method("attention_rollout")(cnn, np.zeros((1, 28, 28, 1), "float32"), [0])


def test_rollout_on_a_model_without_attention_is_one_line_and_writes_nothing(tmp_path):
    import os

    from conftest import write_tiny_project

    from pipeline.stages.attribute import _main

    params, _, _ = write_tiny_project(tmp_path, n=4)  # a small CNN
    params["attribute"] = {"methods": ["gradcam", "attention_rollout"]}
    with pytest.raises(KerascopeError) as info:
        _main(params)
    message = str(info.value)
    assert message.startswith("attention_rollout needs keras.layers.MultiHeadAttention")
    assert "\n" not in message and not os.path.exists(params["paths"]["attributions"])
    params["attribute"] = {
        "methods": ["attention_rollout"],
        "attention_rollout": {"head_fusion": "sum"},
    }
    with pytest.raises(
        KerascopeError, match=r"invalid attribute.attention_rollout.head_fusion 'sum'"
    ):
        _main(params)


@pytest.mark.slow
def test_vit_through_dvc(tmp_path):
    """`dvc exp run -S model=vit` on the shrunken config: every stage to the report."""
    from conftest import SHRINK, copy_repo, run

    repo = copy_repo(tmp_path / "repo", SHRINK)
    run(
        [
            "dvc",
            "exp",
            "run",
            "-S",
            "model=vit",
            "-S",
            "attribute.methods=[gradcam,scorecam,attention_rollout]",
            "-S",
            "attribute.sanity.max_layers=1",
            "-S",
            "maximize.steps=8",
        ],  # fmt: skip
        repo,
        timeout=600,
    )
    with h5py.File(repo / "outputs" / "attributions.h5") as f:
        n = len(f["inputs"])
        assert f["methods/attention_rollout/maps"].shape == (n, 28, 28)
        assert f["methods/attention_rollout/raw"].shape == (n, 7, 7)
        assert f["methods/gradcam/raw"].shape == (n, 7, 7)
        assert f["methods/gradcam"].attrs["layer"] == "block2_norm1"
        assert "class token dropped" in f["methods/gradcam"].attrs["note"]
        assert "attention_rollout" in f["faithfulness"]
    with h5py.File(repo / "outputs" / "activations.h5") as f:
        tokens = f["activations/block1_attention"]
        assert tokens.shape[1:] == (50, 32)
        assert list(tokens.attrs["token_grid"]) == [7, 7] and tokens.attrs["class_token"]
        assert not f["activations/tokens"].attrs["class_token"]
        assert "token_grid" not in f["activations/patches"].attrs
    report = (repo / "outputs" / "report" / "index.html").read_text()
    assert "class token dropped" in report and "Tokens on their 7x7 patch grid" in report
