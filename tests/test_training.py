"""The custom training loop (used under ``multi_worker``) against ``model.fit`` itself."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.errors import KerascopeError


def _model(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(3, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    return model


def test_custom_loop_on_one_device_equals_fit():
    """Same weights and per-epoch history as ``fit`` after 2 epochs of SGD, no shuffling.

    22 examples in batches of 8: the last batch (6) is smaller, so the loss must be the
    mean over each actual global batch, as ``fit`` computes it.
    """
    from pipeline.training import fit_distributed

    rng = np.random.default_rng(1)
    x = rng.random((22, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, 22)
    val = (x[:5], y[:5])
    reference = _model()
    initial = [w.copy() for w in reference.get_weights()]
    expected = reference.fit(
        x, y, batch_size=8, epochs=2, shuffle=False, validation_data=val, verbose=0
    ).history
    model = _model()
    seen = []
    callback = SimpleNamespace(on_epoch_end=lambda epoch, logs: seen.append((epoch, logs)))
    history = fit_distributed(
        model,
        x,
        y,
        epochs=2,
        batch_size=8,
        validation_data=val,
        shuffle=False,
        callbacks=[callback],
        verbose=False,
    )
    trained = zip(model.get_weights(), initial, strict=True)
    assert any(np.abs(w - w0).max() > 1e-3 for w, w0 in trained)
    # One device, same kernels: only the order of a few float32 sums may differ.
    for got, want in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert sorted(history) == sorted(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(history[key], values, rtol=1e-5, err_msg=key)
    assert [epoch for epoch, _ in seen] == [0, 1]
    assert seen[-1][1] == {key: values[-1] for key, values in history.items()}


MIRRORED = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from pipeline.training import fit_distributed

    def build():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(3, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3, activation="softmax"),
        ])
        model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy",
                      metrics=["accuracy"])
        return model

    rng = np.random.default_rng(1)
    x = rng.random((16, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, 16)
    # Batches of 5, 5, 5, 1: each 5 splits 3 + 2, the 1 is padded to 1 + 1 (weight 0).
    reference = build()
    expected = reference.fit(x, y, batch_size=5, epochs=2, shuffle=False, verbose=0).history
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = build()
    history = fit_distributed(model, x, y, epochs=2, batch_size=5, shuffle=False,
                              strategy=strategy, verbose=False)
    for got, want in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    for key in expected:
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-4, err_msg=key)
    print("OK")
    """
)


def test_two_replicas_with_uneven_and_padded_batches_equal_fit(tmp_path):
    """A real MirroredStrategy over two logical CPUs: the same weights as one-device fit.

    Two replicas sum two partial gradients where one device sums once: float32
    summation order only, far below the 1e-4 relative tolerance.
    """
    from conftest import python_cmd, run

    proc = run(python_cmd("-c", MIRRORED), tmp_path)
    assert proc.stdout.strip().endswith("OK")


def test_shuffled_epochs_follow_the_seed():
    """The same seed gives the same weights; another seed, other batches."""
    from pipeline.training import fit_distributed

    rng = np.random.default_rng(2)
    x = rng.random((16, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, 16)
    runs = []
    for seed in (3, 3, 4):
        model = _model()
        fit_distributed(model, x, y, epochs=2, batch_size=4, seed=seed, verbose=False)
        runs.append(np.concatenate([w.ravel() for w in model.get_weights()]))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.abs(runs[0] - runs[2]).max() > 1e-4


def test_uncompiled_model_is_refused():
    import keras

    from pipeline.training import fit_distributed

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    with pytest.raises(KerascopeError, match="compiled model"):
        fit_distributed(model, np.zeros((2, 2)), np.zeros(2), epochs=1, batch_size=2)


def _strategy(spec, task_type=None, task_id=None):
    resolver = SimpleNamespace(
        cluster_spec=lambda: SimpleNamespace(as_dict=lambda: spec),
        task_type=task_type,
        task_id=task_id,
    )
    return SimpleNamespace(cluster_resolver=resolver)


@pytest.mark.parametrize(
    ("spec", "task", "multi", "chief"),
    [
        ({"worker": ["a:1", "a:2"]}, ("worker", 0), True, True),
        ({"worker": ["a:1", "a:2"]}, ("worker", 1), True, False),
        ({"chief": ["a:0"], "worker": ["a:1"]}, ("worker", 0), True, False),
        ({"chief": ["a:0"], "worker": ["a:1"]}, ("chief", 0), True, True),
        ({}, (None, None), False, True),
    ],
)
def test_chief_and_multi_worker_follow_the_cluster(spec, task, multi, chief):
    """TensorFlow's rule: the chief task, else worker 0, writes; one task is not a cluster."""
    from pipeline.training import is_chief, is_multi_worker

    strategy = _strategy(spec, *task)
    assert is_multi_worker(strategy) is multi
    assert is_chief(strategy) is chief
    assert is_chief(SimpleNamespace()) and not is_multi_worker(SimpleNamespace())
