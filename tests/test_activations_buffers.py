"""extract_activations fills one array per layer (no per-batch list and concatenation)."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from pipeline.activations import extract_activations


def _model(bias: float = 0.0) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4, 4, 1)),
            keras.layers.Conv2D(3, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    model.get_layer("out").bias.assign(np.full(2, bias, np.float32))
    return model


def test_batches_land_in_order_and_match_an_independent_sub_model():
    model = _model()
    x = np.random.default_rng(0).random((7, 4, 4, 1)).astype("float32")
    acts = extract_activations(model, x, "all", batch_size=3)  # 3 + 3 + 1
    for name in ("conv", "flat", "out"):
        sub = keras.Model(model.inputs, model.get_layer(name).output)
        expected = sub.predict(x, verbose=0)
        assert acts[name].shape == expected.shape
        assert acts[name].flags.c_contiguous
        np.testing.assert_allclose(acts[name], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("bias", "warns"),
    [(float("nan"), True), (float("inf"), True), (3e38, False), (0.0, False)],
)
def test_nonfinite_warning_only_for_real_nan_or_inf(bias, warns):
    """Finite values whose sum overflows (3e38 x 14) must not be reported as NaN/Inf."""
    x = np.random.default_rng(0).random((7, 4, 4, 1)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acts = extract_activations(_model(bias), x, "all", batch_size=3)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("'out' has 100.00% NaN/Inf" in m for m in messages) == warns, messages
    assert not any("'conv'" in m for m in messages)
    assert np.isfinite(acts["out"]).all() == (not warns)
