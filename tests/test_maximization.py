"""Activation maximization checked against closed forms and its own invariances."""

from __future__ import annotations

import json

import h5py
import keras
import numpy as np
import pytest
from conftest import write_tiny_project

from pipeline.errors import KerascopeError
from pipeline.maximization import Objective, Settings, maximize

rng = np.random.default_rng(0)

PLAIN = {
    "parametrization": "pixel",
    "jitter": 0,
    "decorrelate": False,
    "preactivation": False,
    "steps_per_call": 8,
}


def _linear_filter_model(weights):
    """One dense unit whose response is <x, w>: its maximiser under an L2 budget is w."""
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(weights.shape[1], name="unit"),
        ]
    )
    model.get_layer("unit").set_weights(
        [weights.astype("float32"), np.zeros(weights.shape[1], "float32")]
    )
    return model


def test_linear_unit_maximiser_correlates_with_its_filter():
    weights = rng.standard_normal((36, 3))
    model = _linear_filter_model(weights)
    # Value range [-1, 1] centred on 0; the L2 term is lambda * mean(x^2). The analytic
    # maximiser of <x, w> - lambda * mean(x^2) in the box is clip(w * n / (2 lambda)).
    lam = 2.0 * 36 * 2.0
    settings = Settings(steps=400, learning_rate=0.05, l2=lam, **PLAIN)
    result = maximize(model, Objective("unit", "unit"), [0, 1, 2], (-1.0, 1.0), settings)
    for unit in range(3):
        image = result.images[unit].ravel()
        analytic = np.clip(weights[:, unit] * 36 / (2 * lam), -1, 1)
        corr = np.corrcoef(image, analytic)[0, 1]
        assert corr > 0.99, (unit, corr)
        # And it beats the analytic direction's competitors: other units' filters.
        assert image @ weights[:, unit] > image @ weights[:, (unit + 1) % 3]


def test_objective_increases_over_steps():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, name="out"),
        ]
    )
    result = maximize(
        model,
        Objective("conv", "channel"),
        [0, 1, 2, 3],
        (0.0, 1.0),
        Settings(steps=48, **{**PLAIN, "preactivation": True}),
    )
    curves = result.objective
    assert curves.shape == (4, 48)
    assert np.all(curves[:, -5:].mean(axis=1) > curves[:, :5].mean(axis=1))


def _conv_model(seed=1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            keras.layers.Conv2D(6, 3, activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4, activation="softmax", name="out"),
        ]
    )


def test_batched_equals_one_at_a_time_and_seed_is_reproducible():
    model = _conv_model()
    settings = Settings(
        steps=24, jitter=2, rotate=5.0, scale=(0.9, 1.1), tv=0.1, seed=3, steps_per_call=8
    )
    batched = maximize(model, Objective("conv", "channel"), [0, 2, 5], (0, 1), settings)
    singles = [
        maximize(model, Objective("conv", "channel"), [u], (0, 1), settings) for u in (0, 2, 5)
    ]
    for i, single in enumerate(singles):
        np.testing.assert_allclose(batched.images[i], single.images[0], atol=1e-4)
        np.testing.assert_allclose(batched.objective[i], single.objective[0], rtol=1e-3, atol=1e-4)
    again = maximize(model, Objective("conv", "channel"), [0, 2, 5], (0, 1), settings)
    np.testing.assert_array_equal(again.images, batched.images)
    other = maximize(
        model,
        Objective("conv", "channel"),
        [0, 2, 5],
        (0, 1),
        Settings(**{**settings.__dict__, "seed": 4}),
    )
    assert not np.allclose(other.images, batched.images)


def test_progress_splits_the_steps_without_changing_them():
    # With a progress callback the 24 steps run in calls of 5 (4 at the end); without
    # one they run in a single call. Same steps, same step seeds: the same images.
    model = _conv_model()
    settings = Settings(steps=24, jitter=2, rotate=5.0, seed=3, steps_per_call=5)
    reported = []
    split = maximize(
        model, Objective("conv", "channel"), [0, 2], (0, 1), settings, progress=reported.append
    )
    whole = maximize(model, Objective("conv", "channel"), [0, 2], (0, 1), settings)
    assert reported == [10, 10, 10, 10, 8]  # image-steps per call, two images
    np.testing.assert_allclose(split.images, whole.images, atol=1e-6)
    np.testing.assert_allclose(split.objective, whole.objective, rtol=1e-5, atol=1e-6)


def test_class_logits_and_diversity_copies():
    model = _conv_model(2)
    settings = Settings(steps=16, copies=3, diversity=1.0, steps_per_call=8)
    result = maximize(model, Objective("out", "class_logit"), [1, 3], (0, 1), settings)
    assert result.images.shape == (6, 10, 10, 3)
    assert result.units.tolist() == [1, 1, 1, 3, 3, 3] and result.copy.tolist() == [0, 1, 2] * 2
    # Copies start from different seeds and are pushed apart: they are not identical.
    assert not np.allclose(result.images[0], result.images[1])


def test_nan_stops_with_unit_and_step():
    model = _conv_model(3)
    settings = Settings(steps=8, learning_rate=float("nan"), steps_per_call=4)
    with pytest.raises(KerascopeError, match=r"unit 0 of layer 'conv' became NaN/Inf at step \d"):
        maximize(model, Objective("conv", "channel"), [0], (0, 1), settings)


def test_integer_inputs_have_no_gradient_path():
    inputs = keras.Input((5,), dtype="int32")
    emb = keras.layers.Embedding(10, 3, name="emb")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(emb)))
    with pytest.raises(KerascopeError, match="needs a single image input|no gradient"):
        maximize(model, Objective("emb", "channel"), [0], (0, 1), Settings(steps=2))


# --- the stage -----------------------------------------------------------------------


def test_stage_layout_reach_and_errors(tmp_path):
    from pipeline.stages.maximize import _main

    params, x, model = write_tiny_project(tmp_path, n=16)
    params["maximize"] = {
        "targets": [
            {"layer": "last_conv", "units": {"top_k": 2}},
            {"layer": "output", "units": [0, 3]},
        ],
        "steps": 16,
    }
    _main(params)
    with h5py.File(params["paths"]["maximization"]) as f:
        assert f.attrs["kerascope_format"] == "maximization/1"
        conv = f["conv"]
        assert conv["images"].shape == (2, 8, 8, 1) and conv["objective"].shape == (2, 16)
        assert conv.attrs["objective"] == "channel"
        assert json.loads(conv.attrs["settings"])["steps"] == 16
        # top_k picks the most active channels on the probe set, computed independently.
        acts = keras.Model(model.inputs, model.get_layer("conv").output).predict(x, verbose=0)
        expected = np.sort(np.argsort(-acts.mean(axis=(0, 1, 2)))[:2])
        np.testing.assert_array_equal(conv["units"][()], expected)
        best = acts.mean(axis=(1, 2)).max(axis=0)[expected]
        np.testing.assert_allclose(conv["best_probe_activation"][()], best, rtol=1e-5)
        np.testing.assert_allclose(conv["reach_ratio"][()], conv["final"][()] / best, rtol=1e-5)
        assert f["out"].attrs["objective"] == "class_logit"
        np.testing.assert_array_equal(f["out/units"][()], [0, 3])
    metrics = json.loads((tmp_path / "outputs" / "metrics" / "maximize.json").read_text())
    with h5py.File(params["paths"]["maximization"]) as f:
        ratios = np.concatenate([f["conv/reach_ratio"][()], f["out/reach_ratio"][()]])
    finite = ratios[np.isfinite(ratios)]
    assert metrics == {"mean_reach_ratio": pytest.approx(float(finite.mean()))}
    for bad, fragment in (
        ([{"layer": "cnv"}], "did you mean 'conv'"),
        ([{"layer": "conv", "units": [7]}], "unit 7 is out of range for layer 'conv'; valid: 0..2"),
        ([{"layer": "conv", "objective": "banana"}], "invalid maximize objective 'banana'"),
    ):
        params["maximize"] = {"targets": bad, "steps": 4}
        with pytest.raises(KerascopeError) as info:
            _main(params)
        assert fragment in str(info.value)


def test_jitter_alone_shifts_by_whole_pixels_with_reflected_borders():
    """Every jittered batch is the input shifted by one (dy, dx) in [-2, 2]^2 (numpy pads)."""
    import tensorflow as tf

    from pipeline.maximization.regularizers import random_transform

    images = rng.random((3, 7, 9, 2)).astype("float32")
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    seen = set()
    for step in range(60):
        out = random_transform(tf.constant(images), tf.constant([5, step]), jitter=2).numpy()
        shifts = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(out, padded[:, dy : dy + 7, dx : dx + 9])
        ]
        assert len(shifts) >= 1, f"step {step}: not a whole-pixel reflected shift"
        seen.update(shifts)
    assert len(seen) >= 20  # the shifts cover the square, not one corner of it


def test_wrapped_jitter_is_the_same_shift_rolled():
    """wrap=True (periodic images) moves by the same (dy, dx) as the reflecting jitter,
    filling from the opposite border: equal to numpy's roll, equal inside the borders."""
    import tensorflow as tf

    from pipeline.maximization.regularizers import random_transform

    images = rng.random((2, 8, 10, 3)).astype("float32")
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)], mode="reflect")
    for step in range(25):
        seed = tf.constant([9, step])
        wrapped = random_transform(tf.constant(images), seed, jitter=2, wrap=True).numpy()
        reflected = random_transform(tf.constant(images), seed, jitter=2).numpy()
        (dy, dx) = next(
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(reflected, padded[:, 2 + dy : 10 + dy, 2 + dx : 12 + dx])
        )
        np.testing.assert_array_equal(wrapped, np.roll(images, (-dy, -dx), axis=(1, 2)))
        np.testing.assert_array_equal(wrapped[:, 2:-2, 2:-2], reflected[:, 2:-2, 2:-2])
