"""TCAV on models with hand-set weights, where every directional derivative is known."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.concepts import (
    CAV,
    concept_activation_vector,
    layer_gradients,
    tcav,
    tcav_scores,
)
from pipeline.errors import KerascopeError

DIM = 8


def _linear_logits_model(weights, rng):
    """feat = x (identity), logits = feat @ W + b, then a softmax TCAV must see through."""
    model = keras.Sequential(
        [
            keras.Input((DIM,)),
            keras.layers.Dense(DIM, name="feat"),
            keras.layers.Dense(weights.shape[1], activation="softmax", name="out"),
        ]
    )
    model.get_layer("feat").set_weights([np.eye(DIM, dtype="float32"), np.zeros(DIM, "float32")])
    model.get_layer("out").set_weights(
        [weights.astype("float32"), rng.standard_normal(weights.shape[1]).astype("float32")]
    )
    return model


def _concept_model(direction, rng):
    """logit_0 = sum_j a_j relu(v_j . feat) with a_j > 0 and every v_j . u > 0.

    Along ``u`` the derivative is positive for every input with an active unit; along a
    random direction its sign depends on which units are on, so it varies by input.
    """
    hidden = rng.standard_normal((32, DIM)) + 1.5 * direction
    model = keras.Sequential(
        [
            keras.Input((DIM,)),
            keras.layers.Dense(DIM, name="feat"),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    model.get_layer("feat").set_weights([np.eye(DIM, dtype="float32"), np.zeros(DIM, "float32")])
    model.get_layer("hidden").set_weights([hidden.T.astype("float32"), np.zeros(32, "float32")])
    out = np.zeros((32, 2), "float32")
    out[:, 0] = rng.uniform(0.5, 1.5, 32)
    model.get_layer("out").set_weights([out, np.zeros(2, "float32")])
    return model


def _linear_case(seed, n):
    """Weights of 3 linear logits, their model, n inputs and targets cycling the classes."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((DIM, 3))
    model = _linear_logits_model(weights, rng)
    return weights, model, rng.standard_normal((n, DIM)).astype("float32"), np.arange(n) % 3


def test_gradients_of_a_linear_logit_are_its_weights():
    weights, model, x, targets = _linear_case(0, 20)
    gradients = layer_gradients(model, ["feat"], x, targets, batch_size=7)["feat"]
    np.testing.assert_allclose(gradients, weights[:, targets].T, rtol=1e-5, atol=1e-6)


def test_tcav_score_is_one_along_the_logit_weights_and_zero_against():
    weights, model, x, targets = _linear_case(1, 30)
    toward = weights[:, 1] / np.linalg.norm(weights[:, 1])
    scores = tcav_scores(model, "feat", x, targets, CAV(toward, 1.0), batch_size=8)
    assert scores[1] == 1.0
    assert tcav_scores(model, "feat", x, targets, -toward)[1] == 0.0
    # Another class scores by its own weights' projection on the CAV, the same sign for all.
    expected = {c: float(weights[:, c] @ toward > 0) for c in range(3)}
    assert scores == expected
    with pytest.raises(KerascopeError, match="features"):
        tcav_scores(model, "feat", x, targets, np.ones(3))


def test_separable_concept_gives_an_accurate_cav_along_its_direction():
    rng = np.random.default_rng(2)
    direction = rng.standard_normal(DIM)
    direction /= np.linalg.norm(direction)
    concept = rng.standard_normal((40, DIM)) + 8.0 * direction
    random = rng.standard_normal((40, DIM))
    cav = concept_activation_vector(concept, random, seed=0)
    assert cav.accuracy == 1.0
    assert np.linalg.norm(cav.vector) == pytest.approx(1.0, rel=1e-5)
    assert cav.vector @ direction > 0.9  # points towards the concept
    chance = concept_activation_vector(rng.standard_normal((40, DIM)), random, seed=0)
    assert chance.accuracy < 0.85
    with pytest.raises(KerascopeError, match="2 or more"):
        concept_activation_vector(concept[:1], random)


def test_real_concept_is_significant_and_a_random_one_is_not():
    rng = np.random.default_rng(3)
    direction = rng.standard_normal(DIM)
    direction /= np.linalg.norm(direction)
    model = _concept_model(direction, rng)
    # The concept and random set 0 (the null's random concept) are larger than the
    # counter-example sets: every CAV of one side shares that set's sampling noise. Over
    # 20 seeds a random concept came out significant 5 times with equal sets of 30, once
    # (the nominal 5%) with these sizes.
    sizes = [150] + [30] * 10
    random_sets = [rng.standard_normal((n, DIM)).astype("float32") for n in sizes]
    concept_x = (rng.standard_normal((150, DIM)) + 3.0 * direction).astype("float32")
    class_x = rng.standard_normal((120, DIM)).astype("float32")
    real = tcav(model, ["feat", "hidden"], concept_x, random_sets, class_x, 0, runs=10)
    assert [(r.layer, r.target) for r in real] == [("feat", 0), ("hidden", 0)]
    feat = real[0]
    assert feat.scores.shape == feat.random_scores.shape == (10,)
    assert feat.score > 0.95 and feat.accuracies.min() > 0.8
    assert 0.2 < feat.random_scores.mean() < 0.8  # random CAVs: mixed signs per input
    assert feat.p_value < 0.05 and feat.significant

    fake_x = rng.standard_normal((150, DIM)).astype("float32")
    fake = tcav(model, "feat", fake_x, random_sets, class_x, 0, runs=10)[0]
    assert fake.p_value > 0.05 and not fake.significant

    # Bonferroni over the 2 tests (2 layers x 1 class): alpha between p and 2p fails.
    alpha = 1.5 * real[1].p_value
    corrected = tcav(
        model,
        ["feat", "hidden"],
        concept_x,
        random_sets,
        class_x,
        0,
        10,
        alpha=alpha,
        bonferroni=True,
    )
    assert corrected[1].p_value == pytest.approx(real[1].p_value)
    assert corrected[0].significant  # feat: p below alpha / 2
    assert not corrected[1].significant


def test_tcav_needs_enough_random_sets():
    rng = np.random.default_rng(4)
    model = _linear_logits_model(rng.standard_normal((DIM, 2)), rng)
    sets = [rng.standard_normal((10, DIM)).astype("float32") for _ in range(3)]
    with pytest.raises(KerascopeError, match="runs \\+ 1 random sets"):
        tcav(model, "feat", sets[0], sets, sets[1], 0, runs=5)


def _student_p_value(a, b):
    """Two-sided pooled-variance t-test written out: t, then the t density integrated."""
    from math import gamma, pi, sqrt

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n, m = len(a), len(b)
    pooled = ((n - 1) * a.var(ddof=1) + (m - 1) * b.var(ddof=1)) / (n + m - 2)
    t = (a.mean() - b.mean()) / np.sqrt(pooled * (1 / n + 1 / m))
    df = n + m - 2
    grid = np.linspace(abs(t), abs(t) + 200, 400_001)
    density = (
        gamma((df + 1) / 2)
        / (sqrt(df * pi) * gamma(df / 2))
        * (1 + grid**2 / df) ** (-(df + 1) / 2)
    )
    return 2 * np.trapezoid(density, grid)


def test_p_values_are_the_two_sided_student_t_test():
    rng = np.random.default_rng(5)
    direction = rng.standard_normal(DIM)
    direction /= np.linalg.norm(direction)
    model = _concept_model(direction, rng)
    random_sets = [rng.standard_normal((n, DIM)).astype("float32") for n in [60] + [20] * 6]
    concept_x = (rng.standard_normal((60, DIM)) + 0.4 * direction).astype("float32")
    class_x = rng.standard_normal((80, DIM)).astype("float32")
    targets = np.arange(80) % 2
    results = tcav(model, ["feat", "hidden"], concept_x, random_sets, class_x, targets)
    assert [(r.layer, r.target) for r in results] == [
        ("feat", 0), ("feat", 1), ("hidden", 0), ("hidden", 1),
    ]  # fmt: skip
    checked = 0
    for result in results:
        assert result.scores.shape == (6,)  # runs default to len(random_sets) - 1
        if np.ptp(result.scores) + np.ptp(result.random_scores) == 0:
            continue  # both constant: no test
        by_hand = _student_p_value(result.scores, result.random_scores)
        assert result.p_value == pytest.approx(by_hand, rel=1e-4, abs=1e-9)
        assert result.significant == (result.p_value < 0.05)
        checked += 1
    assert checked >= 2
    scipy_stats = pytest.importorskip("scipy.stats")
    first = results[0]
    expected = scipy_stats.ttest_ind(first.scores, first.random_scores, equal_var=True).pvalue
    assert first.p_value == pytest.approx(expected)


def test_each_class_score_is_the_share_of_its_inputs_along_the_cav():
    weights, model, x, targets = _linear_case(6, 45)
    cav = np.random.default_rng(7).standard_normal(DIM)
    gradients = layer_gradients(model, ["feat"], x, targets)["feat"]
    scores = tcav_scores(model, "feat", x, targets, cav)
    for c in range(3):
        assert scores[c] == pytest.approx(np.mean(gradients[targets == c] @ cav > 0))


def test_concept_folders_and_random_sets(tmp_path):
    from PIL import Image

    from pipeline.concept_sets import find_concepts, random_sets, read_concept

    assert find_concepts(tmp_path / "none") == {}
    for name, count in (("stripes", 3), ("dots", 2)):
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.fromarray(np.full((6, 4, 3), 51 * i, "uint8")).save(tmp_path / name / f"{i}.png")
    (tmp_path / "stripes" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    found = find_concepts(tmp_path)
    assert list(found) == ["dots", "stripes"] and len(found["stripes"]) == 3
    assert list(find_concepts(tmp_path, ["stripes"])) == ["stripes"]
    with pytest.raises(KerascopeError, match="no concept folder .*did you mean 'dots'"):
        find_concepts(tmp_path, ["dot"])
    # The data's preprocessing: resized, converted to its channels, mapped to its range.
    images = read_concept(found["stripes"], (8, 8, 1), value_range=(-1.0, 1.0))
    assert images.shape == (3, 8, 8, 1) and images.dtype == np.float32
    np.testing.assert_allclose(images[:, 0, 0, 0], [-1.0, -0.6, -0.2], atol=1e-6)
    with pytest.raises(KerascopeError, match="need image data"):
        read_concept(found["stripes"], (8, 5))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KerascopeError, match="holds no images"):
        find_concepts(tmp_path)

    sets = random_sets(100, 4, 10, 30, seed=0)
    assert [len(s) for s in sets] == [30, 10, 10, 10]
    assert len(np.unique(np.concatenate(sets))) == 60  # disjoint when the pool allows
    assert all((np.diff(s) > 0).all() for s in sets)
    np.testing.assert_array_equal(sets[2], random_sets(100, 4, 10, 30, seed=0)[2])
    overlapping = random_sets(40, 4, 10, 30, seed=1)  # 60 > 40: drawn one by one
    assert [len(np.unique(s)) for s in overlapping] == [30, 10, 10, 10]
    with pytest.raises(KerascopeError, match="the pool has 20"):
        random_sets(20, 3, 10, 30, seed=0)


def test_class_means_against_numpy():
    from pipeline.class_attribution import class_mean, class_mean_maps, curve_auc

    rng = np.random.default_rng(8)
    maps = rng.standard_normal((9, 4, 5))
    classes_of = np.array([0, 2, 2, 0, 1, 2, 0, 0, 2])
    means, counts = class_mean_maps(maps, classes_of, [0, 1, 2, 3])
    assert counts.tolist() == [4, 1, 4, 0]
    scaled = maps / np.abs(maps).reshape(9, -1).max(axis=1)[:, None, None]
    np.testing.assert_allclose(means[1], scaled[4])
    np.testing.assert_allclose(means[2], scaled[[1, 2, 5, 8]].mean(axis=0))
    assert np.isnan(means[3]).all()
    zero = class_mean_maps(np.zeros((2, 3)), [0, 0], [0])[0]
    np.testing.assert_array_equal(zero, 0.0)  # an all-zero map stays zero
    curves = rng.random((9, 5))
    fractions = np.linspace(0, 1, 5)
    auc = curve_auc(curves, fractions)
    np.testing.assert_allclose(auc[3], np.sum((curves[3, 1:] + curves[3, :-1]) / 2 * 0.25))
    per_class = class_mean(auc, classes_of, [2, 3])
    assert per_class[0] == pytest.approx(auc[[1, 2, 5, 8]].mean()) and np.isnan(per_class[1])
    with pytest.raises(KerascopeError, match="one class per input"):
        class_mean(auc, classes_of[:-1], [0])


def test_several_concepts_share_the_null_and_equal_one_at_a_time():
    from pipeline.concepts import tcav_concepts

    rng = np.random.default_rng(9)
    direction = rng.standard_normal(DIM)
    direction /= np.linalg.norm(direction)
    model = _concept_model(direction, rng)
    random_sets = [rng.standard_normal((n, DIM)).astype("float32") for n in [40] + [15] * 4]
    concepts = {
        "along": (rng.standard_normal((40, DIM)) + 3 * direction).astype("float32"),
        "noise": rng.standard_normal((40, DIM)).astype("float32"),
    }
    class_x = rng.standard_normal((30, DIM)).astype("float32")
    done = []
    together = tcav_concepts(
        model, ["feat", "hidden"], concepts, random_sets, class_x, 0, progress=done.append
    )
    assert list(together) == done == ["along", "noise"]
    for name, concept_x in concepts.items():
        alone = tcav(model, ["feat", "hidden"], concept_x, random_sets, class_x, 0)
        for a, b in zip(together[name], alone, strict=True):
            np.testing.assert_array_equal(a.scores, b.scores)
            np.testing.assert_array_equal(a.random_scores, b.random_scores)
            assert a.p_value == pytest.approx(b.p_value, nan_ok=True)
    # The null CAVs do not depend on the concept.
    np.testing.assert_array_equal(
        together["along"][0].random_scores, together["noise"][0].random_scores
    )
