"""maximize() keeps its compiled loop per model and option set (tracing costs more than a
small model's whole optimisation), and never reuses it for other options."""

from __future__ import annotations

import keras
import numpy as np

from pipeline.graph import _COMPILED
from pipeline.maximization import Objective, Settings, maximize


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(3, 3, activation="relu", name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(2, name="out"),
        ]
    )


def _loops(model) -> dict:
    return {k: v for k, v in _COMPILED.get(model, {}).items() if k[0] == "maximize"}


def test_repeated_call_reuses_the_traced_loop_and_gives_the_same_images():
    model = _model()
    objective, settings = Objective("conv", "channel"), Settings(steps=3)
    first = maximize(model, objective, [0, 1, 2], settings=settings)
    (run, final), *_ = _loops(model).values()
    traces = (run.experimental_get_tracing_count(), final.experimental_get_tracing_count())
    again = maximize(model, objective, [0, 1, 2], settings=Settings(steps=3))
    assert len(_loops(model)) == 1
    assert (run.experimental_get_tracing_count(), final.experimental_get_tracing_count()) == traces
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.objective, again.objective)


def test_other_options_get_their_own_loop_even_from_a_mutated_settings_object():
    model, fresh = _model(), _model()
    fresh.set_weights(model.get_weights())
    objective = Objective("conv", "channel")
    settings = Settings(steps=3, seed=0)
    maximize(model, objective, [0, 1], settings=settings)
    settings.seed = 1  # the same object, changed after the first call
    reused = maximize(model, objective, [0, 1], settings=settings)
    logits = maximize(model, Objective("out", "class_logit"), [0, 1], settings=settings)
    assert len(_loops(model)) == 3
    expected = maximize(fresh, objective, [0, 1], settings=Settings(steps=3, seed=1))
    np.testing.assert_array_equal(reused.images, expected.images)
    expected = maximize(fresh, Objective("out", "class_logit"), [0, 1], settings=settings)
    np.testing.assert_array_equal(logits.images, expected.images)
