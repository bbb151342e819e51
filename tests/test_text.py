"""Text models (issue 17): attribution at the embedding output, summed over the
embedding axis; Integrated Gradients complete over the tokens; maximization refused;
token ids, per-token attributions and a vocabulary stored for the report, which shows
coloured tokens (escaped); a synthetic data set of a known rule and a zoo text model."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.attribution import integrated_gradients, saliency
from pipeline.attribution.text import (
    embed,
    embedding_layer,
    per_token,
    split_at_embedding,
    token_attribution,
)
from pipeline.errors import KerascopeError
from pipeline.maximization.objectives import Objective
from pipeline.maximization.optimize import maximize
from pipeline.maximization.settings import Settings
from pipeline.render.report import Section, build_html
from pipeline.render.tokens import token_row

RNG = np.random.default_rng(0)


def _sentiment(mask_zero=False):
    """Tokens (12,) -> Embedding(30, 8) -> Conv1D -> pooling -> 2 logits."""
    keras.utils.set_random_seed(7)
    ids = keras.Input((12,), dtype="int32", name="tokens")
    vectors = keras.layers.Embedding(30, 8, mask_zero=mask_zero, name="emb")(ids)
    h = keras.layers.Conv1D(6, 3, activation="tanh", name="conv")(vectors)
    h = keras.layers.GlobalAveragePooling1D(name="gap")(h)
    return keras.Model(ids, keras.layers.Dense(2, name="logits")(h))


def test_integrated_gradients_over_tokens_is_complete():
    model = _sentiment()
    ids = RNG.integers(1, 30, (4, 12))
    assert embedding_layer(model) == "emb"
    embedding, downstream = split_at_embedding(model)
    x = embed(embedding, ids)
    np.testing.assert_allclose(downstream(x), model(ids), atol=1e-6)  # same function
    targets = np.array([0, 1, 1, 0])
    ig = integrated_gradients(downstream, x, targets, steps=128)
    tokens = token_attribution(ig.extras["attributions"])
    assert tokens.shape == (4, 12)
    # Completeness: the token attributions sum to f(ids) - f(zero embeddings).
    logits = model(ids).numpy()[np.arange(4), targets]
    zero = downstream(np.zeros_like(x)).numpy()[np.arange(4), targets]
    np.testing.assert_allclose(tokens.sum(axis=1), logits - zero, atol=2e-3)
    # Gradient methods start at the vectors too: saliency is |d logit / d vector|.
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        picked = tf.gather(downstream(xt), targets, axis=1, batch_dims=1)
    grads = np.abs(tape.gradient(picked, xt).numpy())
    np.testing.assert_allclose(saliency(downstream, x, targets).maps, grads, atol=1e-6)


def test_a_saved_sequential_text_model_splits_at_its_embedding(tmp_path):
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((7,), dtype="int32"),
            keras.layers.Embedding(20, 4, name="emb"),
            keras.layers.Conv1D(3, 2, activation="tanh", name="conv"),
            keras.layers.GlobalMaxPooling1D(name="pool"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    model.save(tmp_path / "seq.keras")
    loaded = keras.saving.load_model(tmp_path / "seq.keras")
    ids = RNG.integers(0, 20, (3, 7))
    embedding, downstream = split_at_embedding(loaded)
    np.testing.assert_allclose(downstream(embed(embedding, ids)), model(ids), atol=1e-6)
    assert downstream.get_layer("conv") is loaded.get_layer("conv")  # shared, not copied


def test_text_models_refuse_what_they_cannot_do_in_one_line():
    with pytest.raises(KerascopeError, match="mask_zero=True"):
        split_at_embedding(_sentiment(mask_zero=True))
    images = keras.Sequential(
        [keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2)]
    )
    with pytest.raises(KerascopeError, match="no Embedding layer fed by an integer input"):
        split_at_embedding(images)
    with pytest.raises(KerascopeError, match="needs a single image input|no gradient"):
        maximize(_sentiment(), Objective("conv", "channel"), [0], (0, 1), Settings(steps=2))


@pytest.mark.slow
def test_text_model_through_dvc(tmp_path):
    """Token ids from an npz file (data.tokens=true) and a trained Embedding classifier
    of a known rule, through `dvc exp run`: maps at the embedding output, IG complete,
    maximization skipped in one line."""
    import html
    import json

    import h5py
    from conftest import SHRINK, copy_repo, run

    ids = RNG.integers(1, 30, (300, 12))
    y = ((ids == 5).sum(1) > (ids == 7).sum(1)).astype("int64")  # token 5 against token 7
    # A hostile vocabulary: the report must show these strings as text.
    vocab = ["<pad>", *(f"w{i}" for i in range(1, 30))]
    vocab[5], vocab[7] = "<script>alert(1)</script>", '"><img src=x onerror=alert(2)>'
    np.savez(tmp_path / "tokens.npz", x=ids, y=y, vocab=np.array(vocab))
    model = _sentiment()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(ids, y, epochs=20, verbose=0)
    model.save(tmp_path / "text.keras")
    repo = copy_repo(tmp_path / "repo", SHRINK)
    proc = run(
        [
            "dvc",
            "exp",
            "run",
            "-S",
            "data=npz",
            "-S",
            f"data.path={tmp_path / 'tokens.npz'}",
            "-S",
            "data.tokens=true",
            "-S",
            "model=pretrained",
            "-S",
            f"model.path={tmp_path / 'text.keras'}",
            "-S",
            "attribute.methods=[saliency,integrated_gradients,gradcam]",
            "-S",
            "attribute.integrated_gradients.steps=64",
            "-S",
            "attribute.sanity.max_layers=1",
        ],  # fmt: skip
        repo,
        timeout=600,
    )
    assert "note: token ids: attributing at the output of Embedding 'emb'" in proc.stdout
    assert "maximize: inputs of shape (12,) are not images (H, W, C); skipped" in proc.stdout
    with h5py.File(repo / "data" / "dataset.h5") as f:
        probe = f["probe/x"][()]
        assert [w.decode() for w in f["vocab"][()]] == vocab
    np.testing.assert_array_equal(probe, np.round(probe))  # token ids kept, not scaled
    with h5py.File(repo / "outputs" / "attributions.h5") as f:
        vectors, targets = f["inputs"][()], f["targets"][()]
        saliency_maps = f["methods/saliency/maps"][()]
        ig = f["methods/integrated_gradients/maps"][()]
        assert f["methods/gradcam/maps"].shape == (len(vectors), 12)
        np.testing.assert_array_equal(f["tokens"][()], probe)  # the ids, for the report
        per_token_ig = f["methods/integrated_gradients/tokens"][()]
        np.testing.assert_array_equal(f["methods/gradcam/tokens"], f["methods/gradcam/maps"])
    np.testing.assert_allclose(vectors, model.get_layer("emb")(probe.astype("int32")), atol=1e-6)
    assert saliency_maps.shape == ig.shape == (len(vectors), 12, 8)
    # Completeness over tokens: IG summed over the embedding axis adds up to
    # logit(x) - logit(zero embeddings), computed here without the pipeline.
    dense = model.get_layer("logits")
    features = keras.Model(model.get_layer("emb").output, dense.input)
    logits = lambda v: (features(v) @ dense.kernel + dense.bias).numpy()  # noqa: E731
    rows = np.arange(len(targets))
    change = logits(vectors)[rows, targets] - logits(np.zeros_like(vectors))[rows, targets]
    np.testing.assert_allclose(token_attribution(ig).sum(axis=1), change, atol=2e-2)
    np.testing.assert_allclose(per_token_ig.sum(axis=1), change, atol=2e-2)
    metrics = json.loads((repo / "outputs" / "metrics" / "attribute.json").read_text())
    assert metrics["integrated_gradients"]["completeness_error"] < 2e-2
    # The report: a row of coloured tokens per input and method; hostile tokens escaped.
    page = (repo / "outputs" / "report" / "index.html").read_text()
    shown = min(4, len(probe))  # SHRINK's render.max_attribution_inputs
    for method in ("saliency", "integrated_gradients", "gradcam"):
        assert page.count(f'<span class="tok-label">{method}</span>') == shown
    for token in np.unique(probe[:shown]).astype(int):  # every shown token, escaped
        assert f">{html.escape(vocab[token])}</span>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;</span>" in page  # token 5 decides the label
    assert "<script>alert" not in page and "<img src=x" not in page


def test_integrated_gradients_per_token_of_a_bag_of_embeddings_has_a_closed_form():
    """Mean-pooled embeddings and a linear head: logit_c(ids) = mean_t E[id_t] . W_c + b_c
    is linear in the vectors, so IG from the zero baseline gives token t exactly
    E[id_t] . W_c / L, whatever the number of steps."""
    vocab, dim, length = 6, 3, 5
    table = np.arange(vocab * dim, dtype="float32").reshape(vocab, dim) / 10 - 0.8
    kernel = np.array([[1.0, -2.0], [0.5, 1.0], [-1.0, 0.25]], "float32")
    ids_in = keras.Input((length,), dtype="int32")
    vectors = keras.layers.Embedding(vocab, dim, name="emb")(ids_in)
    pooled = keras.layers.GlobalAveragePooling1D()(vectors)
    model = keras.Model(ids_in, keras.layers.Dense(2, name="head")(pooled))
    model.get_layer("emb").set_weights([table])
    model.get_layer("head").set_weights([kernel, np.array([0.3, -0.1], "float32")])
    ids = np.array([[1, 2, 3, 0, 0], [5, 5, 4, 1, 0]])
    targets = np.array([0, 1])
    embedding, downstream = split_at_embedding(model)
    ig = integrated_gradients(downstream, embed(embedding, ids), targets, steps=4)
    tokens = per_token(ig.maps, length)
    expected = (table[ids] @ kernel)[np.arange(2), :, targets] / length
    np.testing.assert_allclose(tokens, expected, atol=1e-5)
    np.testing.assert_array_equal(per_token(expected, length), expected)  # CAMs: kept
    with pytest.raises(KerascopeError, match="not per token"):
        per_token(np.zeros((2, 4, 3)), length)


def test_token_rows_hide_padding_colour_by_sign_and_escape_in_the_report():
    vocab = ["<pad>", "good", "<script>alert(1)</script>", "film"]
    row = token_row(np.array([2, 1, 3, 9, 0, 0]), np.array([-0.5, 1.0, 0.0, 0.25, 7.0, 7.0]), vocab)
    # Padding (id 0) is hidden, even with a large value; an id beyond the vocabulary shows as #id.
    assert [t for t, _, _ in row] == ["<script>alert(1)</script>", "good", "film", "#9"]
    # Own scale per row (the largest shown magnitude, 1.0); red up, blue down, 0.85 at most.
    assert row[0][2] == "rgba(33,102,172,0.425)"
    assert row[1][2] == "rgba(178,24,43,0.850)"
    assert row[3][2] == "rgba(178,24,43,0.212)"
    assert [t for t, _, _ in token_row(np.array([3, 4]), np.ones(2), None)] == ["#3", "#4"]
    sec = Section("Attributions", "attributions")
    sec.tokens([("saliency <b>", row)])
    page = build_html("t", "s", [sec])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "saliency &lt;b&gt;" in page
    assert 'style="background:rgba(178,24,43,0.850)" title="good: +1">good</span>' in page


def test_synthetic_text_follows_its_rule_and_text_cnn_takes_its_vocabulary():
    from pipeline.data import PAD_ID, TEXT_NEGATIVE, TEXT_POSITIVE, DataOptions, load_source

    raw = load_source("synthetic_text", {"size": 300, "length": 10})
    assert raw.x.shape == (300, 10) and raw.class_names == ["negative", "positive"]
    words = np.array(raw.vocab)[raw.x.astype(int)]
    positive, negative = np.isin(words, TEXT_POSITIVE), np.isin(words, TEXT_NEGATIVE)
    np.testing.assert_array_equal(positive.sum(1) + negative.sum(1), 1)  # one decisive word
    np.testing.assert_array_equal(raw.y, positive.sum(1))
    assert raw.vocab[PAD_ID] == "<pad>" and (words[:, -1] == "<pad>").mean() > 0.3
    assert 0.35 < raw.y.mean() < 0.65
    with pytest.raises(KerascopeError, match="'data.length' = 4 is too short"):
        DataOptions(name="synthetic_text", length=4).check()
    with pytest.raises(KerascopeError, match="data source 'synthetic_txt'.*synthetic_text"):
        DataOptions(name="synthetic_txt").check()


@pytest.mark.slow
def test_synthetic_text_and_text_cnn_through_dvc(tmp_path):
    """`dvc exp run -S data=synthetic_text -S model=text_cnn`, as the README says: the
    trained model's attributions single out the one sentiment word that decides each
    review's label (the data's rule, known independently of the model), and the report
    colours it most strongly, in red, for Integrated Gradients."""
    import re

    import h5py
    from conftest import SHRINK, copy_repo, run

    from pipeline.data import TEXT_NEGATIVE, TEXT_POSITIVE

    repo = copy_repo(tmp_path / "repo", SHRINK)
    run(
        [
            "dvc",
            "exp",
            "run",
            "-S",
            "data=synthetic_text",
            "-S",
            "data.size=1000",
            "-S",
            "model=text_cnn",
            "-S",
            "train.epochs=5",
            "-S",
            "attribute.methods=[saliency,integrated_gradients,gradcam]",
            "-S",
            "attribute.integrated_gradients.steps=32",
        ],  # fmt: skip
        repo,
        timeout=600,
    )
    with h5py.File(repo / "data" / "dataset.h5") as f:
        vocab = [w.decode() for w in f["vocab"][()]]
    with h5py.File(repo / "outputs" / "attributions.h5") as f:
        ids, labels = f["tokens"][()], f["labels"][()]
        targets = f["targets"][()]
        ig = f["methods/integrated_gradients/tokens"][()]
        assert f["methods/saliency/tokens"].shape == f["methods/gradcam/tokens"].shape == ids.shape
    words = np.array(vocab)[ids]
    decisive = np.isin(words, TEXT_POSITIVE + TEXT_NEGATIVE)
    np.testing.assert_array_equal(decisive.sum(axis=1), 1)
    np.testing.assert_array_equal(np.isin(words, TEXT_POSITIVE).sum(axis=1), labels)  # the rule
    np.testing.assert_array_equal(targets, labels)  # the model learned it on the probe set
    # The decisive word gets the largest attribution, and it speaks for the target.
    np.testing.assert_array_equal(ig.argmax(axis=1), decisive.argmax(axis=1))
    page = (repo / "outputs" / "report" / "index.html").read_text()
    for method in ("saliency", "integrated_gradients", "gradcam"):
        assert page.count(f'<span class="tok-label">{method}</span>') == len(ids)
    rows = re.findall(r'tok-label">integrated_gradients</span>(.*?)</div>', page)
    for row, word in zip(rows, words[decisive], strict=True):
        assert f'style="background:rgba(178,24,43,0.850)" title="{word}: ' in row
    assert "&lt;pad&gt;" not in page  # padding hidden


def test_text_cnn_takes_its_vocabulary_from_the_data_or_refuses_in_one_line():
    from pipeline.artifacts.dataset import DatasetInfo
    from pipeline.models import build_model
    from pipeline.stages.train import _vocab_size

    def info(lo, hi, vocab=None):
        return DatasetInfo("d", ["a", "b"], (16,), (lo, hi), "sha256:x", vocab=vocab)

    assert _vocab_size(0, info(0, 37)) == 38
    assert _vocab_size(0, info(0, 37, ["w"] * 50)) == 50  # ids the probe set never shows
    assert _vocab_size(100, info(0, 37)) == 100
    with pytest.raises(KerascopeError, match="model.vocab_size=20 but the data hold token id 37"):
        _vocab_size(20, info(0, 37))
    with pytest.raises(KerascopeError, match="are not token ids.*data=synthetic_text"):
        _vocab_size(0, info(0, 0.5))
    with pytest.raises(KerascopeError, match=r"cannot be built.*token ids of shape \(T,\)"):
        build_model("text_cnn", (8, 8, 1), 2, vocab_size=10)
    model = build_model("text_cnn", (16,), 2, vocab_size=40)
    assert embedding_layer(model) == "embedding"
    out = model(RNG.integers(0, 40, (3, 16)))
    np.testing.assert_allclose(np.sum(out, axis=1), 1.0, atol=1e-5)
