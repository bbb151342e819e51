"""Composite and layer objectives, their config form, and the MaCo parametrization."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.errors import KerascopeError
from pipeline.maximization import Objective, Settings, maximize, plan_targets
from pipeline.maximization.objectives import LOGITS, objective_forward
from pipeline.maximization.parametrizations import initial_params, maco_magnitude, to_image
from pipeline.maximization.settings import Sum, Term
from pipeline.maximization.targets import probe_objective


@pytest.fixture(scope="module")
def model():
    """A small fixed model (weights from a seeded numpy generator)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv1"),
            keras.layers.Conv2D(5, 3, activation="relu", name="conv2"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    rng = np.random.default_rng(1)
    model.set_weights(
        [rng.standard_normal(w.shape).astype("float32") * 0.3 for w in model.get_weights()]
    )
    return model


def _by_hand(model, images):
    """conv1, conv2 and the logits of ``images``, each from its own Keras sub-model."""
    outputs = {}
    for name in ("conv1", "conv2", "flat"):
        sub = keras.Model(model.inputs, model.get_layer(name).output)
        outputs[name] = sub(images).numpy().astype(np.float64)
    weights, bias = model.get_layer("out").get_weights()
    outputs["logits"] = outputs["flat"] @ weights + bias
    return outputs


def _combo():
    conv2 = Objective("conv2", "channel")
    return (
        Objective("conv2", "channel", unit=1)
        - 0.5 * Objective("conv2", "channel", unit=3)
        + 2 * Objective("out", "class_logit", unit=2)
    ), conv2


def _combo_by_hand(acts):
    conv2 = acts["conv2"]
    return (
        conv2[..., 1].mean(axis=(1, 2))
        - 0.5 * conv2[..., 3].mean(axis=(1, 2))
        + 2 * acts["logits"][:, 2]
    )


def test_arithmetic_builds_weighted_sums():
    a, b = Objective("conv2", "channel", unit=1), Objective("out", "class_logit", unit=2)
    assert a - b == Sum((Term(a, 1.0), Term(b, -1.0)))
    assert 2 * (a + b) == Sum((Term(a, 2.0), Term(b, 2.0)))
    assert -a == Sum((Term(a, -1.0),))
    assert sum([a, b]) == a + b
    assert (a - 0.5 * b).layer == "channel:conv2[1] - 0.5*class_logit:out[2]"
    assert (-a + b).layer == "-channel:conv2[1] + class_logit:out[2]"
    assert (a - b).kind == "sum"


def test_sum_equals_its_terms_computed_independently(model):
    images = np.random.default_rng(2).random((6, 12, 12, 3)).astype("float32")
    combo, conv2 = _combo()
    tensors = objective_forward(model, combo)(tf.constant(images))
    assert list(tensors) == ["conv2", LOGITS]  # both read in one pass
    values = probe_objective(model, combo, images)
    assert values.shape == (6, 1)
    channels = probe_objective(model, conv2, images)  # every unit, one objective at a time
    logits = probe_objective(model, Objective("out", "class_logit"), images)
    separate = channels[:, 1] - 0.5 * channels[:, 3] + 2 * logits[:, 2]
    np.testing.assert_allclose(values[:, 0], separate, rtol=1e-5, atol=1e-6)
    by_hand = _combo_by_hand(_by_hand(model, images))
    np.testing.assert_allclose(values[:, 0], by_hand, rtol=1e-4, atol=1e-5)


def test_layer_objective_is_the_mean_square_of_the_layer(model):
    images = np.random.default_rng(3).random((5, 12, 12, 3)).astype("float32")
    values = probe_objective(model, Objective("conv1", "layer"), images)
    expected = np.mean(_by_hand(model, images)["conv1"] ** 2, axis=(1, 2, 3))
    assert values.shape == (5, 1)
    np.testing.assert_allclose(values[:, 0], expected, rtol=1e-5)


def test_maximize_a_sum_increases_it_and_reports_its_value(model):
    combo, _ = _combo()
    result = maximize(model, combo, [0], settings=Settings(steps=32, seed=0))
    curve = result.objective[0]
    assert curve[-4:].mean() > curve[:4].mean() + 0.5
    # The reported final value is the sum's value on the returned image.
    by_hand = _combo_by_hand(_by_hand(model, result.images))
    np.testing.assert_allclose(result.final, by_hand, rtol=1e-4, atol=1e-5)
    deep_dream = maximize(model, Objective("conv1", "layer"), [0], settings=Settings(steps=16))
    assert deep_dream.objective[0, -1] > deep_dream.objective[0, 0]


def test_single_objective_results_are_unchanged(model):
    result = maximize(model, Objective("conv2", "channel"), [0, 1], settings=Settings(steps=8))
    assert np.isfinite(result.images).all() and np.isfinite(result.objective).all()
    # A one-term sum of weight 1 is the same computation.
    alone = maximize(
        model, Sum((Term(Objective("conv2", "channel")),)), [0, 1], settings=Settings(steps=8)
    )
    np.testing.assert_array_equal(alone.images, result.images)
    np.testing.assert_array_equal(alone.objective, result.objective)


def test_config_sum_target_is_one_image_and_old_forms_still_work(model):
    probe = np.random.default_rng(4).random((7, 12, 12, 3)).astype("float32")
    targets = [
        {
            "objective": "sum",
            "terms": [
                {"layer": "conv2", "unit": 1},
                {"layer": "conv2", "unit": 3, "weight": -0.5},
                {"layer": "output", "unit": 2, "weight": 2},  # keyword, class_logit
            ],
        },
        {"layer": "conv2", "units": [0, 2]},
        {"layer": "conv1", "objective": "layer"},
        {"objective": "sum", "terms": [{"layer": "last_hidden", "unit": 0}]},
    ]
    plans, skipped = plan_targets(model, targets, probe)
    combo, _ = _combo()
    assert plans[0].objective == combo
    assert list(plans[0].units) == [0]
    np.testing.assert_allclose(plans[0].probe_values, probe_objective(model, combo, probe))
    assert plans[1].objective == Objective("conv2", "channel")
    assert list(plans[1].units) == [0, 2] and plans[1].probe_values.shape == (7, 5)
    assert plans[2].objective == Objective("conv1", "layer") and list(plans[2].units) == [0]
    assert skipped == ["last_hidden"]  # this model has no hidden dense layer


@pytest.mark.parametrize(
    ("terms", "message"),
    [
        ([{"layer": "conv2"}], "needs a unit index"),
        ([{"layer": "conv2", "unit": 9}], "unit 9 is out of range"),
        ([{"layer": "conv2", "unit": 0, "units": [1]}], "unknown key 'units' in a maximize sum"),
        ([{"layer": "conv2", "unit": 0, "weight": "x"}], "must be a number"),
        ([], "non-empty list of terms"),
        (["conv2"], "invalid term"),
    ],
)
def test_config_sum_errors_are_one_line(model, terms, message):
    probe = np.zeros((2, 12, 12, 3), "float32")
    with pytest.raises(KerascopeError, match=message):
        plan_targets(model, [{"objective": "sum", "terms": terms}], probe)


def _magnitudes(images, value_range):
    """|rfft2| per image and channel of the image before the sigmoid."""
    lo, hi = value_range
    raw = np.log((images.astype(np.float64) - lo) / (hi - images))
    return np.abs(np.fft.rfft2(raw.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("shape", [(12, 12, 3), (11, 9, 1), (8, 13, 2)])
def test_maco_images_keep_their_magnitude(shape):
    params = initial_params("maco", shape, np.array([3, 4]))
    images = to_image("maco", tf.constant(params), shape, (0.0, 1.0), decorrelate=False).numpy()
    fixed = maco_magnitude(shape[0], shape[1])
    np.testing.assert_allclose(
        _magnitudes(images, (0.0, 1.0)),
        np.broadcast_to(fixed, (2, shape[2], *fixed.shape)),
        atol=2e-3 * fixed.max(),
    )


def test_maco_magnitude_is_constant_over_optimisation(model):
    value_range = (-1.0, 2.0)
    options = {"parametrization": "maco", "decorrelate": False, "seed": 0}
    early = maximize(
        model, Objective("conv2", "channel"), [1, 2], value_range, Settings(steps=1, **options)
    )
    late = maximize(
        model, Objective("conv2", "channel"), [1, 2], value_range, Settings(steps=24, **options)
    )
    fixed = maco_magnitude(12, 12)
    for result in (early, late):
        assert result.images.min() > -1.0 and result.images.max() < 2.0
        np.testing.assert_allclose(
            _magnitudes(result.images, value_range),
            np.broadcast_to(fixed, (2, 3, *fixed.shape)),
            atol=2e-3 * fixed.max(),
        )
    assert np.abs(late.images - early.images).max() > 0.1  # the phases did move
    assert np.all(late.objective[:, -4:].mean(axis=1) > late.objective[:, :4].mean(axis=1))


def test_target_labels_are_distinct():
    from pipeline.maximization.targets import target_labels

    combo, conv2 = _combo()
    objectives = [conv2, Objective("conv2", "layer"), combo, conv2, Objective("conv1", "layer")]
    assert target_labels(objectives) == [
        "conv2",
        "conv2 (layer)",
        combo.layer,
        "conv2 (channel)",
        "conv1",
    ]
    assert target_labels([conv2, conv2, conv2]) == [
        "conv2",
        "conv2 (channel)",
        "conv2 (channel) #2",
    ]


def test_probe_values_are_the_same_in_steps_of_any_size(model, monkeypatch):
    """The probe pass runs in steps bounded by a memory budget; two-row steps give what
    the by-hand forward pass gives on all inputs at once."""
    from pipeline import budget

    images = np.random.default_rng(4).random((7, 12, 12, 3)).astype("float32")
    per_row = 3 * 4 * max(budget.output_sizes(model, (12, 12, 3)))
    monkeypatch.setattr(budget, "DEFAULT_MEMORY_BUDGET", 2 * per_row)
    assert budget.forward_batch_rows(model, (12, 12, 3), 256) == 2
    values = probe_objective(model, Objective("conv1", "layer"), images)
    expected = np.mean(_by_hand(model, images)["conv1"] ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(values[:, 0], expected, rtol=1e-5)
